"""Train stage: contrastive fine-tuning, a compact PyTorch loop over mined ``anchor, positive, negative_1..n`` rows.

The loop is deliberately small (no ``SentenceTransformerTrainer``) so its step can be tuned for GPU throughput.
One concept per module:

=====================  ==========================================================================================
:mod:`.batching`       batch sampler (no text twice among a batch's anchors and positives) and collation
:mod:`.positives`      per-epoch sampling of a query's many positives; texts never its negative (all grades)
:mod:`.schedule`       ``train.schedule=auto``: learning rate, temperature, epochs probed on held-out train queries
:mod:`.losses`         InfoNCE over [all positives ; all hard negatives] with false-negative masking; its Matryoshka sum
:mod:`.tokens`         tokenise each text once; token-budgeted micro-batches
:mod:`.step`           the training-time forward ``embed`` and one optimisation step (``Stepper``)
:mod:`.loss_log`       loss history, one device sync per window of steps
:mod:`.setup`          seeds, model, precision, AdamW, warm-up + linear (or cosine) decay, ``torch.compile``
:mod:`.layer_decay`    layer-wise learning-rate decay: AdamW groups whose rate shrinks toward the embeddings
:mod:`.wise_ft`        WiSE-FT: saved weights interpolated back towards the base model's
:mod:`.distributed`    one global contrastive batch split over torchrun ranks
:mod:`.driver`         :func:`run_process`: one process's training, glue over the above
:mod:`.launcher`       :func:`run`: the stage — here, under torchrun, or as a TrainJob (``train.nodes`` > 1)
=====================  ==========================================================================================

The result is a sentence-transformers folder (``SentenceTransformer(path)`` loads it) whose
``config_sentence_transformers.json`` holds the prompts, plus ``manifest.json``.
"""

from embedforge.stages.train.driver import STAGE
from embedforge.stages.train.launcher import run

#: The entry's name in pipelines compiled before the package was arranged by architecture (kept one release).
launch = run

__all__ = ["STAGE", "launch", "run"]
