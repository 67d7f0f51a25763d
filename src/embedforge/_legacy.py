"""Old module paths, kept importable for one release after the package was arranged by architecture.

Pipelines compiled before the move import ``from embedforge import ingest as stage``; models registered before it
name ``embedforge.mlflow_pyfunc`` as their MLflow loader. :class:`LegacyFinder` resolves every old dotted path in
:data:`MOVED` (and anything below it, e.g. ``embedforge.train.driver``) to the module at its new home, and warns
once per old name with a :class:`DeprecationWarning` that names the new path. Nothing is imported until an old
name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Old dotted path -> new dotted path.
MOVED: dict[str, str] = {
    "embedforge.ingest": "embedforge.stages.ingest",
    "embedforge.readers": "embedforge.stages.ingest.readers",
    "embedforge.sdg": "embedforge.stages.sdg",
    "embedforge.sdg.llm.pipeline": "embedforge.stages.sdg.llm.generate",
    "embedforge.validate": "embedforge.stages.validate",
    "embedforge.mine": "embedforge.stages.mine",
    "embedforge.train": "embedforge.stages.train",
    "embedforge.evaluate": "embedforge.stages.evaluate",
    "embedforge.export": "embedforge.stages.export",
    "embedforge.registry": "embedforge.stages.register",
    "embedforge.gate": "embedforge.stages.gate",
    "embedforge.promote": "embedforge.stages.promote",
    "embedforge.report": "embedforge.stages.report",
    "embedforge.report_svg": "embedforge.stages.report.svg",
    "embedforge.report_stats": "embedforge.retrieval.stats",
    "embedforge.encode": "embedforge.retrieval.encode",
    "embedforge.models": "embedforge.retrieval.loading",
    "embedforge.search": "embedforge.retrieval.search",
    "embedforge.retrieval": "embedforge.retrieval.ranking",
    "embedforge.beir": "embedforge.retrieval.beir",
    "embedforge.text": "embedforge.retrieval.text",
    "embedforge.onnx_signature": "embedforge.onnx.signature",
    "embedforge.parity": "embedforge.onnx.parity",
    "embedforge.export_variants": "embedforge.onnx.variants",
    "embedforge.mlflow_model": "embedforge.registry.model",
    "embedforge.mlflow_pyfunc": "embedforge.registry.pyfunc",
    "embedforge.registry_recovery": "embedforge.registry.recovery",
    "embedforge.provenance": "embedforge.registry.provenance",
    "embedforge.triton": "embedforge.serving.repository",
    "embedforge.serving": "embedforge.serving.rollout",
    "embedforge.rollback": "embedforge.serving.rollback",
    "embedforge.client": "embedforge.serving.client",
    "embedforge.triton_onnx_model": "embedforge.serving.backends.onnx_model",
    "embedforge.triton_tokenizer_model": "embedforge.serving.backends.tokenizer_model",
    "embedforge.runner": "embedforge.local.runner",
    "embedforge.resume": "embedforge.local.resume",
    "embedforge.kfp_local": "embedforge.local.kfp_local",
    "embedforge.interrupts": "embedforge.local.interrupts",
    "embedforge.trainjob": "embedforge.cluster.trainjob",
    "embedforge.submit": "embedforge.cluster.submit",
    "embedforge.config.stages": "embedforge.config.pipeline",
}

#: Old names that are also new packages (``embedforge.retrieval``, ``embedforge.registry``, ``embedforge.serving``):
#: ``from embedforge import registry`` gets the new package; only attribute access the package lacks falls back.
_SHADOWED = {old for old in MOVED if old in {"embedforge.retrieval", "embedforge.registry", "embedforge.serving"}}


#: The old paths a finder resolves, longest first (so ``embedforge.sdg.llm.pipeline`` wins over ``embedforge.sdg``).
_PREFIXES = sorted((old for old in MOVED if old not in _SHADOWED), key=len, reverse=True)


def new_name(old: str) -> str | None:
    """The new dotted path for ``old`` (an old module or anything below one), or None if it did not move."""
    for prefix in _PREFIXES:
        if old == prefix or old.startswith(prefix + "."):
            return MOVED[prefix] + old[len(prefix):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Resolves an old module path to the module at its new path (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("embedforge."):
            return None
        target_name = new_name(fullname)
        if target_name is None:
            return None
        warnings.warn(f"{fullname} moved to {target_name}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(target_name))


def install() -> None:
    """Put :class:`LegacyFinder` first on ``sys.meta_path``, once. First, because an old package path's submodules
    (``embedforge.train.driver``) would otherwise be found by the regular finder in the new folder and loaded a
    second time under the old name."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LegacyFinder())


def moved_attribute(package: str, old_module: str):
    """A module ``__getattr__`` for a new package that has the same name as an old module: ``from embedforge import
    registry as stage; stage.run(...)`` (a pipeline compiled before the move) finds ``run`` in ``old_module``."""

    def __getattr__(name: str):
        # A submodule of the new package not imported yet is not a moved attribute: `from package import sub`
        # asks here first, then imports the submodule on AttributeError.
        if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(name)
        module = importlib.import_module(old_module)
        try:
            value = getattr(module, name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        warnings.warn(f"{package}.{name} moved to {old_module}.{name}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
