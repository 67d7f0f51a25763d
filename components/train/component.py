"""KFP component: contrastive fine-tuning of the base model on mined training rows."""

from kfp import dsl

from embedforge.components._common import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    mined: dsl.Input[dsl.Dataset],
    base_model: str,
    config: dict,
    prompts: dict,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Fine-tune the base model with InfoNCE over in-batch and hard negatives; save a sentence-transformers folder.

    Args:
        mined: Mine output folder (``train.jsonl``: anchor, positive, negative_1..n).
        base_model: Model folder or id to start from.
        config: ``TrainConfig`` fields (epochs, batch_size, learning_rate, temperature, warmup_ratio, ...;
            ``processes``: 0 = one torchrun worker per visible GPU, the global batch split over them).
        prompts: ``PromptsConfig`` fields (``query``, ``document``): prefixes used in training and saved in the
            model's ``config_sentence_transformers.json``.
        model: Output folder: the fine-tuned model (``SentenceTransformer(model.path)`` loads it) +
            ``manifest.json``.
        metrics: Examples, steps, final loss, throughput.
    """
    from embedforge import train as stage
    from embedforge.config import PromptsConfig, TrainConfig

    manifest = stage.launch(
        mined.path,
        model.path,
        TrainConfig.model_validate(config),
        base_model=base_model,
        prompts=PromptsConfig.model_validate(prompts),
    )
    model.metadata["framework"] = "sentence-transformers"
    for name, value in manifest.counts.items():
        metrics.log_metric(name, value)
    metrics.log_metric("final_loss", manifest.result.final_loss)
    metrics.log_metric("examples_per_second", manifest.result.examples_per_second)
    metrics.log_metric("train_seconds", manifest.result.train_seconds)
