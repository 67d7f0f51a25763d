"""Build check of an embedforge image: use, not just import, what the components need.

Run by the Dockerfile as the image's non-root user (so a failure fails the build) and by
tests/install/test_images.py in a fresh venv holding the CPU requirement set:

- exactly one FAISS distribution is installed, the variant's own (faiss-cpu and faiss-gpu own the same files:
  with both, or with one uninstalled over the other, ``import faiss`` can still succeed on a broken package);
- the bundled all-MiniLM-L6-v2 loads and embeds a query and two passages (embedforge.retrieval.encode), a FAISS index over
  the passages (embedforge.retrieval.search) ranks the matching one first; on a GPU build with a visible GPU the index is
  searched on the GPU;
- onnxruntime runs a two-node ONNX graph built here and matches numpy;
- torch is the variant's build (CUDA or CPU); the KFP executor and the pipeline definition import;
- the ``documents`` extra (PDF/DOCX/PPTX readers) imports and converts a minimal Word file written on the spot;
- HOME, the caches and TMPDIR are writable (read-only root filesystems mount emptyDirs there).

    python images/check.py --variant cpu
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import tempfile
from pathlib import Path

import numpy as np

FAISS_DISTS = {"cpu": "faiss-cpu", "gpu": "faiss-gpu-cu12"}


def check_single_faiss(variant: str) -> str:
    installed = sorted(
        {d.metadata["Name"].lower() for d in md.distributions() if d.metadata["Name"].lower().startswith("faiss")})
    assert installed == [FAISS_DISTS[variant]], f"expected only {FAISS_DISTS[variant]}, found {installed}"
    import faiss

    assert hasattr(faiss, "IndexFlatIP"), "faiss imports but has no IndexFlatIP: its files were removed"
    if variant == "gpu":
        assert hasattr(faiss, "StandardGpuResources"), "faiss-gpu installed but faiss is not a GPU build"
    return f"{installed[0]} {md.version(installed[0])}"


def check_model_and_index(variant: str) -> str:
    from embedforge.retrieval.encode import encode, load_model
    from embedforge.retrieval.search import build_index, top_k

    model = load_model("all-MiniLM-L6-v2", device="cpu")
    passages = ["The cat sat on the mat and purred.", "Quarterly revenue grew by twelve percent."]
    docs = encode(model, passages, "document")
    query = encode(model, ["How much did revenue grow?"], "query")
    assert docs.shape == (2, 384) and np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4), docs.shape
    scores, ids = top_k(build_index(docs, use_gpu=False), query, k=2)
    assert ids[0].tolist() == [1, 0], f"FAISS ranked {ids[0].tolist()} for a revenue query"
    line = f"MiniLM + FAISS ranks the matching passage first ({scores[0][0]:.3f} > {scores[0][1]:.3f})"
    import faiss

    if variant == "gpu" and faiss.get_num_gpus() > 0:
        gpu_ids = top_k(build_index(docs, use_gpu=True), query, k=2)[1]
        assert gpu_ids[0].tolist() == [1, 0], gpu_ids
        line += "; same on the GPU"
    return line


def check_onnxruntime() -> str:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, 2, 3, 4, 5, 6])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "check", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = np.array([[1, -1, 2], [-3, 0, 1]], dtype=np.float32)
    got = sess.run(["y"], {"x": inp})[0]
    want = np.maximum(inp @ np.arange(1, 7, dtype=np.float32).reshape(3, 2), 0)
    assert np.allclose(got, want), (got, want)
    return f"onnxruntime {ort.__version__} MatMul+Relu matches numpy"


def check_torch(variant: str) -> str:
    import torch

    cuda = torch.version.cuda
    assert (cuda is not None) == (variant == "gpu"), f"torch {torch.__version__} (CUDA {cuda}) in the {variant} image"
    return f"torch {torch.__version__} (CUDA {cuda})"


def check_pipeline_imports() -> str:
    import kfp.dsl.executor_main  # noqa: F401  (KFP runs `python3 -m kfp.dsl.executor_main` in the image)
    import mlflow

    import embedforge.pipelines.pipeline  # noqa: F401

    return f"kfp executor, mlflow {mlflow.__version__}, embedforge pipeline import"


def check_documents() -> str:
    """The ``documents`` extra converts a Word file (the smallest one Word opens, written here)."""
    import zipfile

    from embedforge.stages.ingest.documents import missing_extra, read_document

    assert missing_extra() is None, f"the documents extra is incomplete: {missing_extra()} does not import"
    parts = {
        "[Content_Types].xml": '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        "_rels/.rels": '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Target="word/document.xml" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>',
        "word/document.xml": '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        "<w:body><w:p><w:r><w:t>Widgets ship on Mondays.</w:t></w:r></w:p></w:body></w:document>",
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.docx"
        with zipfile.ZipFile(path, "w") as zf:
            for name, xml in parts.items():
                zf.writestr(name, xml)
        pages = read_document(path).pages
    assert pages == ["Widgets ship on Mondays."], pages
    return f"documents extra: markitdown {md.version('markitdown')} reads a DOCX"


def check_writable_dirs() -> str:
    dirs = [Path.home(), Path(tempfile.gettempdir())] + [
        Path(os.environ[k]) for k in ("HF_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR") if k in os.environ]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d):
            pass
    return "writable: " + ", ".join(map(str, dirs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(FAISS_DISTS), required=True)
    variant = ap.parse_args(argv).variant
    for line in (check_single_faiss(variant), check_torch(variant), check_onnxruntime(),
                 check_model_and_index(variant), check_pipeline_imports(), check_documents(), check_writable_dirs()):
        print(f"ok  {line}")


if __name__ == "__main__":
    main()
