"""Make every Triton replica serve one version of the embedder, and prove each serves it.

Used by :mod:`embedforge.stages.promote` (after the version was written into the live model repository) and by
:mod:`embedforge.serving.rollback`. For each replica endpoint (:func:`endpoints`):

1. ask the server to (re)load the tokenizer, the embedder and the ensemble through the repository extension
   (``POST /v2/repository/models/<name>/load``); the configs pin one version (``version_policy specific``), so
   the load swaps the served version. A server in ``poll`` mode refuses explicit loads and picks the new
   configs up on its next scan instead, so then we only wait;
2. wait until the ensemble's ``version`` is ready and no other version of the three models is;
3. probe: embed one text through the ensemble (``input_type=query``) and compare it with the local reference —
   the version folder's tokenizer (``transformers``) with its saved prompt and ``max_seq_length``, then
   onnxruntime on its ``model.onnx`` (cosine >= ``min_cosine``).

Replicas: a rollout loads and probes each pod's own endpoint (``triton.replica_urls``, or every address of a
headless Service with ``triton.discover_replicas``). A load sent to a load-balanced Service reaches one pod only,
and poll mode gives no moment at which "all pods serve v" is known; per-pod loads let the rollout verify each
replica before the registry says the version is served, and roll every replica back when one fails.

Any failure raises :class:`ServingError` naming the replica, the model and what to check.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from embedforge.errors import ServingError

log = logging.getLogger(__name__)

PROBE_TEXT = "embedforge rollout check: is the promoted embedder served?"


@dataclass(frozen=True)
class ReplicaRollout:
    url: str
    mode: str  # "explicit" (loaded through the repository API) or "poll" (picked up by the server's scan)
    ready_seconds: float
    probe_cosine: float


@dataclass(frozen=True)
class Rollout:
    """What :func:`roll_out` verified, per replica."""

    model_name: str
    version: str
    dim: int
    replicas: list[ReplicaRollout] = field(default_factory=list)

    @property
    def probe_cosine(self) -> float:
        return min(r.probe_cosine for r in self.replicas)

    def as_dict(self) -> dict:
        return {**asdict(self), "probe_cosine": self.probe_cosine}


def endpoints(server_url: str, replica_urls: list[str] | tuple[str, ...] = (), discover: bool = False) -> list[str]:
    """The replica endpoints a rollout must reach.

    Args:
        server_url: The clients' endpoint (a Service).
        replica_urls: Explicit per-pod endpoints; win when given.
        discover: Resolve ``server_url``'s host (a headless Service) to every address it has, one replica each.
    """
    if replica_urls:
        return list(dict.fromkeys(replica_urls))
    if not discover:
        return [server_url]
    parsed = urlparse(server_url if "://" in server_url else f"http://{server_url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parsed.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServingError(f"cannot resolve the replicas of {server_url} ({exc}); check the headless Service") from None
    addrs = sorted({i[4][0] for i in infos})
    return [f"{parsed.scheme}://{f'[{a}]' if ':' in a else a}:{port}" for a in addrs]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def reference_embedding(repository_dir: str | Path, model_name: str, version: str, texts: list[str],
                        input_type: str = "query") -> np.ndarray:
    """What the ensemble must return for ``texts``: computed locally from the version's own files.

    The tokenizer is ``transformers``' (the server uses the ``tokenizers`` library directly, so the probe also
    checks the two tokenise alike), with the saved prompt and ``max_seq_length``; the graph runs in onnxruntime.
    """
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from embedforge.serving.repository import ModelNames

    names, repo = ModelNames.of(model_name), Path(repository_dir)
    tok_dir = repo / names.tokenizer / str(version) / "tokenizer"
    prompts = _read_json(tok_dir / "config_sentence_transformers.json").get("prompts") or {}
    prompt = prompts.get("query", "") if input_type == "query" else (prompts.get("document") or prompts.get("passage", ""))
    max_len = _read_json(tok_dir / "sentence_bert_config.json").get("max_seq_length")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    enc = tok([(prompt or "") + t for t in texts], return_tensors="np", padding=True, truncation=True,
              max_length=int(max_len) if max_len else None)
    sess = ort.InferenceSession(str(repo / names.embedder / str(version) / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    return sess.run(["embeddings"], feed)[0]


def _served_versions(client, names: tuple[str, ...]) -> dict[str, set[str]]:
    ready: dict[str, set[str]] = {n: set() for n in names}
    from embedforge.serving.client import admin_headers

    for m in client.get_model_repository_index(headers=admin_headers()):
        if m.get("name") in ready and m.get("state") == "READY" and m.get("version"):
            ready[m["name"]].add(str(m["version"]))
    return ready


def _load(client, names: tuple[str, ...], where: str) -> str:
    from tritonclient.utils import InferenceServerException

    from embedforge.serving.client import ADMIN_KEY_ENV, admin_headers

    for name in names:
        try:
            client.load_model(name, headers=admin_headers())
        except InferenceServerException as exc:
            if "polling is enabled" in str(exc):
                return "poll"  # the server rescans its repository itself
            if "restricted" in str(exc).lower() or "unauthor" in str(exc).lower():
                raise ServingError(f"{where}: the server refused its repository API to this process: set "
                                   f"{ADMIN_KEY_ENV} to the server's admin key (Kubernetes: the Secret "
                                   "embedforge-triton-admin, key admin-key)") from None
            raise ServingError(f"{where}: the server could not load {name!r}: {exc.message()}") from None
    return "explicit"


def _roll_out_one(url: str, repo: Path, model_name: str, version: str, timeout_s: float,
                  min_cosine: float) -> tuple[ReplicaRollout, int]:
    from tritonclient.utils import InferenceServerException

    from embedforge.serving.client import embed, http_client
    from embedforge.serving.repository import ModelNames

    names = ModelNames.of(model_name).all()
    where = f"Triton at {url}, model {model_name!r} version {version}"
    client = http_client(url, timeout_s)
    started = time.monotonic()
    try:
        if not client.is_server_live():
            raise ServingError(f"{where}: the server is not live")
        mode = _load(client, names, where)
        while (served := _served_versions(client, names)) != {n: {version} for n in names}:
            if time.monotonic() - started > timeout_s:
                raise ServingError(f"{where}: after {timeout_s:.0f} s (mode {mode}) the server serves {served}, "
                                   "not exactly this version; check the server log and that it reads the "
                                   "repository promote writes")
            time.sleep(0.5)
        ready_seconds = time.monotonic() - started
        served_emb = embed(url, [PROBE_TEXT], "query", model=model_name, version=version, client=client)
    except InferenceServerException as exc:
        raise ServingError(f"{where}: {exc.message() or exc}") from None
    except (ConnectionError, OSError) as exc:
        raise ServingError(f"{where}: cannot reach the server ({exc}); check triton.server_url / replica_urls") from None
    except ServingError as exc:
        raise ServingError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    finally:
        client.close()

    local = reference_embedding(repo, model_name, version, [PROBE_TEXT], "query")
    if served_emb is None or served_emb.shape != local.shape or not np.all(np.isfinite(served_emb)):
        raise ServingError(f"{where}: served embeddings have shape "
                           f"{None if served_emb is None else served_emb.shape}, expected {local.shape}")
    cos = float((served_emb * local).sum() / (np.linalg.norm(served_emb) * np.linalg.norm(local) + 1e-12))
    if cos < min_cosine:
        raise ServingError(f"{where}: the served embedding differs from the exported model's (cosine {cos:.4f} < "
                           f"{min_cosine}); is another model of that name in the server's repository?")
    log.info("%s: ready after %.1f s (%s), probe cosine %.5f", where, ready_seconds, mode, cos)
    return ReplicaRollout(url=url, mode=mode, ready_seconds=round(ready_seconds, 3),
                          probe_cosine=round(cos, 6)), int(local.shape[-1])


def roll_out(urls: str | list[str], repository_dir: str | Path, model_name: str, version: str,
             timeout_s: float = 120.0, min_cosine: float = 0.999) -> Rollout:
    """Have every replica in ``urls`` serve exactly ``version`` of ``model_name`` and verify each.

    The repository's configs must already point at ``version`` (:func:`embedforge.serving.repository.serve_version`).

    Args:
        urls: Replica HTTP endpoints (:func:`endpoints`), e.g. ``http://10.0.3.7:8000``.
        repository_dir: The live model repository the servers read.
        model_name: The ensemble's name (``triton.model_name``).
        version: The version that must be served.
        timeout_s: How long to wait for each replica.
        min_cosine: Least cosine between the served and the local embedding of the probe text.

    Raises:
        ServingError: A replica is unreachable, refused or failed the load, is not ready in time, or serves
            another embedding. Replicas before it may already serve ``version``: the caller restores them.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    replicas, dim = [], 0
    for url in urls:
        replica, dim = _roll_out_one(url, Path(repository_dir), model_name, str(version), timeout_s, min_cosine)
        replicas.append(replica)
    return Rollout(model_name=model_name, version=str(version), dim=dim, replicas=replicas)


