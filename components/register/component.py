"""KFP component: log the pipeline run to MLflow and register the fine-tuned model as a new version."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    model: dsl.Input[dsl.Model],
    onnx_model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    validation: dsl.Input[dsl.Artifact],
    pairs: dsl.Input[dsl.Dataset],
    config: dict,
    base_model: str,
    prompts: dict,
    ingest_config: dict,
    sdg_config: dict,
    validate_config: dict,
    mine_config: dict,
    train_config: dict,
    evaluate_config: dict,
    export_config: dict,
    gate_config: dict,
    triton_config: dict,
    tracking_uri: str,
    kfp_run_id: str,
    registry: dsl.Output[dsl.Artifact],
    base_model_uri: str = "",
    model_config: dict = None,
):
    """Create one MLflow run (params, metrics, artifacts) and a new version of the registered model (an MLflow
    Model: pyfunc over the ONNX file and tokenizer, with signature and input example).

    Args:
        model: Train output folder (sentence-transformers model); its files sit beside ``MLmodel`` in ``model/``.
        onnx_model: Export output folder (``model.onnx``, tokenizer, ``parity.json``): the pyfunc's artifact.
        evaluation: Evaluate output folder (``evaluation.json``): base_*, finetuned_*, delta_* metrics.
        validation: Validate output folder (``validation.json``), logged as an artifact.
        pairs: SDG output folder; its counts become ``sdg_*`` metrics, the sha256 of its pairs the
            ``data_sha256`` tag.
        config: ``RegisterConfig`` fields (model_name, experiment, tracking_uri).
        base_model, prompts, ingest_config, ..., triton_config: the very values the pipeline passed to the other
            stages; validated into the effective configuration and logged as flattened params (secrets redacted),
            so a config overridden at submit time is what MLflow shows.
        tracking_uri: MLflow tracking URI; empty -> ``config.tracking_uri`` -> ``$MLFLOW_TRACKING_URI``.
        kfp_run_id: The KFP run id (the pipeline passes ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), tagged on run and
            version; empty -> ``$KFP_RUN_ID``.
        registry: Output folder: ``registry.json`` (run id, model name, version, source) + ``manifest.json``.
        base_model_uri: The URI the base model was imported from (``--inputs artifacts``); when set, it is the
            base model MLflow records instead of ``base_model`` (the id the steps then did not use).
        model_config: The pipeline's ``model`` section (how the base model was loaded), logged with the rest.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        import os

        from embedforge.config import RegisterConfig
        from embedforge.registry.provenance import effective_params
        from embedforge.stages import register as stage

        base_model = base_model_uri or base_model
        params = effective_params(base_model, prompts, {
            "ingest": ingest_config, "sdg": sdg_config, "validate": validate_config, "mine": mine_config,
            "train": train_config, "evaluate": evaluate_config, "export": export_config, "register": config,
            "gate": gate_config, "triton": triton_config, "model": model_config,
        })
        os.makedirs(registry.path, exist_ok=True)
        manifest = stage.run(model.path, onnx_model.path, evaluation.path, validation.path, registry.path,
                             RegisterConfig.model_validate(config), tracking_uri, params=params, base_model=base_model,
                             pairs_dir=pairs.path, kfp_run_id=kfp_run_id)
        registry.metadata["model_name"] = manifest.result.model_name
        registry.metadata["version"] = manifest.result.version
        registry.metadata["run_id"] = manifest.result.run_id
