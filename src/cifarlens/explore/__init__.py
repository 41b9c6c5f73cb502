"""``cifarlens explore``: a trained model in the browser. ``Explorer`` answers the pages; ``create_app`` serves it.

Both load on first use, so that ``cifarlens --help`` does not import torch or FastAPI.
"""

__all__ = ["Explorer", "create_app"]


def __getattr__(name: str):
    if name == "Explorer":
        from cifarlens.explore.explorer import Explorer

        return Explorer
    if name == "create_app":
        from cifarlens.explore.app import create_app

        return create_app
    raise AttributeError(name)
