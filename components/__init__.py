"""KFP component definitions, one folder per stage (installed as ``embedforge.components``).

Each ``<stage>/component.py`` is a thin ``@dsl.component``: it parses the stage's config dict with the
stage's pydantic model, calls the library (``embedforge.<stage>``) and writes KFP artifacts. Only stdlib and
kfp are imported at module top; the library is imported inside the function, which runs in our image
(``base_image``) on Kubernetes and in this interpreter under ``kfp.local.SubprocessRunner(use_venv=False)``.
"""
