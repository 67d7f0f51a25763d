"""KFP component: ingest a corpus folder (or BEIR corpus.jsonl) into sentence chunks with a document split."""

from kfp import dsl

from embedforge.components._common import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    corpus_path: str,
    base_model: str,
    config: dict,
    chunks: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
):
    """Read documents, chunk them by sentences and split them train/eval by document.

    Args:
        corpus_path: Folder of .txt/.md/.rst/.html files, or a BEIR ``corpus.jsonl`` (or its folder).
        base_model: Model folder or id whose tokenizer caps chunk length.
        config: ``IngestConfig`` fields (sentences_per_chunk, min_chunk_chars, max_chunk_tokens, ...).
        chunks: Output folder: ``chunks.jsonl`` + ``manifest.json``.
        metrics: Document and chunk counts.
    """

    from embedforge.errors import reported_stage_errors

    with reported_stage_errors():  # the runner shows the stage's error as one line
        from embedforge import ingest as stage
        from embedforge.config import IngestConfig

        manifest = stage.run(corpus_path, chunks.path, IngestConfig.model_validate(config), base_model=base_model)
        for name, value in manifest.counts.items():
            metrics.log_metric(name, value)
