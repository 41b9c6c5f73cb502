"""cifarlens serve: the real command on a loopback port, driven by a real HTTP client (httpx)."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from PIL import Image

from cifarlens import run as rundir
from cifarlens.models import create_model

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_BYTES = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``cifarlens serve`` on 127.0.0.1 with a small tutorial net; stopped after the module."""
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("serve") / "tutorial.safetensors"
    spec = rundir.ModelSpec("tutorial", {}, 10, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    rundir.save_weights(create_model("tutorial"), spec, weights)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cifarlens.cli",
            "serve",
            str(weights),
            "--port",
            str(port),
            "--max-bytes",
            str(MAX_BYTES),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # up to 60 s for the imports and the model on a busy machine
            if proc.poll() is not None:
                pytest.fail("server exited: " + proc.stdout.read())
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        else:
            pytest.fail("server did not answer /health within 60 s")
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_health_names_model_and_classes(server):
    body = server.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "tutorial" and body["backend"] == "torch"
    assert body["classes"] == list(CLASSES)


def test_post_image_returns_top_k(server):
    raw = server.post("/predict?top_k=4", content=png_bytes(), headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["class"] in CLASSES and len(body["top_k"]) == 4
    probs = [t["probability"] for t in body["top_k"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    form = server.post("/predict", files={"file": ("x.png", png_bytes(), "image/png")})
    assert form.status_code == 200 and form.json()["class"] == body["class"]  # same image, same answer


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
        ({"content": b"not an image at all", "headers": {"content-type": "image/jpeg"}}, 400, "not an image"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"content": png_bytes()[:50], "headers": {"content-type": "image/png"}}, 400, "truncated"),
        ({"content": b"x" * (MAX_BYTES + 1), "headers": {"content-type": "image/png"}}, 413, "over the limit"),
        ({"files": {"other": ("x.png", b"abc", "image/png")}}, 400, "no file field"),
    ],
)
def test_bad_requests_get_clear_4xx(server, kwargs, status, fragment):
    response = server.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_chunked_upload_is_cut_off_at_the_limit(server):
    def chunks():
        for _ in range(10):
            yield b"y" * (MAX_BYTES // 4)

    response = server.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413


def test_bad_top_k_is_422(server):
    response = server.post("/predict?top_k=0", content=png_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert "top_k" in response.text