def reload(urls: str | list[str], model_name: str, timeout_s: float = 30.0) -> list[str]:
    """Best effort: have every replica reload ``model_name``'s three models from the (restored) repository.

    Returns:
        The replicas that could not be reloaded (logged, not raised: this runs while another error propagates).
    """
    from embedforge.serving.client import http_client
    from embedforge.serving.repository import ModelNames

    failed = []
    for url in [urls] if isinstance(urls, str) else urls:
        try:
            client = http_client(url, timeout_s)
            try:
                _load(client, ModelNames.of(model_name).all(), f"Triton at {url}")
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - report every replica, keep the original error
            log.warning("reload of %r on %s failed: %s", model_name, url, exc)
            failed.append(url)
    return failed


def unload(urls: str | list[str], model_name: str, timeout_s: float = 30.0) -> None:
    """Best effort: unload ``model_name``'s three models everywhere (no version was served before)."""
    from embedforge.serving.client import admin_headers, http_client
    from embedforge.serving.repository import ModelNames

    for url in [urls] if isinstance(urls, str) else urls:
        try:
            client = http_client(url, timeout_s)
            try:
                for name in reversed(ModelNames.of(model_name).all()):
                    client.unload_model(name, headers=admin_headers())
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("unload of %r on %s failed: %s", model_name, url, exc)


