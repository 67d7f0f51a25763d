"""KFP component: Great Expectations data-quality gate over the pairs, before mining and training."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    chunks: dsl.Input[dsl.Dataset],
    pairs: dsl.Input[dsl.Dataset],
    config: dict,
    validation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """Check the pairs table (queries, positives, split leakage, minimum counts); fail the run on a violation.

    ``validation.json`` is written before the step fails, so the result can be inspected either way.

    Args:
        chunks: Ingest output folder (``chunks.jsonl``).
        pairs: SDG output folder (``pairs.jsonl``).
        config: ``ValidateConfig`` fields (min/max_query_chars, min_train_pairs, min_eval_pairs, unique_queries, max_examples).
        validation: Output folder: ``validation.json`` + ``manifest.json``.
        metrics: Pair counts and the number of failed expectations.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.config import ValidateConfig
        from embedforge.stages import validate as stage

        manifest = stage.run(chunks.path, pairs.path, validation.path, ValidateConfig.model_validate(config))
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
