"""embedforge: domain-adapted embedding models from a folder of documents, as Kubeflow Pipelines components."""

__version__ = "0.1.0"
