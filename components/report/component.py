"""KFP component: the run report (``report.html``) as a KFP HTML output, also attached to the MLflow run."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def report(
    chunks: dsl.Input[dsl.Dataset],
    validation: dsl.Input[dsl.Artifact],
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    registry: dsl.Input[dsl.Artifact],
    decision: dsl.Input[dsl.Artifact],
    tracking_uri: str,
    html: dsl.Output[dsl.HTML],
):
    """Render the run report from the stage artifacts; the KFP UI shows ``html``, MLflow keeps a copy.

    Runs after the gate (beside promote), so it shows the decision; it is logged to the registered version's
    MLflow run (``report/report.html``) because register runs before the gate has decided.

    Args:
        chunks: Ingest output (texts of the ranked chunks).
        validation: Validate output (``validation.json``).
        model: Train output (its manifest's loss history).
        evaluation: Evaluate output (``evaluation.json`` + ``per_query.jsonl``).
        registry: Register output (MLflow run id and tracking URI).
        decision: Gate output (``decision.json``).
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` -> the one in ``registry.json``.
        html: Output file: the self-contained report.
    """
    from embedforge.stages import report as stage

    artifacts = {"ingest": chunks.path, "validate": validation.path, "train": model.path,
                 "evaluate": evaluation.path, "register": registry.path, "gate": decision.path}
    path = stage.write_report(artifacts, html.path)
    html.metadata["mlflow_run_id"] = stage.log_to_mlflow(path, registry.path, tracking_uri)
