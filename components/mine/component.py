"""KFP component: mine hard negatives for the train-split pairs with the base model and FAISS."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mine(
    chunks: dsl.Input[dsl.Dataset],
    pairs: dsl.Input[dsl.Dataset],
    base_model: str,
    config: dict,
    mined: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    base_model_artifact: dsl.Input[dsl.Model] = None,
    model_config: dict = None,
):
    """Embed every chunk once with the base model and mine positive-aware hard negatives for each train pair.

    Args:
        chunks: Ingest output folder (``chunks.jsonl``).
        pairs: SDG output folder (``pairs.jsonl``); only ``split == "train"`` pairs are used.
        base_model: Model folder or id used for embedding chunks and queries.
        config: ``MineConfig`` fields (num_negatives, margin, candidates, max_positives_per_pair, batch_size,
            use_gpu).
        mined: Output folder: ``train.jsonl`` (anchor, positive, negative_1..n), ``embeddings.npy`` +
            ``embedding_ids.json`` (base-model chunk embeddings, reused by evaluate) and ``manifest.json``.
        metrics: Example/negative counts and mean positive/negative base-model scores.
        base_model_artifact: The base model folder as an imported artifact (``--inputs artifacts`` with
            ``base_model_uri``); overrides ``base_model`` unless it is the "absent" stand-in.
        model_config: ``ModelConfig`` fields (the pipeline's ``model`` section: pooling, attention, padding_side,
            trust_remote_code): how the base model becomes an embedder, the same in every step that loads it.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.components._inputs import local_path

        from embedforge.config import MineConfig, ModelConfig
        from embedforge.stages import mine as stage

        manifest = stage.run(chunks.path, pairs.path, mined.path, MineConfig.model_validate(config),
                             base_model=local_path(base_model_artifact, base_model),
                             model_cfg=ModelConfig.model_validate(model_config or {}))
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
        metrics.log_metric("mean_positive_score", manifest.result.mean_positive_score)
        metrics.log_metric("mean_negative_score", manifest.result.mean_negative_score)
