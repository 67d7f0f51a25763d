"""Triton Python-backend models, copied into the model repository as ``model.py`` (not imported by embedforge)."""
