"""The web layer of ``cifarlens explore``: routes to ``Explorer`` methods, nothing else.

Pages (one HTML file, switched in the browser)::

    GET  /                                  the app (static/index.html; its JS and CSS from static/)
    GET  /vendor/plotly.min.js              Plotly, from the installed ``plotly`` wheel (no CDN: works offline)

JSON (errors are ``{"detail": "..."}``: 404 for a run, image, class or layer that is not there, 400 for a
bad option, 413/415/400 for uploads as ``cifarlens serve``)::

    GET  /api/info                          runs, split, classes, layers, attribution methods
    GET  /api/runs/{r}/overview             config, headline accuracy, per-class table, curves
    GET  /api/runs/{r}/confusion            counts, true class x predicted class
    GET  /api/runs/{r}/cell?true=&predicted=  that cell's images, most confident first
    GET  /api/disagreements                 with two runs: right in one, wrong in the other
    GET  /api/runs/{r}/map?layer=&method=   2-D projection of the split's features (pca, tsne, umap)
    GET  /api/images/{index}.png?scale=4    a thumbnail, nearest-neighbour enlarged
    GET  /api/runs/{r}/images/{index}?methods=a,b&layer=   top-5, attribution overlays, feature maps
    POST /api/runs/{r}/upload?methods=&layer=              the same for an uploaded image file
    GET  /api/runs/{r}/channels?layer=&channels=0-7&k=8   activation-maximisation image + top images per channel

No endpoint takes a path: the runs are the ones named on the command line, the images those of their split.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from cifarlens.data.image_files import DEFAULT_MAX_PIXELS
from cifarlens.deploy.serve import DEFAULT_MAX_BYTES, read_image_upload
from cifarlens.errors import CifarlensError
from cifarlens.explore.explorer import Explorer, NotFound

STATIC = {"explore.js": "text/javascript", "explore.css": "text/css"}


def static_text(name: str) -> str:
    return resources.files("cifarlens.explore").joinpath("static", name).read_text(encoding="utf-8")


def plotly_js() -> bytes:
    """plotly.min.js as the ``plotly`` wheel ships it."""
    return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()


def create_app(
    explorer: Explorer, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> FastAPI:
    """The FastAPI application that serves ``explorer``: the page and its files, and the JSON API."""
    app = FastAPI(title="cifarlens explore", version="1", docs_url=None, redoc_url=None)
    _add_page(app)
    _add_run_api(app, explorer)
    _add_image_api(app, explorer, max_bytes=max_bytes, max_pixels=max_pixels)
    return app


def _answer(call, *args, **kwargs) -> Any:
    """``call(*args, **kwargs)``, a missing thing as 404 and a bad option (unknown method or layer ...) as 400."""
    try:
        return call(*args, **kwargs)
    except NotFound as err:
        raise HTTPException(404, str(err)) from None
    except CifarlensError as err:
        raise HTTPException(400, str(err)) from None


@functools.lru_cache(maxsize=1)
def _plotly_bytes() -> bytes:
    return plotly_js()


def _add_page(app: FastAPI) -> None:
    """The single page, its static files and the vendored plotly.js."""

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return static_text("index.html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(static_text(name), media_type=STATIC[name])

    @app.get("/vendor/plotly.min.js")
    def plotly() -> Response:
        return Response(_plotly_bytes(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)


def _add_run_api(app: FastAPI, explorer: Explorer) -> None:
    """What each run shows: overview, confusion cells, disagreements between runs, the 2-D map, channels."""

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return _answer(explorer.info)

    @app.get("/api/runs/{r}/overview")
    def overview(r: int) -> dict[str, Any]:
        return _answer(explorer.overview, r)

    @app.get("/api/runs/{r}/confusion")
    def confusion(r: int) -> dict[str, Any]:
        return _answer(explorer.confusion, r)

    @app.get("/api/runs/{r}/cell")
    def cell(r: int, true: int, predicted: int) -> dict[str, Any]:
        return _answer(explorer.cell, r, true, predicted)

    @app.get("/api/disagreements")
    def disagreements() -> dict[str, Any]:
        return _answer(explorer.disagreements)

    @app.get("/api/runs/{r}/map")
    def projection(r: int, layer: str | None = None, method: str = "pca") -> dict[str, Any]:
        return _answer(explorer.projection, r, layer=layer, method=method)

    @app.get("/api/runs/{r}/robustness")
    def robustness(r: int, key: str | None = None) -> dict[str, Any]:
        return _answer(explorer.robustness, r, key)

    @app.get("/api/runs/{r}/robustness/flipped")
    def robustness_flipped(
        r: int, key: str, corruption: str, severity: int, method: str | None = None
    ) -> dict[str, Any]:
        return _answer(explorer.robustness_flipped, r, key=key, corruption=corruption, severity=severity, method=method)

    @app.get("/api/runs/{r}/calibration")
    def calibration(r: int) -> dict[str, Any]:
        return _answer(explorer.calibration, r)

    @app.get("/api/runs/{r}/channels")
    def channels(
        r: int, layer: str | None = None, channels: str = "0-7", k: int = Query(8, ge=1, le=32)
    ) -> dict[str, Any]:
        return _answer(explorer.channels, r, layer=layer, channels=channels, k=k)


def _add_image_api(app: FastAPI, explorer: Explorer, *, max_bytes: int, max_pixels: int) -> None:
    """One image: a thumbnail, and a run's prediction, attributions and feature maps of a split image or an upload."""

    @app.get("/api/images/{index}.png")
    def thumbnail(index: int, scale: int = Query(4, ge=1, le=16)) -> Response:
        return Response(
            _answer(explorer.thumbnail, index, scale), media_type="image/png", headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/api/runs/{r}/images/{index}")
    def explain_image(r: int, index: int, methods: str = "", layer: str | None = None) -> dict[str, Any]:
        image = _answer(explorer.image, index)
        return _answer(explorer.explain, r, image, methods=_names(methods), layer=layer, index=index)

    @app.post("/api/runs/{r}/upload")
    async def upload(request: Request, r: int, methods: str = "", layer: str | None = None) -> dict[str, Any]:
        _answer(explorer.run, r)
        image = torch.from_numpy(await read_image_upload(request, max_bytes=max_bytes, max_pixels=max_pixels))
        return await run_in_threadpool(_answer, explorer.explain, r, image, methods=_names(methods), layer=layer)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def serve(explorer: Explorer, host: str, port: int, **kwargs: Any) -> None:
    """Run the explorer with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(explorer, **kwargs), host=host, port=port, log_level="warning")
