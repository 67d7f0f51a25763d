"""One training process: ``python -m embedforge.stages.train --mined DIR --out DIR --config FILE``.

:func:`embedforge.stages.train.run` starts this once per rank under torchrun (on this machine or on each node of a
TrainJob). ``FILE`` is the config :func:`embedforge.config.write_config` wrote; its ``base_model``, ``model``, ``prompts`` and ``train`` sections are used. A
user-fixable problem prints one line (``error: ...``) and exits with status 1. SIGTERM (torchrun ending its workers,
Kubernetes ending the pod, ``embedforge run`` ending its stages) is raised as ``KeyboardInterrupt`` like Ctrl-C, so
the run unwinds: the live MLflow run is marked KILLED instead of staying RUNNING, and the exit status is 143 (130
for Ctrl-C), as the shell reports a process the signal ended.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from embedforge.config import load_config
from embedforge.errors import EmbedforgeError
from embedforge.signals import interruptible
from embedforge.stages.train.driver import run_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedforge.stages.train", description=__doc__.splitlines()[0])
    parser.add_argument("--mined", required=True, help="Mine artifact folder (train.jsonl, manifest.json).")
    parser.add_argument("--out", required=True, help="Output folder of the model and its manifest.")
    parser.add_argument("--config", required=True, help="YAML config: base_model, prompts, train.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing loads from a model hub at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with interruptible() as interrupted:
        try:
            cfg = load_config(args.config)
            run_process(args.mined, args.out, cfg.train, base_model=cfg.base_model, prompts=cfg.prompts,
                        model_cfg=cfg.model)
        except EmbedforgeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            signum = interrupted.get("signum", signal.SIGINT)
            print(f"train: interrupted by {'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name}",
                  file=sys.stderr)
            return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
