"""KFP component: synthetic (or bring-your-own) query/positive pairs from the ingested chunks."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def sdg(
    chunks: dsl.Input[dsl.Dataset],
    pairs_file: str,
    base_model: str,
    config: dict,
    pairs: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    pairs_artifact: dsl.Input[dsl.Dataset] = None,
    base_model_artifact: dsl.Input[dsl.Model] = None,
    model_config: dict = None,
):
    """Generate train/eval pairs per split, or resolve a user's pairs file against the chunks.

    Args:
        chunks: Ingest output folder (``chunks.jsonl``).
        pairs_file: Path of a bring-your-own pairs JSONL readable by the step; "" generates pairs instead.
        base_model: Model folder or id of the pipeline (the LLM generator uses it for semantic de-duplication).
        config: ``SdgConfig`` fields (generator, queries_per_chunk, title_queries, ict_remove_prob, max_pairs, llm ...).
        pairs: Output folder: ``pairs.jsonl`` + ``manifest.json``.
        metrics: Pair counts per split and source, and generator statistics.
        pairs_artifact: The bring-your-own pairs JSONL file as an imported artifact; overrides ``pairs_file``
            unless it is the "absent" stand-in.
        base_model_artifact: The base model folder as an imported artifact (``--inputs artifacts`` with
            ``base_model_uri``); overrides ``base_model`` unless it is the "absent" stand-in.
        model_config: ``ModelConfig`` fields (the pipeline's ``model`` section: pooling, attention, padding_side,
            trust_remote_code): how the base model becomes an embedder, the same in every step that loads it.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.components._inputs import local_path

        from embedforge.config import ModelConfig, SdgConfig
        from embedforge.stages import sdg as stage

        manifest = stage.run(chunks.path, pairs.path, SdgConfig.model_validate(config),
                             pairs_file=local_path(pairs_artifact, pairs_file) or None,
                             base_model=local_path(base_model_artifact, base_model),
                             model_cfg=ModelConfig.model_validate(model_config or {}))
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
