"""KFP component: BEIR evaluation of the base vs the fine-tuned model on the held-out eval split."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    chunks: dsl.Input[dsl.Dataset],
    pairs: dsl.Input[dsl.Dataset],
    mined: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    base_model: str,
    eval_beir: str,
    config: dict,
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    eval_beir_artifact: dsl.Input[dsl.Dataset] = None,
    base_model_artifact: dsl.Input[dsl.Model] = None,
    model_config: dict = None,
):
    """Score both models (eval-split pairs as queries, all chunks as the corpus) with NDCG/MAP/recall/P/MRR@k.

    Args:
        chunks: Ingest output folder (``chunks.jsonl``): the corpus, train and eval chunks alike.
        pairs: SDG output folder (``pairs.jsonl``): pairs with ``split == "eval"`` are the queries.
        mined: Mine output folder: its ``embeddings.npy`` + ``embedding_ids.json`` (base-model chunk embeddings)
            are reused instead of re-encoding the corpus with the base model.
        model: Train output folder: the fine-tuned sentence-transformers model.
        base_model: Base model folder or id, as given to the upstream steps.
        eval_beir: Optional external BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``)
            readable by the step, evaluated with both models too; "" for none.
        config: ``EvaluateConfig`` fields (k_values, extra_k, batch_size, primary_metric).
        evaluation: Output folder: ``evaluation.json``, ``beir/`` (the eval split in BEIR layout), ``manifest.json``.
        metrics: ``finetuned_<metric>_at_<k>``, ``base_<metric>_at_<k>`` and ``delta_<metric>_at_<k>`` (KFP metric
            names allow no "@"), plus ``external_*`` ones when ``eval_beir`` is set, and the counts.
        eval_beir_artifact: The external BEIR folder as an imported artifact; overrides ``eval_beir`` unless it
            is the "absent" stand-in.
        base_model_artifact: The base model folder as an imported artifact (``--inputs artifacts`` with
            ``base_model_uri``); overrides ``base_model`` unless it is the "absent" stand-in.
        model_config: ``ModelConfig`` fields (the pipeline's ``model`` section: pooling, attention, padding_side,
            trust_remote_code): how the base model becomes an embedder, the same in every step that loads it.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.components._inputs import local_path

        from embedforge.config import EvaluateConfig, ModelConfig
        from embedforge.names import for_kfp
        from embedforge.stages import evaluate as stage

        manifest = stage.run(
            chunks.path, pairs.path, local_path(base_model_artifact, base_model), model.path, evaluation.path, EvaluateConfig.model_validate(config),
            base_embeddings_dir=mined.path, eval_beir=local_path(eval_beir_artifact, eval_beir) or None,
            model_cfg=ModelConfig.model_validate(model_config or {}),
        )
        result = manifest.result
        tables = {"finetuned": result.finetuned, "base": result.base, "delta": result.delta}
        if result.external is not None:
            tables.update({"external_finetuned": result.external.finetuned, "external_base": result.external.base,
                           "external_delta": result.external.delta})
        for prefix, table in tables.items():
            for name, value in table.items():
                metrics.log_metric(for_kfp(f"{prefix}_{name}"), value)
        for dim, sides in result.by_dimension.items():  # Matryoshka prefixes, named as in MLflow
            for side, table in sides.items():
                for name, value in table.items():
                    metrics.log_metric(for_kfp(f"{side}_{name}_dim_{dim}"), value)
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
