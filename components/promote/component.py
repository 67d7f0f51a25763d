"""KFP component: set the champion alias on the new version and write the Triton model repository."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def promote(
    decision: dsl.Input[dsl.Artifact],
    registry: dsl.Input[dsl.Artifact],
    onnx_model: dsl.Input[dsl.Model],
    triton_config: dict,
    tracking_uri: str,
    triton_repo: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """Move the registered model's alias to the gated version and publish it as a Triton model version.

    Refuses (fails) when ``decision.json`` says not to promote; the alias is the one the gate decided on.

    Args:
        decision: Gate output folder (``decision.json``).
        registry: Register output folder (``registry.json``).
        onnx_model: Export output folder (``model.onnx`` + tokenizer files).
        triton_config: ``TritonConfig`` fields (model_name, max_batch_size, instance_kind, max_queue_delay_us;
            repository_dir + server_url: publish into the live repository and roll out before the alias moves).
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` -> the one in ``registry.json``.
        triton_repo: Output folder: a Triton model repository (``<model>/config.pbtxt``,
            ``<model>/<version>/model.onnx``, ``<model>/<version>/tokenizer/``) + ``promotion.json``.
        metrics: The promoted version and its gate metric value.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        import os

        from embedforge.config import TritonConfig
        from embedforge.stages import promote as stage

        os.makedirs(triton_repo.path, exist_ok=True)
        manifest = stage.run(decision.path, registry.path, onnx_model.path, triton_repo.path,
                             TritonConfig.model_validate(triton_config), tracking_uri)
        promotion = manifest.result
        metrics.log_metric("promoted_version", int(promotion.version))
        metrics.log_metric(promotion.metric, promotion.value)
        triton_repo.metadata["model_name"] = promotion.triton_model_name
        triton_repo.metadata["version"] = promotion.version
