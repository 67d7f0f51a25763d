"""The embedded path: ``runner`` (the pipeline on kfp.local, summary and output folder), ``resume`` (reuse of
finished stages), ``kfp_local`` (kfp.local's runner made safe for any path) and ``interrupts`` (MLflow cleanup after Ctrl-C)."""
