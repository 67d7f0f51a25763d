"""A real HTTP server speaking the subset of Triton's HTTP/REST protocol (KServe v2 + the model-repository
extension) that a rollout uses, serving ONNX models from a Triton model repository with onnxruntime.

Triton itself cannot be installed here; this server reads the same repository layout, parses ``config.pbtxt``
with Triton's own ``model_config_pb2`` and answers with Triton's status codes and ``{"error": ...}`` bodies, so
``tritonclient.http`` talks to it as to Triton. ``mode="poll"`` refuses explicit loads as Triton does with
``--model-control-mode=poll`` and loads the newest version when asked whether it is ready.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

_NP = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32}


class Repository:
    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode = Path(root), mode
        self.loaded: dict[str, tuple[str, object, object]] = {}  # name -> (version, session, config)
        self.loads: list[str] = []

    def load(self, name: str) -> None:
        import onnxruntime as ort
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc

        model_dir = self.root / name
        conf = mc.ModelConfig()
        text_format.Parse((model_dir / "config.pbtxt").read_text(), conf)
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise RuntimeError(f"failed to load '{name}', no version is available")
        version = str(versions[-1])  # version_policy latest 1
        session = ort.InferenceSession(str(model_dir / version / "model.onnx"), providers=["CPUExecutionProvider"])
        self.loaded[name] = (version, session, conf)
        self.loads.append(f"{name}:{version}")


def make_app(repo: Repository) -> FastAPI:
    app = FastAPI()

    def error(msg: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    @app.get("/v2/health/live")
    def live():
        return {}

    @app.get("/v2/health/ready")
    def ready():
        return {}

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str):
        if repo.mode == "poll":
            return error(f"failed to load '{name}', explicit model load / unload is not allowed if polling is enabled")
        try:
            repo.load(name)
        except Exception as exc:  # what Triton reports as a failed load
            return error(f"failed to load '{name}', failed to load all versions: {exc}")
        return {}

    @app.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(name: str, version: str):
        if repo.mode == "poll":  # the repository scan
            try:
                repo.load(name)
            except Exception:
                pass
        if name in repo.loaded and repo.loaded[name][0] == version:
            return {}
        return error(f"Request for unknown model: '{name}' version {version} is not ready")

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, version: str, request: Request):
        if name not in repo.loaded or repo.loaded[name][0] != version:
            return error(f"Request for unknown model: '{name}' version {version} is not found")
        body = await request.json()
        _, session, conf = repo.loaded[name]
        feeds = {i["name"]: np.asarray(i["data"], dtype=_NP[i["datatype"]]).reshape(i["shape"]) for i in body["inputs"]}
        names = [o["name"] for o in body.get("outputs", [])] or [o.name for o in conf.output]
        outs = session.run(names, feeds)
        return {"model_name": name, "model_version": version,
                "outputs": [{"name": n, "datatype": "FP32", "shape": list(o.shape), "data": o.ravel().tolist()}
                            for n, o in zip(names, outs)]}

    return app


@contextmanager
def serve(root: Path, mode: str = "explicit"):
    """Run the server on a free localhost port; yields ``(url, repository)``."""
    import uvicorn

    repo = Repository(root, mode)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(repo), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("stand-in Triton server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", repo
    finally:
        server.should_exit = True
        thread.join(timeout=10)
