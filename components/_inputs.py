"""Inside a step: where it reads a pipeline input that may have come as an imported KFP artifact.

The compiled Kubernetes pipeline (``--inputs artifacts``) imports the corpus, a pairs file, an external BEIR
folder and a base model with ``dsl.importer`` when their URI parameter is set; when it is empty, a stand-in
component (``components/_stand_ins.py``) produces an artifact marked absent instead, so a step always has an
artifact on that input and :func:`local_path` tells it to fall back to its path/id parameter.

Imported inside component functions, so this module defines no component (under the KFP executor ``kfp.dsl`` is
the runtime subset, without ``dsl.component``) and needs nothing from kfp.
"""

from pathlib import Path
from typing import Any, Optional

#: Metadata key marking the stand-in artifact of an input that was not given.
ABSENT = "absent"


def local_path(artifact: Optional[Any], fallback: str) -> str:
    """Where this step reads an input: the artifact's local copy when one was imported, else ``fallback``.

    ``artifact`` is the step's optional ``dsl.Input`` (``None`` when unconnected: the embedded run and the
    ``--inputs pvc`` variant, which pass local or PVC paths in ``fallback``; an empty ``fallback`` = not given).
    """
    if artifact is None or artifact.metadata.get(ABSENT):
        return fallback
    return artifact.path


def mark_absent(artifact: Any) -> None:
    """Make ``artifact`` the stand-in of an input that was not given (metadata flag + one marker file, so every
    object store has something to upload and the consumer something to download)."""
    artifact.metadata[ABSENT] = True
    Path(artifact.path).mkdir(parents=True, exist_ok=True)
    (Path(artifact.path) / "ABSENT").write_text("no input given: the step uses its path/id parameter\n")
