"""Start training in this process, or in one process per GPU under ``torchrun``.

Each torchrun worker runs ``python -m embedforge.train`` (:mod:`embedforge.train.__main__`) with the run's
settings in a YAML file; rank 0 writes the manifest that :func:`launch` then returns.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import embedforge.train.distributed as distributed
from embedforge import contracts
from embedforge.config import DEFAULT_BASE_MODEL, ModelConfig, PromptsConfig, TrainConfig
from embedforge.contracts import Manifest
from embedforge.errors import ConfigError
from embedforge.train.driver import run

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
    """The torchrun command line that trains on ``n`` processes of this machine, each ``python -m embedforge.train``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "embedforge.train", "--mined", str(mined_dir), "--out", str(out_dir), "--config", str(config_file)]


def launch(mined_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, base_model: str = DEFAULT_BASE_MODEL,
           prompts: PromptsConfig | None = None, model_cfg: ModelConfig | None = None) -> Manifest:
    """:func:`~embedforge.train.driver.run` in this process, or — when :func:`resolved_processes` > 1 and this is
    not already a torchrun worker — under ``torchrun --standalone --nproc-per-node N`` (:func:`worker_command`),
    then the manifest rank 0 wrote.

    Raises:
        InputError, ConfigError: as :func:`~embedforge.train.driver.run`; a failed worker raises
            :class:`~embedforge.errors.ConfigError` with the tail of its output.
    """
    prompts = prompts or PromptsConfig()
    n = resolved_processes(cfg)
    if n <= 1 or distributed.from_env().enabled:
        return run(mined_dir, out_dir, cfg, base_model=base_model, prompts=prompts, model_cfg=model_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "train.yaml"
        config_file.write_text(yaml.safe_dump({"base_model": base_model, "prompts": prompts.model_dump(),
                                               "model": (model_cfg or ModelConfig()).model_dump(),
                                               "train": cfg.model_dump(mode="json", exclude_none=True)}))
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
