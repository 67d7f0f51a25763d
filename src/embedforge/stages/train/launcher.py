"""The train stage's entry: where training runs — in this process, under torchrun, or on the nodes of a TrainJob.

:func:`run` decides, the same for ``embedforge train``, ``embedforge run`` and the compiled pipeline:

* ``train.nodes`` > 1 (and this process is not already a node): :func:`embedforge.cluster.trainjob.run` submits a
  Kubeflow Trainer TrainJob whose nodes run this stage with ``nodes: 1``, waits for it and collects the model;
* more than one process on this machine (:func:`resolved_processes`): ``torchrun --standalone`` starts one
  ``python -m embedforge.stages.train`` per process; rank 0 writes the manifest returned here;
* otherwise :func:`~embedforge.stages.train.driver.run_process` trains right here.

Workers get their settings as one YAML file written by :func:`embedforge.config.write_config` and read by
:func:`embedforge.config.load_config`: the same typed config on both sides.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import embedforge.stages.train.distributed as distributed
from embedforge import contracts
from embedforge.config import (
    DEFAULT_BASE_MODEL,
    ModelConfig,
    PromptsConfig,
    TrainConfig,
    train_worker_config,
    write_config,
)
from embedforge.contracts import Manifest
from embedforge.errors import ConfigError
from embedforge.stages.train.driver import run_process

log = logging.getLogger(__name__)


def resolved_processes(cfg: TrainConfig) -> int:
    """``cfg.processes``, or one per visible CUDA device when 0 (1 without CUDA or when ``cfg.device`` is cpu)."""
    if cfg.processes:
        return cfg.processes
    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return 1
    return 1 if cfg.device.startswith("cuda:") else max(1, torch.cuda.device_count())


def worker_command(n: int, mined_dir: str | Path, out_dir: str | Path, config_file: Path) -> list[str]:
    """The torchrun command line that trains on ``n`` processes of this machine, each ``python -m embedforge.stages.train``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "embedforge.stages.train", "--mined", str(mined_dir), "--out", str(out_dir), "--config", str(config_file)]


def run(mined_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, base_model: str = DEFAULT_BASE_MODEL,
        prompts: PromptsConfig | None = None, model_cfg: ModelConfig | None = None) -> Manifest:
    """Train the base model on the mined rows and return the manifest of the saved model (see the module docstring).

    Args:
        mined_dir: Mine artifact folder holding ``train.jsonl`` (``anchor, positive, negative_1..n``).
        out_dir: Output folder: the saved model (``SentenceTransformer(out_dir)`` loads it) + ``manifest.json``.
        cfg: Training settings; ``nodes`` and ``processes`` decide where training runs.
        base_model: Model folder or id to start from.
        prompts: Query/document prefixes used in training and saved in the model.
        model_cfg: How the base model becomes an embedder (the pipeline's ``model`` section).

    Raises:
        InputError, ConfigError: as :func:`~embedforge.stages.train.driver.run_process`; a failed worker raises
            :class:`~embedforge.errors.ConfigError` with the tail of its output;
            :class:`~embedforge.cluster.trainjob.TrainJobError` when a TrainJob fails.
    """
    if cfg.nodes > 1:  # beyond one machine: a TrainJob trains, this process stages, waits and collects
        from embedforge.cluster import trainjob

        return trainjob.run(mined_dir, out_dir, cfg, base_model=base_model, prompts=prompts, model_cfg=model_cfg)
    n = resolved_processes(cfg)
    if n <= 1 or distributed.from_env().enabled:  # (already a torchrun rank: ranks other than 0 get None)
        return run_process(mined_dir, out_dir, cfg, base_model=base_model, prompts=prompts, model_cfg=model_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = write_config(Path(tmp) / "train.yaml", train_worker_config(cfg, base_model, prompts, model_cfg))
        cmd = worker_command(n, mined_dir, out_dir, config_file)
        log.info("train: %d processes: %s", n, " ".join(cmd))
        returncode, tail = _relay(cmd)
    if returncode != 0:
        raise ConfigError(f"distributed training ({n} processes) failed with exit code {returncode}; "
                          f"last output:\n{tail[-3000:]}")
    return contracts.read_manifest(out_dir)


def _relay(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd``, passing its output (the workers' logs: progress, warnings) on to this process's stderr as it
    comes; returns the exit code and the last lines (for the error of a failed run)."""
    from collections import deque

    last: deque[str] = deque(maxlen=200)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for raw in proc.stdout:  # bytes, split at newlines only: a progress bar's \r updates stay within one line
            line = raw.decode("utf-8", "replace")
            sys.stderr.write(line)
            sys.stderr.flush()
            last.append(line)
    return proc.returncode, "".join(last)
