"""The train step's work folder: what must outlive an interrupted attempt of the step, and how it is named.

Two things are kept there (``train.work_dir``), each in its own subfolder: the schedule search's finished probes
(:mod:`embedforge.stages.train.probe_journal`, ``probes-<hash>``) and the final run's latest checkpoint
(:mod:`embedforge.stages.train.checkpoint`, ``run-<hash>``). ``<hash>`` is the sha256 of everything the kept results
depend on (:func:`identity`): the rows and known positives, every ``train`` setting but the work folder and the
checkpoint interval, the model and prompt settings, the base model folder's bytes (not its path: a retried KFP task
or TrainJob stages the same model elsewhere), the WiSE-FT weight, the number of processes and embedforge's code.
So a rerun with the same inputs finds them, and nothing of another run is ever reused. The driver deletes both
once the step has saved its model.

Where: ``train.work_dir`` — the one route: ``embedforge run`` sets ``<out>/train_work``, ``embedforge train``
``<out>/.train_work`` (removed again once empty), the compiled Kubernetes pipeline's default config the data volume
(it outlives the pod), a TrainJob's nodes ``train.trainjob.shared_mount``/train_work. Empty (a library caller): a
folder of this user's in the system temp folder, never a folder shared by the machine's users.

Private: what is kept is read back into the process, so the folders are this user's alone — the ``run-``/``probes-``
folders (and the root, where it is made here) are mode 0700, and a kept folder that is not (another user's, a
link, open to others and not ours to fix) is not read (:func:`not_private`). Checkpoints are read as data only
anyway (:mod:`embedforge.stages.train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from embedforge.config import ModelConfig, PromptsConfig, TrainConfig
from embedforge.contracts import TrainExample, content_sha256, fingerprint
from embedforge.errors import ConfigError


def root(cfg: TrainConfig) -> Path:
    """The folder the step's kept results go under (see the module docstring)."""
    if cfg.work_dir:
        return Path(cfg.work_dir).expanduser()
    private = Path(tempfile.gettempdir()) / f"embedforge-train-work-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    if private.is_symlink() or private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
        raise ConfigError(f"{private} is not a private folder of this user (another user's, a link, or readable by "
                          "others): set train.work_dir to a folder of your own")
    return private


def identity(examples: list[TrainExample], known: dict[str, set[str]], cfg: TrainConfig, base_model: str,
             prompts: PromptsConfig, model_cfg: ModelConfig | None, base_weight: float, world: int) -> dict:
    """What a probe's or a run's result depends on, as JSON-able values (see the module docstring)."""
    import embedforge

    rows = hashlib.sha256()
    for ex in examples:
        rows.update(json.dumps(ex.model_dump(mode="json"), sort_keys=True).encode("utf-8") + b"\n")
    rows.update(json.dumps({a: sorted(t) for a, t in sorted(known.items())}).encode("utf-8"))
    settings = cfg.model_dump(mode="json", exclude={"work_dir", "checkpoint_minutes", "log_every_steps"})
    model_path = Path(base_model)
    return {
        "embedforge": embedforge.__version__,
        "code_sha256": _code_sha256(),
        "rows_sha256": rows.hexdigest(),
        "train": settings,
        "model": (model_cfg or ModelConfig()).model_dump(mode="json"),
        "prompts": prompts.model_dump(mode="json"),
        "base_model": "" if model_path.is_dir() else base_model,
        "base_model_sha256": _model_sha256(str(model_path.resolve()), _stat(model_path)) if model_path.is_dir() else "",
        "base_weight": base_weight,
        "processes": world,
    }


@functools.cache
def _code_sha256() -> str:
    """Hash of embedforge's sources, read once per process: another image (a fix in the loss, the scoring) must not
    reuse this one's results."""
    import embedforge

    code = hashlib.sha256()
    package = Path(embedforge.__file__).parent
    for source in sorted(package.rglob("*.py")):
        code.update(source.relative_to(package).as_posix().encode("utf-8") + b"\0" + source.read_bytes())
    return code.hexdigest()


def _stat(path: Path) -> tuple:
    """Names, sizes and modification times of a folder's files: a changed file changes it."""
    return tuple((str(f.relative_to(path)), st.st_size, st.st_mtime_ns)
                 for f in sorted(path.rglob("*")) if f.is_file() and (st := f.stat()))


@functools.lru_cache(maxsize=4)
def _model_sha256(path: str, stat: tuple) -> str:
    """The base model folder's content hash, read once per process while its files are unchanged (``stat``): the
    search and the final run both need it."""
    return content_sha256(Path(path))


def folder(cfg: TrainConfig, kind: str, state: dict) -> Path:
    """``<root>/<kind>-<first 16 hex digits of the sha256 of state>``, made private (mode 0700) where it can be; a
    folder that cannot be made (a full or read-only volume) is left to the write that needs it, which handles it."""
    path = root(cfg) / f"{kind}-{fingerprint(state, [])[:16]}"
    try:
        make_private(path)
    except OSError:
        pass
    return path


def make_private(path: Path) -> None:
    """Create ``path`` (and a missing parent) with mode 0700; a folder of ours that exists gets mode 0700 too."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not path.is_symlink() and st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o700)


def not_private(path: Path) -> str | None:
    """Why ``path`` is not a private folder of this user (a link, another user's, open to others); None if it is."""
    st = path.lstat()
    if path.is_symlink():
        return "a link"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not this user"
    if st.st_mode & 0o077:
        return f"open to other users (mode {st.st_mode & 0o777:o})"
    return None


def discard(path: str | Path | None) -> None:
    """Delete a kept folder the step no longer needs (its model is saved)."""
    if path:
        shutil.rmtree(path, ignore_errors=True)


def remove_if_empty(path: str | Path) -> None:
    """Remove the work folder ``path`` once nothing is kept in it (``embedforge train``'s ``<out>/.train_work``)."""
    with contextlib.suppress(OSError):
        Path(path).rmdir()
