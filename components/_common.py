"""What every component shares: the image it runs in (defined by the library, :mod:`embedforge.cluster.image`)."""

from embedforge.cluster.image import BASE_IMAGE

__all__ = ["BASE_IMAGE"]
