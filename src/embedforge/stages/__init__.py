"""The pipeline's stages, one unit each, in pipeline order.

=============  =====================================================================================
ingest/        documents -> chunks, split by document into train and eval (readers for each format)
sdg/           chunks -> (query, positive) pairs: offline generator, an LLM, or pairs the user brings
validate       Great Expectations suite over chunks and pairs; stops the run on bad data
mine           FAISS hard negatives with a positive-aware margin -> training rows
train/         contrastive fine-tuning (one process, torchrun, or a Kubeflow TrainJob)
evaluate       BEIR metrics, base vs fine-tuned, per query
export         ONNX graph with pooling and normalisation inside, checked against PyTorch
register       a new version in the MLflow model registry with its metrics and provenance
gate           challenger vs champion vs base: the promotion decision
promote        publish to Triton, roll out, then move the ``champion`` alias
report/        one HTML page for the run
=============  =====================================================================================

Every stage has a ``run(...)`` that reads its inputs' folders, writes its output folder and returns the
:class:`~embedforge.contracts.Manifest` it wrote there. A stage never imports another stage: what two stages
share lives in :mod:`embedforge.retrieval`, :mod:`embedforge.onnx`, :mod:`embedforge.registry` or
:mod:`embedforge.serving`; what one stage hands the next is a contract in :mod:`embedforge.contracts`.
"""