def serve(triton, version: str) -> Rollout | None:
    """Switch the live repository (``triton.repository_dir``) to ``version`` and roll it out to every replica.

    On a failed rollout the repository and every replica are put back on the version served before (or, when
    none was, the models are unloaded), then the :class:`ServingError` propagates.

    Args:
        triton: ``TritonConfig`` (repository_dir, model_name, server_url, replica_urls, ready_timeout_s).
        version: The version to serve; its folders must be in the repository.

    Returns:
        The rollout record; None without ``triton.server_url`` (only the repository changed).
    """
    from embedforge.serving.repository import serve_version, served_version

    previous = served_version(triton.repository_dir, triton.model_name)
    serve_version(triton.repository_dir, triton.model_name, version)
    if not triton.server_url:
        return None
    urls = endpoints(triton.server_url, triton.replica_urls, triton.discover_replicas)
    try:
        return roll_out(urls, triton.repository_dir, triton.model_name, str(version), timeout_s=triton.ready_timeout_s)
    except ServingError:
        restore(triton, previous)
        raise


def restore(triton, version: str | None) -> None:
    """Best effort: serve ``version`` again on every replica (None: nothing was served; unload the models)."""
    from embedforge.serving.repository import CONFIG_FILE, ModelNames, serve_version

    live = Path(triton.repository_dir)
    if version is not None:
        serve_version(live, triton.model_name, version)
    else:
        for name in ModelNames.of(triton.model_name).all():
            (live / name / CONFIG_FILE).unlink(missing_ok=True)
    if not triton.server_url:
        return
    urls = endpoints(triton.server_url, triton.replica_urls, triton.discover_replicas)
    if version is not None:
        failed = reload(urls, triton.model_name)
        log.error("restored %s version %s in %s%s", triton.model_name, version, live,
                  f"; replicas {failed} could not be reloaded: they load it when they restart" if failed else "")
    else:
        unload(urls, triton.model_name)
        log.error("no version of %s was served before: models unloaded, configs removed from %s",
                  triton.model_name, live)
