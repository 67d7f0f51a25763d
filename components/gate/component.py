"""KFP component: decide promotion (beats base by a margin AND holds up against the current champion on the same eval
set; by default judged on paired per-query intervals)."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate(
    evaluation: dsl.Input[dsl.Artifact],
    registry: dsl.Input[dsl.Artifact],
    chunks: dsl.Input[dsl.Dataset],
    pairs: dsl.Input[dsl.Dataset],
    config: dict,
    evaluate_config: dict,
    tracking_uri: str,
    decision: dsl.Output[dsl.Artifact],
    eval_beir_artifact: dsl.Input[dsl.Dataset] = None,
) -> bool:
    """Compare the new version with base and with the current champion (re-evaluated on the same eval set).

    Returns a single bool so the pipeline can branch with ``dsl.If(gate_task.output == True)`` (kfp.local
    cannot resolve named NamedTuple outputs in conditions).

    Args:
        evaluation: Evaluate output folder (``evaluation.json`` with ``base`` and ``finetuned`` metrics, and the
            per-query records the interval rule pairs).
        registry: Register output folder (``registry.json``: model name and the new version).
        chunks: Ingest output folder; its eval split re-evaluates the champion.
        pairs: SDG output folder (eval pairs).
        config: ``GateConfig`` fields (rule, metric, min_improvement, confidence, non_inferiority_margin,
            greater_is_better, alias, ...).
        evaluate_config: ``EvaluateConfig`` fields, the same the evaluate step used.
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` -> the one in ``registry.json``.
        decision: Output folder: ``decision.json`` (promote, reason, numbers) + ``manifest.json``.
        eval_beir_artifact: The external BEIR folder as an imported artifact, the one evaluate received: the
            champion is re-evaluated on this pod's copy (without it, on the folder path evaluate recorded,
            which this pod must then mount).

    Returns:
        True when the new version should be promoted.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        import os

        from embedforge.components._inputs import local_path

        from embedforge.config import EvaluateConfig, GateConfig
        from embedforge.stages import gate as stage

        os.makedirs(decision.path, exist_ok=True)
        result = stage.run(evaluation.path, registry.path, chunks.path, pairs.path, decision.path,
                           GateConfig.model_validate(config), EvaluateConfig.model_validate(evaluate_config),
                           tracking_uri, external_dir=local_path(eval_beir_artifact, "") or None).result
        decision.metadata["promote"] = result.promote
        decision.metadata["reason"] = result.reason
        decision.metadata["rule"] = result.rule
        print(result.reason)
        return bool(result.promote)
