"""cifarlens explore: the Explorer library on a trained run, the real server process over HTTP, and the pages
in a real headless Chromium (Playwright, as the report test). Screenshots go to tests/artifacts/explore/
(or $CIFARLENS_TEST_ARTIFACTS)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cifarlens
from PIL import Image

from cifarlens.config import build_config
from cifarlens.errors import CifarlensError, ConfigError
from cifarlens.explore.explorer import Explorer, NotFound
from cifarlens.run import RunDir
from cifarlens.training import TrainConfig, recipe_options, train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = Path(os.environ.get("CIFARLENS_TEST_ARTIFACTS", Path(__file__).parent / "artifacts")) / "explore"


@pytest.fixture(scope="module")
def second_run(cifar_root, tmp_path_factory):
    """Another tutorial net on the same synthetic data (other seed, one epoch): a run to compare with."""
    out = tmp_path_factory.mktemp("explore") / "other"
    options = {
        "model": "tutorial",
        "epochs": 1,
        "batch_size": 25,
        "optimizer": "sgd",
        "lr": 0.05,
        "augment": "flip",
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(out),
        "precision": "fp32",
        "evaluate": False,
        "channels_last": False,
        "threads": 1,
        "seed": 1,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(build_config(TrainConfig, recipe_options("seed"), options))


@pytest.fixture(scope="module")
def explorer(run_dir, second_run):
    return Explorer([run_dir, second_run])


def test_confusion_cells_hold_exactly_their_images_most_confident_first(explorer):
    probs = explorer.probabilities(0)
    truth, predicted = explorer.labels.numpy(), probs.argmax(1)
    matrix = np.array(explorer.confusion(0)["matrix"])
    assert matrix.sum() == len(truth) == 100 and np.trace(matrix) == (truth == predicted).sum()
    t, p = np.unravel_index(np.argmax(matrix), matrix.shape)
    cell = explorer.cell(0, int(t), int(p))
    indices = [row["index"] for row in cell["images"]]
    assert cell["count"] == matrix[t, p] == len(indices)
    assert set(indices) == set(np.flatnonzero((truth == t) & (predicted == p)))
    confidence = [row["confidence"] for row in cell["images"]]
    assert confidence == sorted(confidence, reverse=True)
    with pytest.raises(NotFound, match="no class 10"):
        explorer.cell(0, 10, 0)


def test_two_runs_disagreements_are_right_in_one_and_wrong_in_the_other(explorer):
    d = explorer.disagreements()
    truth = explorer.labels.numpy()
    right = [explorer.probabilities(r).argmax(1) == truth for r in (0, 1)]
    assert [row["index"] for row in d["only_first"]] and all(
        right[0][row["index"]] and not right[1][row["index"]] for row in d["only_first"]
    )
    assert len(d["only_second"]) == (right[1] & ~right[0]).sum()
    assert d["both_right"] + d["both_wrong"] + len(d["only_first"]) + len(d["only_second"]) == len(truth)


def test_predictions_and_maps_are_cached_in_the_run(run_dir, second_run, monkeypatch):
    Explorer([run_dir]).projection(0, method="pca")  # computed (and written where explain projection writes)
    assert (run_dir / "explore" / "predictions_test.safetensors").is_file()
    assert list((run_dir / "explain" / "projection").glob("*_pca_points.npy"))

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed what the run already holds")

    monkeypatch.setattr("cifarlens.run.predictor.Predictor.probabilities", refuse)
    monkeypatch.setattr("cifarlens.explain.projection.projection_run", refuse)
    again = Explorer([run_dir])
    points = again.projection(0, method="pca")
    assert len(points["x"]) == 100 and points["correct"].count(True) == sum(
        a == b for a, b in zip(points["label"], points["predicted"])
    )
    with pytest.raises(ConfigError, match="unknown projection method 'mds'"):
        again.projection(0, method="mds")


def test_an_image_gets_its_top5_attribution_overlays_and_feature_maps(explorer):
    result = explorer.explain(0, explorer.image(7), methods=["saliency", "gradcam"], index=7)
    probs = [row["probability"] for row in result["top5"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert (
        result["explained"] == result["top5"][0]["class"]
        and result["label"] == explorer.classes[int(explorer.labels[7])]
    )
    assert [a["method"] for a in result["attributions"]] == ["saliency", "gradcam"]
    overlay = Image.open(io.BytesIO(_png(result["attributions"][0]["image"])))
    assert overlay.size == (256, 256)
    assert result["feature_maps"]["layer"] in explorer.layers(0)["spatial"] and result["feature_maps"]["image"]
    with pytest.raises(CifarlensError, match="unknown attribution method nope; choose from: saliency"):
        explorer.explain(0, explorer.image(7), methods=["nope"])


def test_channels_show_the_optimised_image_and_the_top_images_once_computed(explorer, monkeypatch):
    layer = explorer.layers(0)["spatial"][-1]
    first = explorer.channels(0, layer=layer, channels="0-1", k=3)
    assert [c["channel"] for c in first["channels"]] == [0, 1] and all(len(c["top"]) == 3 for c in first["channels"])
    monkeypatch.setattr("cifarlens.explain.dataset_examples.top_images", lambda *a, **k: 1 / 0)
    assert explorer.channels(0, layer=layer, channels="0-1", k=3) == first  # read back from RUN/explore/


def test_thumbnails_are_pixel_sharp(explorer):
    big = np.array(Image.open(io.BytesIO(explorer.thumbnail(5, scale=4))))
    small = explorer.image(5).permute(1, 2, 0).numpy()
    assert (
        big.shape == (128, 128, 3) and np.array_equal(big[::4, ::4], small) and np.array_equal(big[3::4, 3::4], small)
    )


def test_headline_accuracy_prefers_tta_and_keeps_the_plain_one(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "summary.json").write_text('{"test": {"accuracy": 0.8}, "test_tta": {"accuracy": 0.82}}')
    expected = {"key": "test_tta", "label": "test, TTA", "accuracy": 0.82, "plain": 0.8, "n": None, "data": None}
    assert run.headline() == expected


# -- the server, as a user starts it ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir, second_run):
    """``cifarlens explore RUN RUN2`` in its own process; yields its base URL."""
    httpx = pytest.importorskip("httpx")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cifarlens.cli",
            "explore",
            str(run_dir),
            str(second_run),
            "--port",
            str(port),
            "--max-bytes",
            "200000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"explore exited: {proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_robustness_and_calibration_pages_show_what_the_run_recorded(explorer, run_dir):
    from cifarlens.evaluation.calibration import calibration_report
    from cifarlens.robustness.config import RobustnessConfig
    from cifarlens.robustness.score import robustness_run

    assert explorer.robustness(0)["keys"] == [] and "cifarlens robustness" in explorer.robustness(0)["command"]
    numbers = robustness_run(
        RobustnessConfig(run=str(run_dir), corruptions="contrast,impulse_noise", severities="4,5", split="test")
    )
    page = explorer.robustness(0)
    assert page["key"] == "test_seed0" and page["corruptions"] == ["contrast", "impulse_noise"]
    assert page["accuracy"][0] == [c["accuracy"] for c in numbers["cells"] if c["corruption"] == "contrast"]
    cell = next(c for c in numbers["cells"] if c["flipped"])
    flipped = explorer.robustness_flipped(0, key="test_seed0", corruption=cell["corruption"], severity=cell["severity"])
    assert flipped["count"] == cell["flipped"] and len(flipped["images"]) == min(cell["flipped"], 8)
    for shown in flipped["images"]:  # the corrupted image is made again exactly: the model errs on it as it did
        assert shown["clean"]["predicted"] == shown["label"] != shown["corrupted"]["predicted"]
        assert shown["clean"]["attribution"].startswith("data:image/png;base64,")
    calibration = explorer.calibration(0)
    probs = torch.from_numpy(explorer.probabilities(0)).double()
    assert calibration["ece"] == pytest.approx(calibration_report(probs.log(), explorer.labels)["ece"], abs=1e-6)
    wrong = [m["confidence"] for m in calibration["mistakes"]]
    assert wrong == sorted(wrong, reverse=True) and all(m["predicted"] != m["label"] for m in calibration["mistakes"])


def test_the_json_endpoints_of_the_real_server(server, explorer):
    import httpx

    info = httpx.get(f"{server}/api/info").json()
    assert (
        info["images"] == 100
        and info["runs"] == [RunDir(r).path.name for r in explorer.runs]
        and "saliency" in info["methods"]
    )
    confusion = httpx.get(f"{server}/api/runs/0/confusion").json()
    assert confusion["matrix"] == explorer.confusion(0)["matrix"]
    cell = httpx.get(f"{server}/api/runs/1/cell", params={"true": 2, "predicted": 2}).json()
    assert cell["count"] == explorer.confusion(1)["matrix"][2][2]
    assert httpx.get(f"{server}/api/runs/0/overview").json()["headline"]["key"] == "test"
    png = httpx.get(f"{server}/api/images/3.png")
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (128, 128)
    image = httpx.get(f"{server}/api/runs/0/images/3", params={"methods": "saliency"}, timeout=60).json()
    assert image["index"] == 3 and [a["method"] for a in image["attributions"]] == ["saliency"]
    for path, status, words in (
        ("/api/runs/2/overview", 404, "no run 2"),
        ("/api/images/100.png", 404, "images 0-99"),
        ("/api/runs/0/images/1?methods=nope", 400, "unknown attribution method"),
        ("/api/runs/0/map?layer=fc9", 404, "no probe stage 'fc9'"),
    ):
        response = httpx.get(server + path, timeout=60)
        assert response.status_code == status and words in response.json()["detail"], (path, response.text)


def test_uploads_get_the_limits_and_errors_of_serve(server):
    import httpx

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    ok = httpx.post(
        f"{server}/api/runs/0/upload?methods=saliency",
        content=buf.getvalue(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert ok.status_code == 200 and len(ok.json()["top5"]) == 5 and ok.json()["index"] is None
    too_big = httpx.post(f"{server}/api/runs/0/upload", content=b"\0" * 300_000, headers={"Content-Type": "image/png"})
    assert too_big.status_code == 413 and "over the limit of 200,000 bytes" in too_big.json()["detail"]
    not_image = httpx.post(f"{server}/api/runs/0/upload", content=b"hello", headers={"Content-Type": "image/png"})
    assert not_image.status_code == 400
    wrong_type = httpx.post(f"{server}/api/runs/0/upload", content=b"{}", headers={"Content-Type": "application/json"})
    assert wrong_type.status_code == 415


def test_bad_runs_and_a_busy_port_get_one_line(run_dir, tmp_path):
    assert_one_line_error(cifarlens("explore", tmp_path / "nothing"), "run directory", "not found")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(cifarlens("explore", run_dir, "--port", port), f"port {port}", "in use", "--port")
    assert_one_line_error(cifarlens("explore", run_dir, run_dir, run_dir), "one run, or two")


# -- the pages, in a browser -----------------------------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install chromium)")
def test_the_pages_work_in_headless_chromium(server, explorer):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(90_000)  # the suite runs files side by side: a loaded machine
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
        try:
            page.goto(server, wait_until="networkidle")
            page.wait_for_selector("#per-class tbody tr")
            assert page.locator("#per-class tbody tr").count() == 10
            page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

            page.click("nav a[data-page=confusion]")
            matrix = explorer.confusion(0)["matrix"]
            t = int(np.argmax([row[0] for row in matrix]))  # the fullest cell of column 0
            page.click(f"td.cell[data-true='{t}'][data-predicted='0']")
            page.wait_for_function("document.querySelector('#cell-title').textContent.includes('true')")
            assert page.locator("#cell-title").text_content().startswith(f"{matrix[t][0]} images: true")
            assert page.locator("#cell-images figure").count() == matrix[t][0]
            page.wait_for_selector("#only-first figure, #only-second figure")
            page.screenshot(path=str(ARTIFACTS / "confusion.png"), full_page=True)

            page.click("nav a[data-page=map]")
            page.wait_for_function(
                "document.querySelector('#map-status').textContent.includes('images')", timeout=120_000
            )
            drawn = page.evaluate("""() => [...document.querySelectorAll('#map .scatterlayer .trace')]
                .flatMap((trace) => [...trace.querySelectorAll('path.point')].map((point) => {
                    const r = point.getBoundingClientRect();
                    const index = trace.__data__[0].trace.customdata[point.__data__.i];
                    return [r.left + r.width / 2, r.top + r.height / 2, index];
                }))""")
            assert len(drawn) == 100
            x, y, _ = drawn[len(drawn) // 2]
            page.mouse.move(x, y)
            page.wait_for_selector("#hover:not([hidden])")
            page.wait_for_function("document.querySelector('#hover-image').naturalWidth === 128")
            shown = int(page.locator("#hover-text").text_content().split()[0].lstrip("#"))
            position = {index: (px, py) for px, py, index in drawn}[shown]  # the tutorial net stacks some points
            assert abs(position[0] - x) < 4 and abs(position[1] - y) < 4, (shown, position, (x, y))
            assert page.evaluate("document.querySelector('#hover-image').src").endswith(
                f"/api/images/{shown}.png?scale=4"
            )
            page.screenshot(path=str(ARTIFACTS / "map.png"))

            page.goto(f"{server}/#image/7")
            page.wait_for_function("document.querySelectorAll('#attributions img').length > 0", timeout=60_000)
            page.wait_for_function(
                "[...document.querySelectorAll('#attributions img')].every((i) => i.naturalWidth === 256)"
            )
            shown = page.eval_on_selector_all("#attributions figcaption", "cs => cs.map((c) => c.textContent)")
            assert [s.split(" ")[0] for s in shown] == [
                m for m in explorer.info()["default_methods"] if m in explorer.info()["methods"]
            ]
            page.screenshot(path=str(ARTIFACTS / "image.png"), full_page=True)

            page.goto(f"{server}/#robustness")
            page.wait_for_selector("#robustness-heat .hm, #robustness-heat .heatmaplayer", timeout=60_000)
            assert "mean corruption accuracy" in page.locator("#robustness-headline").text_content()
            flips = explorer.robustness(0)["flipped"][0][1]  # contrast at the second severity
            click = "{points: [{pointIndex: [0, 1]}]}"
            page.evaluate(f"document.getElementById('robustness-heat').emit('plotly_click', {click})")
            title = f": {flips} images flipped from right to wrong"
            page.wait_for_function(f"document.querySelector('#flipped-title').textContent.includes('{title}')")
            assert page.locator("#flipped .pair").count() == min(flips, 8) > 0
            page.wait_for_function(
                "[...document.querySelectorAll('#flipped img')].every((i) => i.naturalWidth === 128)"
            )
            page.screenshot(path=str(ARTIFACTS / "robustness.png"), full_page=True)
            page.goto(f"{server}/#calibration")
            mistakes = explorer.calibration(0)["mistakes_total"]
            page.wait_for_function(
                f"document.querySelector('#mistakes-title').textContent.includes('of {mistakes} mistakes')"
            )
            assert page.locator("#mistakes figure").count() == min(mistakes, 40)
            assert page.locator("#calibration-headline").text_content().startswith("ECE")
            page.screenshot(path=str(ARTIFACTS / "calibration.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


def _png(uri: str) -> bytes:
    import base64

    return base64.b64decode(uri.split(",", 1)[1])
