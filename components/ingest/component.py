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
):
    """Read documents, chunk them by sentences and split them train/eval by document.

    Args:
        corpus_path: Folder of .txt/.md/.rst/.html files, or a BEIR ``corpus.jsonl`` (or its folder), readable by
            the step ("" when ``corpus_artifact`` brings it).
        base_model: Model folder or id whose tokenizer caps chunk length.
        config: ``IngestConfig`` fields (sentences_per_chunk, min_chunk_chars, max_chunk_tokens, ...).
        chunks: Output folder: ``chunks.jsonl`` + ``manifest.json``.
        metrics: Document and chunk counts.
        corpus_artifact: The corpus as an imported artifact (``--inputs artifacts``); overrides ``corpus_path``.
        base_model_artifact: The base model folder as an imported artifact (``--inputs artifacts`` with
            ``base_model_uri``); overrides ``base_model`` unless it is the "absent" stand-in.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge.components._inputs import local_path

        from embedforge.config import IngestConfig
        from embedforge.stages import ingest as stage

        manifest = stage.run(local_path(corpus_artifact, corpus_path), chunks.path, IngestConfig.model_validate(config),
                             base_model=local_path(base_model_artifact, base_model))
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
