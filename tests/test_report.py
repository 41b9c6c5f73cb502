"""cifarlens report: a self-contained HTML page per run, checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
from rich.console import Console

from cifarlens.config import build_config
from cifarlens.report import after_training
from cifarlens.report.html import write_report
from cifarlens.training import TrainConfig, recipe_options
from cifarlens.training.trainer import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def tiny_run(cifar_root, out, **overrides):
    options = {
        "model": "tutorial",
        "epochs": 2,
        "batch_size": 50,
        "optimizer": "sgd",
        "lr": 0.05,
        "augment": "flip",
        "data_dir": str(cifar_root),
        "download": False,
        "out": str(out),
        "precision": "fp32",
        "channels_last": False,
        "threads": 1,
        "val_size": 50,
    } | overrides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return after_training(
            train(build_config(TrainConfig, recipe_options("seed"), options)), console=Console(quiet=True)
        )


@pytest.fixture(scope="module")
def runs(cifar_root, tmp_path_factory):
    """Two finished runs (different lr); the first also holds explain outputs as `cifarlens explain` writes them."""
    root = tmp_path_factory.mktemp("report")
    a = tiny_run(cifar_root, root / "a")
    b = tiny_run(cifar_root, root / "b", lr=0.01, report=False)
    explain = a / "explain" / "probes"
    explain.mkdir(parents=True)
    shutil.copy(a / "plots" / "curves.png", explain / "probe_accuracy.png")
    (explain / "probes.json").write_text(json.dumps({"layers": ["conv1", "conv2"], "accuracy": [0.31, 0.42]}))
    (explain / "probes.csv").write_text("layer,accuracy\nconv1,0.31\nconv2,0.42\n")
    return a, b


def test_train_writes_a_self_contained_report(runs):
    a, b = runs
    page = (a / "report.html").read_text()
    assert not (b / "report.html").exists()  # --no-report
    for heading in (
        "Training curves",
        "Per-class accuracy (test)",
        "Confusion matrix (test)",
        "Misclassified examples (test)",
        "Config",
        "Metrics per epoch",
    ):
        assert heading in page, heading
    assert "100 images of " in page  # the test data the per-class table scored
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) >= 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page


def test_report_renders_explain_outputs_and_several_runs(runs, tmp_path):
    a, b = runs
    page = write_report([a], tmp_path / "one.html").read_text()
    assert "Explanations" in page and "probes/probe_accuracy.png" in page and "<td>conv2</td>" in page
    assert "&quot;accuracy&quot;" in page  # the JSON numbers, escaped
    both = write_report([a, b], tmp_path / "both.html").read_text()
    assert "Comparison" in both and both.count('<section id="run-') == 2
    assert re.search(r"<th>lr</th>", both) and "<td>0.01</td>" in both


def test_report_cli_and_bad_input(runs, tmp_path):
    from typer.testing import CliRunner

    from cifarlens.cli import app

    result = CliRunner().invoke(app, ["report", str(runs[1]), "--out", str(tmp_path / "b.html")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "b.html").stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert (
        bad.exit_code == 2
        and "not a cifarlens run directory" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install chromium)")
def test_report_renders_in_headless_chromium_without_errors(runs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    a, b = runs
    pages = {"single": write_report([a], tmp_path / "one.html"), "multi": write_report([a, b], tmp_path / "both.html")}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for name, path in pages.items():
                page = browser.new_page()
                errors: list[str] = []
                page.on("console", lambda msg, errors=errors: errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda err, errors=errors: errors.append(str(err)))
                page.on("requestfailed", lambda req, errors=errors: errors.append(f"request failed: {req.url}"))
                page.goto(path.resolve().as_uri(), wait_until="load")
                assert errors == [], (name, errors)
                widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
                assert len(widths) >= 3 and all(w > 0 for w in widths), (name, widths)
                headings = page.eval_on_selector_all("h2, h3", "hs => hs.map(h => h.textContent)")
                assert "Confusion matrix (test)" in headings and "Per-class accuracy (test)" in headings
                rows = page.eval_on_selector_all("table.per-class tbody tr", "rs => rs.length")
                assert rows == 10 * (2 if name == "multi" else 1)  # one per-class table per run
                if name == "single":
                    assert "Explanations" in headings
                else:
                    assert "Comparison" in headings
                page.close()
        finally:
            browser.close()


def test_report_shows_the_ranking_of_attribution_methods_and_their_maps(runs, tmp_path):
    from cifarlens.explain.attribution import attribute
    from cifarlens.explain.ranking import RankSettings, rank
    from cifarlens.run import RunDir

    a = runs[0]
    ranked = rank(a, methods="saliency,gradcam", n=4, device="cpu", settings=RankSettings(steps=4))
    ranked.write(RunDir(a).explain_dir("rank"))
    attribute(a, methods=["saliency", "gradcam"], index="0-1", device="cpu").write(RunDir(a).explain_dir("attribute"))
    page = write_report([a], tmp_path / "ranked.html").read_text()
    assert "Attribution methods, ranked" in page and "Attribution maps" in page
    table = page[page.index('<table class="rank">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 4  # header, two methods and the two references
    assert f"<td>{ranked.rows[0]['method']}</td>" in table and "<td>centre</td>" in table
    assert "rank.json" not in page  # the numbers behind the table are not dumped again
    assert page.count("attribute/saliency_gradcam.png") == 2  # once, as alt text and caption
