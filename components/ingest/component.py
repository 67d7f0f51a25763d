"""KFP component: ingest a corpus folder (or BEIR corpus.jsonl) into sentence chunks with a document split."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    corpus_path: str,
    base_model: str,
    config: dict,
    chunks: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    corpus_artifact: dsl.Input[dsl.Dataset] = None,
    base_model_artifact: dsl.Input[dsl.Model] = None,
    tracking_uri: str = "",
):
    """Read documents, chunk them by sentences and split them train/eval by document.

    Args:
        corpus_path: Folder of .txt/.md/.rst/.html/.pdf/.docx/.pptx files, or a BEIR ``corpus.jsonl`` (or its
            folder), readable by the step ("" when ``corpus_artifact`` brings it).
        base_model: Model folder or id whose tokenizer caps chunk length.
        config: ``IngestConfig`` fields (sentences_per_chunk, min_chunk_chars, max_chunk_tokens, ...).
        chunks: Output folder: ``chunks.jsonl`` + ``manifest.json``.
        metrics: Document and chunk counts (unreadable_files: PDF/DOCX/PPTX files skipped, named with the reason
            in the manifest).
        corpus_artifact: The corpus as an imported artifact (``--inputs artifacts``); overrides ``corpus_path``.
        base_model_artifact: The base model folder as an imported artifact (``--inputs artifacts`` with
            ``base_model_uri``); overrides ``base_model`` unless it is the "absent" stand-in.
        tracking_uri: The run's MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` (on Kubernetes from the
            ``embedforge-config`` ConfigMap). Checked here, in the first step, so a run without an MLflow store fails
            at once instead of after training, at register.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.components._inputs import local_path

        from embedforge.config import IngestConfig
        from embedforge.registry.mlflow import resolve_tracking_uri
        from embedforge.stages import ingest as stage

        resolve_tracking_uri(tracking_uri)  # no MLflow store configured: one line now, not after training
        manifest = stage.run(local_path(corpus_artifact, corpus_path), chunks.path, IngestConfig.model_validate(config),
                             base_model=local_path(base_model_artifact, base_model))
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
