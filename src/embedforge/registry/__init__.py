"""The MLflow model registry, as every stage and command uses it.

``mlflow`` (tracking URI, client, experiments, params and metrics), ``aliases`` (the champion lookup and the
compare-then-set alias move), ``model`` and ``pyfunc`` (the MLflow Model a version holds), ``recovery`` (runs left
half-registered by an interrupted process), ``provenance`` (what a version records about how it was made).
"""

from embedforge._legacy import moved_attribute

__getattr__ = moved_attribute(__name__, "embedforge.stages.register")
