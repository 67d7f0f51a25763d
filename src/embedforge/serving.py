"""Roll a promoted version out to a running Triton Inference Server and prove it serves the exported model.

Used by :mod:`embedforge.promote` when ``triton.server_url`` is set, after the version was written into the live
model repository (``triton.repository_dir``, the Triton PVC on Kubernetes):

1. ask the server to (re)load the model through the repository extension
   (``POST /v2/repository/models/<name>/load``; a server in ``poll`` mode refuses explicit loads and picks the new
   version up on its next scan instead);
2. wait until ``/v2/models/<name>/versions/<version>/ready``;
3. send one inference request for a probe text, tokenised with the tokenizer shipped in the version folder, and
   compare the served embedding with onnxruntime's on the same ``model.onnx`` (cosine >= ``min_cosine``).

The HTTP client is ``tritonclient.http``. Any failure raises :class:`ServingError` naming the server, the model
and what to check; promote then removes the version from the live repository again, so the server keeps serving
the previous one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from embedforge.errors import ServingError

log = logging.getLogger(__name__)

PROBE_TEXT = "embedforge rollout check: is the promoted embedder served?"


@dataclass(frozen=True)
class Rollout:
    """What :func:`roll_out` verified."""

    url: str
    model_name: str
    version: str
    mode: str  # "explicit" (loaded through the repository API) or "poll" (picked up by the server's scan)
    ready_seconds: float
    dim: int
    probe_cosine: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _client(url: str, timeout_s: float):
    import tritonclient.http as httpclient

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ServingError(f"triton.server_url {url!r} is not an http(s)://host:port URL")
    return httpclient.InferenceServerClient(
        url=parsed.netloc, ssl=parsed.scheme == "https", connection_timeout=timeout_s, network_timeout=timeout_s
    )


def _probe_features(version_dir: Path, input_names: list[str], prompt: str = "") -> dict[str, np.ndarray]:
    """Token ids of the probe text with the tokenizer shipped in the version folder, for the model's inputs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(version_dir / "tokenizer"))
    enc = tok([prompt + PROBE_TEXT], return_tensors="np", truncation=True)
    missing = [n for n in input_names if n not in enc]
    if missing:
        raise ServingError(f"the tokenizer in {version_dir / 'tokenizer'} does not produce model inputs {missing}")
    return {n: enc[n].astype(np.int64) for n in input_names}


def _local_embedding(version_dir: Path, feats: dict[str, np.ndarray], output: str) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run([output], feats)[0]


def roll_out(url: str, repository_dir: str | Path, model_name: str, version: str, timeout_s: float = 120.0,
             min_cosine: float = 0.999) -> Rollout:
    """Have the Triton server at ``url`` serve ``version`` of ``model_name`` from ``repository_dir`` and verify it.

    Args:
        url: The server's HTTP endpoint, e.g. ``http://triton.embedforge.svc:8000``.
        repository_dir: The live model repository the server reads (``<model_name>/config.pbtxt``,
            ``<model_name>/<version>/model.onnx``, ``<model_name>/<version>/tokenizer/``).
        model_name: Triton model name.
        version: The version that must become ready.
        timeout_s: How long to wait for the version to become ready.
        min_cosine: Least cosine between the served and the local onnxruntime embedding of the probe text.

    Returns:
        A :class:`Rollout` record.

    Raises:
        ServingError: Server unreachable, load refused/failed, not ready in time, or the served embedding differs.
    """
    from tritonclient.http import InferInput, InferRequestedOutput
    from tritonclient.utils import InferenceServerException

    from embedforge.triton import CONFIG_FILE, validate_config

    version_dir = Path(repository_dir) / model_name / str(version)
    conf = validate_config((Path(repository_dir) / model_name / CONFIG_FILE).read_text(encoding="utf-8"))
    where = f"Triton at {url}, model {model_name!r} version {version}"
    client = _client(url, timeout_s)
    started = time.monotonic()
    try:
        if not client.is_server_live():
            raise ServingError(f"{where}: the server is not live")
        mode = "explicit"
        try:
            client.load_model(model_name)
        except InferenceServerException as exc:
            if "polling is enabled" not in str(exc):
                raise ServingError(f"{where}: the server could not load the model: {exc.message()}") from None
            mode = "poll"  # the server rescans its repository itself
        while not client.is_model_ready(model_name, str(version)):
            if time.monotonic() - started > timeout_s:
                raise ServingError(f"{where}: not ready after {timeout_s:.0f} s (mode {mode}); check the server log "
                                   "and that it reads the repository promote writes")
            time.sleep(0.5)
        ready_seconds = time.monotonic() - started

        prompt = conf.parameters["query_prompt"].string_value if "query_prompt" in conf.parameters else ""
        names = [i.name for i in conf.input]
        feats = _probe_features(version_dir, names, prompt)
        inputs = []
        for name in names:
            inp = InferInput(name, list(feats[name].shape), "INT64")
            inp.set_data_from_numpy(feats[name], binary_data=False)
            inputs.append(inp)
        out_name = conf.output[0].name
        result = client.infer(model_name, inputs, model_version=str(version),
                              outputs=[InferRequestedOutput(out_name, binary_data=False)])
        served = result.as_numpy(out_name)
    except InferenceServerException as exc:
        raise ServingError(f"{where}: {exc.message() or exc}") from None
    except (ConnectionError, OSError) as exc:
        raise ServingError(f"{where}: cannot reach the server ({exc}); check triton.server_url and the Service") from None
    finally:
        client.close()

    local = _local_embedding(version_dir, feats, out_name)
    if served is None or served.shape != local.shape or not np.all(np.isfinite(served)):
        raise ServingError(f"{where}: served output {out_name!r} has shape "
                           f"{None if served is None else served.shape}, expected {local.shape}")
    cos = float((served * local).sum() / (np.linalg.norm(served) * np.linalg.norm(local) + 1e-12))
    if cos < min_cosine:
        raise ServingError(f"{where}: the served embedding differs from the exported model's (cosine {cos:.4f} < "
                           f"{min_cosine}); is another model of that name in the server's repository?")
    log.info("%s: ready after %.1f s (%s), probe cosine %.5f", where, ready_seconds, mode, cos)
    return Rollout(url=url, model_name=model_name, version=str(version), mode=mode,
                   ready_seconds=round(ready_seconds, 3), dim=int(local.shape[-1]), probe_cosine=round(cos, 6))


def reload(url: str, model_name: str, timeout_s: float = 30.0) -> None:
    """Best effort: ask the server to reload ``model_name`` (after a rollback); errors are logged, not raised."""
    from tritonclient.utils import InferenceServerException

    try:
        client = _client(url, timeout_s)
        try:
            client.load_model(model_name)
        finally:
            client.close()
    except (InferenceServerException, ServingError, ConnectionError, OSError) as exc:
        log.warning("reload of %r on %s after rollback failed: %s", model_name, url, exc)
