"""Old import paths keep working for one release (embedforge._legacy): pipelines compiled before the package was
arranged by architecture run their component code against the new image, and users' scripts keep importing."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from embedforge import _legacy

#: The library imports the component code of a pipeline compiled before the move executes (its YAML embeds them).
COMPILED_BEFORE = [
    ("from embedforge import ingest as stage", "stage", "embedforge.stages.ingest"),
    ("from embedforge import sdg as stage", "stage", "embedforge.stages.sdg"),
    ("from embedforge import validate as stage", "stage", "embedforge.stages.validate"),
    ("from embedforge import mine as stage", "stage", "embedforge.stages.mine"),
    ("from embedforge import train as stage", "stage", "embedforge.stages.train"),
    ("from embedforge import evaluate as stage", "stage", "embedforge.stages.evaluate"),
    ("from embedforge import export as stage", "stage", "embedforge.stages.export"),
    ("from embedforge import gate as stage", "stage", "embedforge.stages.gate"),
    ("from embedforge import promote as stage", "stage", "embedforge.stages.promote"),
    ("from embedforge import report as stage", "stage", "embedforge.stages.report"),
    ("from embedforge import trainjob", "trainjob", "embedforge.cluster.trainjob"),
    ("from embedforge.provenance import effective_params", "effective_params", "embedforge.registry.provenance"),
]


def _fresh(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (a component's process): nothing imported beforehand."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("statement,name,new", COMPILED_BEFORE)
def test_a_pipeline_compiled_before_the_move_finds_its_stage(statement, name, new):
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(statement, ns)
    obj = ns[name]
    module = importlib.import_module(new)
    assert obj is module or getattr(obj, "__module__", "").startswith(new) or obj is getattr(module, name, None)


def test_the_old_names_of_new_packages_still_give_their_old_functions():
    """``registry``, ``retrieval`` and ``serving`` were modules and are now packages: the old module's names
    are found on the package, with a DeprecationWarning naming the new path."""
    import embedforge.registry
    import embedforge.retrieval
    import embedforge.serving
    from embedforge.retrieval.ranking import build_eval_set
    from embedforge.serving.rollout import roll_out
    from embedforge.stages.register import run as register_run

    with pytest.warns(DeprecationWarning, match="embedforge.stages.register.run"):
        assert embedforge.registry.run is register_run
    with pytest.warns(DeprecationWarning, match="embedforge.retrieval.ranking"):
        assert embedforge.retrieval.build_eval_set is build_eval_set
    with pytest.warns(DeprecationWarning, match="embedforge.serving.rollout"):
        assert embedforge.serving.roll_out is roll_out
    with pytest.raises(AttributeError):
        embedforge.registry.no_such_name  # noqa: B018


def test_old_module_paths_are_the_new_modules_and_warn_once_imported_fresh():
    r = _fresh("import warnings\nwith warnings.catch_warnings(record=True) as seen:\n"
               "    warnings.simplefilter('always')\n    import embedforge.mine\n"
               "print([str(w.message) for w in seen if w.category is DeprecationWarning])")
    assert r.returncode == 0, r.stderr
    assert "embedforge.mine moved to embedforge.stages.mine" in r.stdout
    r = _fresh("import warnings; warnings.simplefilter('ignore');"
               "import embedforge.mine, embedforge.stages.mine, embedforge.train.driver, embedforge.stages.train.driver,"
               "embedforge.sdg.llm.pipeline, embedforge.stages.sdg.llm.generate;"
               "assert embedforge.mine is embedforge.stages.mine;"
               "assert embedforge.train.driver is embedforge.stages.train.driver;"
               "assert embedforge.sdg.llm.pipeline is embedforge.stages.sdg.llm.generate;"
               "from embedforge.mlflow_pyfunc import ONNX_ARTIFACT;"
               "from embedforge.train import launch, run; assert launch is run")
    assert r.returncode == 0, r.stderr


def test_every_old_path_has_a_new_home_that_imports():
    for old, new in _legacy.MOVED.items():
        if new.startswith("embedforge.serving.backends."):  # Triton model.py files: they import triton_python_backend_utils
            continue
        importlib.import_module(new)
        assert _legacy.new_name(old) in (new, None), old
    assert _legacy.new_name("embedforge.stages.mine") is None  # new paths are never rewritten
    assert _legacy.new_name("embedforge.registry.mlflow") is None
