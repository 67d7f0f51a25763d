"""KFP component: export the fine-tuned model to one ONNX graph (pooling + normalisation inside), parity-checked."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export(
    model: dsl.Input[dsl.Model],
    chunks: dsl.Input[dsl.Dataset],
    config: dict,
    onnx_model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Write ``model.onnx`` (input_ids, attention_mask -> embeddings) with the tokenizer files and prompts beside it.

    Fails (``ParityError``) when ONNX Runtime does not reproduce the PyTorch embeddings of real chunks.

    Args:
        model: Train output folder: the fine-tuned sentence-transformers model.
        chunks: Ingest output folder (``chunks.jsonl``): parity is checked on up to ``parity_samples`` chunks.
        config: ``ExportConfig`` fields (opset, parity_min_cosine, parity_samples, exporter).
        onnx_model: Output folder: ``model.onnx``, tokenizer files, ``config_sentence_transformers.json``,
            ``sentence_bert_config.json``, ``parity.json``, ``manifest.json``.
        metrics: ``parity_min_cosine``, ``parity_mean_cosine``, ``parity_max_abs_diff``, ``dim``, ``opset``,
            ``onnx_file_size``, ``parity_samples``.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.config import ExportConfig
        from embedforge.stages import export as stage

        manifest = stage.run(model.path, chunks.path, onnx_model.path, ExportConfig.model_validate(config))
        result = manifest.result
        metrics.log_metric("parity_min_cosine", result.min_cosine)
        metrics.log_metric("parity_mean_cosine", result.mean_cosine)
        metrics.log_metric("parity_max_abs_diff", result.max_abs_diff)
        metrics.log_metric("parity_samples", result.parity_samples)
        metrics.log_metric("dim", result.dim)
        metrics.log_metric("opset", result.opset)
        metrics.log_metric("onnx_file_size", result.file_size)
        onnx_model.metadata.update({"dim": result.dim, "opset": result.opset, "pooling": result.pooling})
