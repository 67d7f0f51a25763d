"""torchrun worker for tests/train/test_distributed.py: one distributed step's loss and gradients, eval mode (no dropout).

Usage: torchrun --standalone --nproc-per-node N tests/support/dist_grad_worker.py MODEL MINED_DIR OUT.pt [MODE]
MODE: plain (default: one forward per tower, one backward), cached (embedforge.stages.train.cached, chunks of 100 tokens),
fsdp / fsdp_cached (the same, the model sharded with FSDP2: embedforge.stages.train.fsdp).
Rank 0 saves {"loss", "grads", "checksums"}: checksums of every rank's averaged gradients (they must agree)."""

import sys

import torch
import torch.distributed as dist

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.stages.train import distributed, fsdp
from embedforge.stages.train.batching import collate
from embedforge.stages.train.cached import GradCache
from embedforge.stages.train.losses import InfoNCELoss
from embedforge.stages.train.setup import load_for_training
from embedforge.stages.train.step import Stepper


def main() -> None:
    model_dir, mined, out = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "plain"
    ctx = distributed.from_env()
    distributed.init(ctx, "cpu")
    examples = contracts.read_train_examples(mined)
    known = {}
    for e in examples:
        known.setdefault(e.anchor, set()).add(e.positive)
    cfg = TrainConfig(max_seq_length=32, device="cpu")
    model = load_for_training(model_dir, cfg, PromptsConfig(query="query: ", document="passage: "))
    model.eval()
    if mode.startswith("fsdp"):
        fsdp.shard(model, ctx)
    stepper = Stepper(model, InfoNCELoss(0.05), None, None, "query: ", "passage: ", 1.0, dist=ctx,
                      sharded=mode.startswith("fsdp"))
    rows = list(range(len(examples)))
    split = distributed.shard(rows, ctx, lambda i: len(examples[i].negatives))
    batch, local = collate(examples, split.order, known), collate(examples, split.mine, None)
    if mode.endswith("cached"):
        loss = GradCache(chunk_tokens=100).backward(stepper, batch, local, split)
    else:
        loss = stepper.loss(batch, local, split)
        loss.backward()
    if stepper.sharded:  # FSDP averaged the gradients into shards: gather them whole
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    else:
        distributed.average_gradients(model.parameters(), ctx)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    checksum = torch.tensor([float(sum(g.double().sum() for g in grads.values()))], dtype=torch.float64)
    sums = [torch.zeros_like(checksum) for _ in range(ctx.world)]
    dist.all_gather(sums, checksum)
    if ctx.is_main:
        torch.save({"loss": float(loss), "grads": grads, "checksums": [float(s) for s in sums]}, out)
    distributed.shutdown(ctx)


if __name__ == "__main__":
    main()
