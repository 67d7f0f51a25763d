"""The shape of the code base, as rules: the folders are the architecture, and imports only point down.

Layers of ``src/embedforge`` (a module may import its own layer or lower ones, never a higher one):

====  ==================================================================  ============================================
0     ``errors names redact disk locks signals _legacy sample_corpus``    small helpers every layer may use
1     ``config/ contracts/ workstore``                                    the typed config and the stage hand-offs
2     ``retrieval/ onnx/ registry/ serving/ cluster/``                    libraries the stages share
3     ``stages/``                                                         one unit per stage; no stage imports another
4     ``local/``                                                          the embedded driver (kfp.local)
5     ``cli``                                                             the command line
====  ==================================================================  ============================================

Besides: no import cycle (module level or inside functions); the library never imports ``components/``, and only
the drivers (``cli``, ``local/``) import ``pipelines/``; components import only stdlib, kfp and
``embedforge.components`` at module top (the library inside the function body, which runs in the image); every
stage has a ``run`` that returns its :class:`~embedforge.contracts.Manifest`. Module length is not a rule: a long
module that holds one concept is fine, a short one that mixes two is not.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "embedforge"

LAYERS = {
    "errors": 0, "names": 0, "redact": 0, "disk": 0, "locks": 0, "signals": 0, "_legacy": 0, "sample_corpus": 0, "": 0,
    "config": 1, "contracts": 1, "workstore": 1,
    "retrieval": 2, "onnx": 2, "registry": 2, "serving": 2, "cluster": 2,
    "stages": 3,
    "local": 4,
    "cli": 5,
}
#: The drivers: the only library modules that build or run the pipeline definition.
DRIVERS = ("cli", "local")
STAGES = ("ingest", "sdg", "validate", "mine", "train", "evaluate", "export", "register", "gate", "promote", "report")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """Dotted names ``name`` imports (module level and inside functions, unless ``top_level_only``); embedforge
    names are resolved to the module that holds them."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("embedforge.components") or t.startswith("embedforge.pipelines") or not t.startswith("embedforge"):
                found.add(t)
                continue
            while t and t not in MODULES:  # `import embedforge.x.y` of a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _area(module: str) -> str:
    """The top-level folder (or module) of ``embedforge.<area>...``; '' for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" else None


def test_every_area_has_a_layer():
    unknown = sorted({_area(m) for m in MODULES} - LAYERS.keys())
    assert not unknown, f"new top-level modules/folders {unknown}: give them a layer in LAYERS (and docs/architecture.md)"


def test_no_import_cycles():
    graph = {n: {t for t in deps if t in MODULES} for n, deps in GRAPH.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_only_point_down():
    upward = [f"{m} (layer {LAYERS[_area(m)]}) imports {t} (layer {LAYERS[_area(t)]})"
              for m, deps in GRAPH.items() for t in deps
              if t in MODULES and LAYERS[_area(t)] > LAYERS[_area(m)]]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_stage_imports_another_stage():
    crossing = [f"{m} imports {t}" for m, deps in GRAPH.items() for t in deps
                if t in MODULES and _stage(m) and _stage(t) and _stage(m) != _stage(t)]
    assert not crossing, ("a stage uses another stage; move what they share to retrieval/, onnx/, registry/, "
                          "serving/ or contracts/:\n" + "\n".join(sorted(crossing)))


def test_the_library_never_imports_components_and_only_drivers_import_pipelines():
    bad = []
    for m, deps in GRAPH.items():
        for t in deps:
            if t.startswith("embedforge.components"):
                bad.append(f"{m} imports {t}")
            elif t.startswith("embedforge.pipelines") and _area(m) not in DRIVERS:
                bad.append(f"{m} imports {t} (only {', '.join(DRIVERS)} build or run the pipeline)")
    assert not bad, "\n".join(sorted(bad))


def test_components_import_only_stdlib_and_kfp_at_module_top():
    stdlib = sys.stdlib_module_names
    bad = []
    for path in sorted((REPO / "components").rglob("*.py")):
        name = "embedforge.components." + ".".join(path.relative_to(REPO / "components").with_suffix("").parts)
        for t in _imports(name, path, top_level_only=True):
            root = t.split(".")[0]
            if root in stdlib or root == "kfp" or t.startswith("embedforge.components") or t == "__future__":
                continue
            if t == "embedforge.cluster.image" and path.name == "_common.py":  # the image every component names
                continue
            bad.append(f"{path.relative_to(REPO)} imports {t} at module top")
    assert not bad, "import the library inside the component function (it runs in the image):\n" + "\n".join(bad)


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "report"])
def test_every_stage_has_the_same_run_shape(stage):
    """``run(<input folders...>, out_dir, cfg, *context) -> Manifest``: what the stage reads, where it writes, its
    typed config section, then what it needs from the run (base model, tracking URI, ...). (``report`` is not such
    a stage: it renders the others' artifacts into one HTML file and writes no manifest.)"""
    from embedforge.config.base import StageConfig
    from embedforge.contracts import Manifest

    module = importlib.import_module(f"embedforge.stages.{stage}")
    assert callable(getattr(module, "run", None)), f"embedforge.stages.{stage} has no run()"
    hints = typing.get_type_hints(module.run)
    assert hints.get("return") is Manifest, f"embedforge.stages.{stage}.run returns {hints.get('return')}, not Manifest"
    params = list(inspect.signature(module.run).parameters)
    assert "out_dir" in params and params.index("out_dir") >= 1, f"embedforge.stages.{stage}.run{params}"
    cfg = params[params.index("out_dir") + 1]
    assert cfg == "cfg" and issubclass(hints["cfg"], StageConfig), f"embedforge.stages.{stage}.run{params}: cfg after out_dir"


def test_stage_folders_are_the_stages():
    found = {p.stem if p.suffix == ".py" else p.name for p in (PACKAGE / "stages").iterdir()
             if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert found == set(STAGES)
