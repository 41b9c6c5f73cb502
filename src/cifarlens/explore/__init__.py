"""``cifarlens explore``: a trained model in the browser. ``Explorer`` answers the pages; ``create_app`` serves it."""

from cifarlens.explore.app import create_app
from cifarlens.explore.explorer import Explorer

__all__ = ["Explorer", "create_app"]
