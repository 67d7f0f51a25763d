"""embedforge: domain-adapted embedding models from a folder of documents, as Kubeflow Pipelines components.

The package is arranged by architecture (docs/architecture.md): ``stages/`` (one unit per pipeline stage),
``retrieval/``, ``onnx/``, ``registry/``, ``serving/`` (shared libraries the stages use), ``local/`` (the embedded
path: kfp.local) and ``cluster/`` (the Kubernetes path), over ``config/`` and ``contracts/``.
"""

from embedforge import _legacy

__version__ = "0.1.0"

_legacy.install()
