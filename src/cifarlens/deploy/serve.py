"""``cifarlens serve``: a small HTTP API around a classifier (FastAPI + uvicorn).

Endpoints::

    GET  /health              {"status": "ok", "model": ..., "backend": ..., "classes": [...]}
    POST /predict?top_k=3     body: the image file itself, Content-Type image/* (or
                              application/octet-stream), or multipart/form-data with a field "file"
                              -> {"class": ..., "probability": ..., "top_k": [{"class", "probability"}, ...]}

Errors are JSON ``{"detail": "..."}`` with 400 (unreadable image), 411 (no length on a
multipart upload), 413 (body over ``max_bytes``), 415 (content type) or 422 (bad top_k).
The body is read in chunks and cut off at ``max_bytes``, so a huge upload never sits in memory.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from cifarlens.data.image_files import DEFAULT_MAX_PIXELS, ImageFileError, load_image
from cifarlens.deploy.predict import top_k as top_k_classes
from cifarlens.deploy.runtime import Classifier

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
RAW_TYPES = ("application/octet-stream",)


def create_app(
    classifier: Classifier, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> FastAPI:
    """The FastAPI application serving ``classifier``."""
    app = FastAPI(title="cifarlens", description="CIFAR-10 image classification", version="1")
    lock = threading.Lock()  # one forward pass at a time: torch modules are not re-entrant across threads

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": classifier.info.get("model"),
            "backend": classifier.backend,
            "classes": list(classifier.classes),
        }

    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(3, ge=1, le=len(classifier.classes))) -> dict[str, Any]:
        image = await read_image_upload(request, max_bytes=max_bytes, max_pixels=max_pixels)

        def classify() -> list[tuple[str, float]]:
            with lock:
                return top_k_classes(classifier, image[np.newaxis], top_k)[0]

        top = await run_in_threadpool(classify)
        return {
            "class": top[0][0],
            "probability": top[0][1],
            "top_k": [{"class": c, "probability": p} for c, p in top],
        }

    return app


async def read_image_upload(request: Request, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """The image a request uploads (its body, Content-Type image/* or octet-stream, or multipart field "file"),
    read as ``cifarlens predict`` reads files: uint8 (3, 32, 32). HTTP errors 400, 411, 413 and 415 as above."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        data = await _multipart_file(request, max_bytes)
    elif content_type.startswith("image/") or content_type in RAW_TYPES:
        data = await _bounded_body(request, max_bytes)
    else:
        raise HTTPException(
            415,
            f"unsupported content type {content_type or '(none)'!r}; send the image file with Content-Type "
            "image/jpeg, image/png ... or as multipart/form-data field 'file'",
        )
    try:
        return await run_in_threadpool(load_image, data, max_pixels=max_pixels, name="image")
    except ImageFileError as err:
        raise HTTPException(400, str(err)) from None


def _declared_length(request: Request, max_bytes: int) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise HTTPException(400, f"invalid Content-Length {value!r}")
    if int(value) > max_bytes:
        raise HTTPException(413, f"request body of {int(value):,} bytes is over the limit of {max_bytes:,} bytes")
    return int(value)


async def _bounded_body(request: Request, max_bytes: int) -> bytes:
    _declared_length(request, max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads have no Content-Length: count as we read
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"request body is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    if not size:
        raise HTTPException(400, "empty request body; send the image file as the body")
    return b"".join(chunks)


async def _multipart_file(request: Request, max_bytes: int) -> bytes:
    if _declared_length(request, max_bytes) is None:
        raise HTTPException(411, "multipart uploads need a Content-Length header")
    form = await request.form(max_files=1, max_fields=10, max_part_size=max_bytes)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "multipart form has no file field 'file'")
    return await upload.read()


def serve(classifier: Classifier, host: str, port: int, **kwargs: Any) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(classifier, **kwargs), host=host, port=port, log_level="info")
