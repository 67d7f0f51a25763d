"""The container image every compiled step and TrainJob node runs in.

The tag below is only a default: ``embedforge compile --image REGISTRY/embedforge@sha256:...`` (or
``EMBEDFORGE_IMAGE`` at import time) pins every step to one digest, so the KFP cache key, which covers the
container image, changes whenever the image does.
"""

import os

#: The image holding embedforge and its dependencies (images/Dockerfile; the GPU variant, as the compiled
#: Kubernetes pipeline gives mine/train/evaluate a GPU).
BASE_IMAGE = os.environ.get("EMBEDFORGE_IMAGE", "ghcr.io/embedforge/embedforge:0.1.0-gpu")


def is_digest_pinned(image: str) -> bool:
    """True for ``name@sha256:<64 hex>``: a reference that always names the same image bytes."""
    _, sep, digest = image.rpartition("@")
    hexpart = digest.removeprefix("sha256:")
    return bool(sep) and digest.startswith("sha256:") and len(hexpart) == 64 and all(
        c in "0123456789abcdef" for c in hexpart)
