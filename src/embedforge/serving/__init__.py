"""Serving on Triton: ``repository`` (the model repository promote publishes), ``rollout`` (load and check a
version on a live server), ``rollback`` (champion back to the previous version), ``client`` (embed texts through a
server) and ``backends/`` (the Python-backend models copied into the repository)."""

from embedforge._legacy import moved_attribute

__getattr__ = moved_attribute(__name__, "embedforge.serving.rollout")
