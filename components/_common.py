"""What every component shares: the image it runs in."""

import os

#: The container image holding embedforge and its dependencies (see images/Dockerfile). Override at compile
#: time with EMBEDFORGE_IMAGE=registry/embedforge:tag.
BASE_IMAGE = os.environ.get("EMBEDFORGE_IMAGE", "ghcr.io/embedforge/embedforge:0.1.0")
