"""KFP component: log the pipeline run to MLflow and register the fine-tuned model as a new version."""

from kfp import dsl

from embedforge.components._common import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    model: dsl.Input[dsl.Model],
    onnx_model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    validation: dsl.Input[dsl.Artifact],
    pairs: dsl.Input[dsl.Dataset],
    config: dict,
    params: dict,
    tracking_uri: str,
    registry: dsl.Output[dsl.Artifact],
):
    """Create one MLflow run (params, metrics, artifacts) and a new version of the registered model.

    Args:
        model: Train output folder (sentence-transformers model); logged under ``model/``, the version's source.
        onnx_model: Export output folder (``model.onnx``, tokenizer, ``parity.json``); logged under ``onnx/``.
        evaluation: Evaluate output folder (``evaluation.json``): base_*, finetuned_*, delta_* metrics.
        validation: Validate output folder (``validation.json``), logged as an artifact.
        pairs: SDG output folder; its counts (pairs, LLM requests and tokens per stage) become ``sdg_*`` metrics.
        config: ``RegisterConfig`` fields (model_name, experiment, tracking_uri).
        params: The whole pipeline configuration, logged as flattened params (secret-looking keys redacted).
        tracking_uri: MLflow tracking URI; empty -> ``config.tracking_uri`` -> ``$MLFLOW_TRACKING_URI``.
        registry: Output folder: ``registry.json`` (run id, model name, version, source) + ``manifest.json``.
    """
    import os

    from embedforge import registry as stage
    from embedforge.config import RegisterConfig

    os.makedirs(registry.path, exist_ok=True)
    manifest = stage.run(model.path, onnx_model.path, evaluation.path, validation.path, registry.path,
                         RegisterConfig.model_validate(config), tracking_uri, params=params,
                         pairs_dir=pairs.path)
    registry.metadata["model_name"] = manifest.result.model_name
    registry.metadata["version"] = manifest.result.version
    registry.metadata["run_id"] = manifest.result.run_id
