"""How the pipeline's four inputs (corpus, pairs file, external BEIR set, base model) reach the steps.

Two routes, chosen when compiling (``embedforge compile --inputs artifacts|pvc``):

* ``artifacts`` (the default for Kubernetes): the run takes URIs (``corpus_uri``, ``pairs_uri``,
  ``eval_beir_uri``, ``base_model_uri``: ``s3://``, ``gs://``, ``minio://``) and :func:`import_inputs` brings each
  one in with ``dsl.importer``. Every step that needs an input gets it as an input artifact: the KFP launcher
  copies it into that step's pod, the KFP UI shows the lineage, and the cache keys on the imported artifact
  instead of on a path string whose contents may have changed. An optional input whose URI is empty is replaced
  (``dsl.If``/``dsl.Else`` + ``dsl.OneOf``) by a stand-in artifact marked absent (``components/_stand_ins.py``).
* ``pvc`` (and the embedded ``embedforge run``): the run takes paths (``corpus_path``, ``pairs_file``,
  ``eval_beir``, ``base_model``) on the data volume, and every step that reads one mounts that volume.
"""

from dataclasses import dataclass
from typing import Any, Optional

from embedforge.components._stand_ins import no_dataset, no_model
from kfp import dsl

ARTIFACTS, PVC = "artifacts", "pvc"
INPUT_ROUTES = (ARTIFACTS, PVC)

#: Pipeline parameters of each route that name an input (the first one is required). On the artifacts route the
#: base model is a folder imported from ``base_model_uri`` or, when that is empty, the model id ``base_model_id``
#: (one the image ships, e.g. the bundled all-MiniLM-L6-v2: the image sets HF_HUB_OFFLINE=1), never a path.
URI_PARAMETERS = ("corpus_uri", "pairs_uri", "eval_beir_uri", "base_model_uri")
PATH_PARAMETERS = ("corpus_path", "pairs_file", "eval_beir", "base_model")
BASE_MODEL_ID = "base_model_id"


@dataclass(frozen=True)
class Inputs:
    """What the steps receive for each input: a path/id parameter and, on the artifacts route, an artifact.

    On the artifacts route the path parameters are "" (``base_model`` is ``base_model_id``, used when no
    ``base_model_uri`` is given); on the path route the artifacts are ``None`` (the optional component inputs stay
    unconnected).
    """

    corpus_path: Any
    pairs_file: Any
    eval_beir: Any
    base_model: Any
    corpus: Optional[Any] = None
    pairs: Optional[Any] = None
    eval_beir_data: Optional[Any] = None
    base_model_files: Optional[Any] = None
    #: The stand-in tasks (container steps like the others: the Kubernetes settings apply to them too).
    stand_ins: tuple = ()


def _import(uri, artifact_class: type, name: str):
    """A ``dsl.importer`` task for ``uri``: ``reimport=False`` reuses the artifact already recorded for the URI."""
    return dsl.importer(artifact_uri=uri, artifact_class=artifact_class, reimport=False).set_display_name(
        f"import-{name}").output


def _import_optional(uri, artifact_class: type, name: str) -> tuple:
    """(the imported artifact when ``uri`` is set, else the absent stand-in's: one artifact either way; the
    stand-in task)."""
    with dsl.If(uri != "", name=f"{name}-given"):
        imported = _import(uri, artifact_class, name)
    with dsl.Else(name=f"{name}-not-given"):
        stand_in = (no_model() if artifact_class is dsl.Model else no_dataset()).set_display_name(f"no-{name}")
    return dsl.OneOf(imported, stand_in.outputs["absent"]), stand_in


def import_inputs(corpus_uri, pairs_uri, eval_beir_uri, base_model_uri, base_model) -> Inputs:
    """Import the inputs given as URIs (inside the pipeline function); ``base_model`` is the fallback model id."""
    pairs, pairs_stand_in = _import_optional(pairs_uri, dsl.Dataset, "pairs")
    eval_beir, eval_beir_stand_in = _import_optional(eval_beir_uri, dsl.Dataset, "eval-beir")
    base, base_stand_in = _import_optional(base_model_uri, dsl.Model, "base-model")
    return Inputs(
        corpus_path="", pairs_file="", eval_beir="", base_model=base_model,
        corpus=_import(corpus_uri, dsl.Dataset, "corpus"), pairs=pairs, eval_beir_data=eval_beir,
        base_model_files=base, stand_ins=(pairs_stand_in, eval_beir_stand_in, base_stand_in),
    )
