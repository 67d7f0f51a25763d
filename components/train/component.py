"""KFP component: contrastive fine-tuning of the base model on mined training rows."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    mined: dsl.Input[dsl.Dataset],
    base_model: str,
    config: dict,
    prompts: dict,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    base_model_artifact: dsl.Input[dsl.Model] = None,
    model_config: dict = None,
    tracking_uri: str = "",
    register_config: dict = None,
    kfp_run_id: str = "",
):
    """Fine-tune the base model with InfoNCE over in-batch and hard negatives; save a sentence-transformers folder.

    Args:
        mined: Mine output folder (``train.jsonl``: anchor, positive, negative_1..n).
        base_model: Model folder or id to start from.
        config: ``TrainConfig`` fields (epochs, batch_size, learning_rate, temperature, warmup_ratio, ...;
            ``processes``: 0 = one torchrun worker per visible GPU, the global batch split over them; ``nodes`` > 1:
            a Kubeflow Trainer TrainJob of that many nodes is submitted, awaited and deleted, see
            ``embedforge.cluster.trainjob``).
        prompts: ``PromptsConfig`` fields (``query``, ``document``): prefixes used in training and saved in the
            model's ``config_sentence_transformers.json``.
        model: Output folder: the fine-tuned model (``SentenceTransformer(model.path)`` loads it) +
            ``manifest.json``.
        metrics: Examples, steps, final loss, throughput.
        base_model_artifact: The base model folder as an imported artifact (``--inputs artifacts`` with
            ``base_model_uri``); overrides ``base_model`` unless it is the "absent" stand-in.
        model_config: ``ModelConfig`` fields (the pipeline's ``model`` section: pooling, attention, padding_side,
            trust_remote_code): how the base model becomes an embedder, the same in every step that loads it.
        tracking_uri: MLflow tracking URI of the step's live run (per-step metrics, ``train.log_every_steps``);
            empty: ``register_config.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else no live run.
        register_config: ``RegisterConfig`` fields: the live run goes to its ``experiment``.
        kfp_run_id: The KFP run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``): register makes the live run a child of
            the pipeline's MLflow run by it.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.components._inputs import local_path

        from embedforge.config import (
            ModelConfig,
            PromptsConfig,
            RegisterConfig,
            TrainConfig,
        )
        from embedforge.registry.live_run import use_destination
        from embedforge.stages import train as stage

        cfg = TrainConfig.model_validate(config)
        mlflow_cfg = RegisterConfig.model_validate(register_config or {})
        use_destination(tracking_uri or mlflow_cfg.tracking_uri, mlflow_cfg.experiment, kfp_run_id)
        model_cfg = ModelConfig.model_validate(model_config or {})
        base_model = local_path(base_model_artifact, base_model)
        manifest = stage.run(mined.path, model.path, cfg, base_model=base_model,
                             prompts=PromptsConfig.model_validate(prompts), model_cfg=model_cfg)
        model.metadata["framework"] = "sentence-transformers"
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
        metrics.log_metric("final_loss", manifest.result.final_loss)
        metrics.log_metric("examples_per_second", manifest.result.examples_per_second)
        metrics.log_metric("train_seconds", manifest.result.train_seconds)
