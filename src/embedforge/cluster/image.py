"""The container image every compiled step and TrainJob node runs in, and the check that it can be pulled.

Nothing is published under :data:`DEFAULT_IMAGE`: it names the image ``make images`` builds, for kfp.local (which
runs the components in this interpreter and never pulls it) and for the reference YAML in ``pipelines/``. A cluster
needs the image you built and pushed (``make images REGISTRY=... PUSH=1`` prints its digest): ``embedforge compile``
for Kubernetes requires ``--image``, and ``embedforge submit`` refuses a package that still names the default.
``EMBEDFORGE_IMAGE`` at import time replaces the default everywhere.
"""

import os

from embedforge.errors import ConfigError

#: The tag ``make images`` gives the GPU variant (the compiled pipeline gives mine/train/evaluate a GPU).
DEFAULT_IMAGE = "ghcr.io/embedforge/embedforge:0.1.0-gpu"
#: The image the components name: ``$EMBEDFORGE_IMAGE``, else :data:`DEFAULT_IMAGE`.
BASE_IMAGE = os.environ.get("EMBEDFORGE_IMAGE", DEFAULT_IMAGE)


def is_digest_pinned(image: str) -> bool:
    """True for ``name@sha256:<64 hex>``: a reference that always names the same image bytes."""
    _, sep, digest = image.rpartition("@")
    hexpart = digest.removeprefix("sha256:")
    return bool(sep) and digest.startswith("sha256:") and len(hexpart) == 64 and all(
        c in "0123456789abcdef" for c in hexpart)


def check_published(image: str, where: str) -> None:
    """Raise a one-line ConfigError when ``image`` is the unpublished default (``where`` names what carries it)."""
    if image == DEFAULT_IMAGE:
        raise ConfigError(f"{where} runs the image {DEFAULT_IMAGE}, which is not published: build and push yours "
                          "(make images REGISTRY=your.registry/team PUSH=1) and compile with "
                          "--image your.registry/team/embedforge@sha256:...")
