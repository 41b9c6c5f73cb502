"""cifarlens.explain.ranking (``cifarlens.explain.rank``): faithfulness, ROAD, model-randomisation sanity and the
references, on a model whose right answer is known (the planted-square detector) and on a trained run (the CLI)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import SQUARE_SPEC, square_images, to_input
from typer.testing import CliRunner

from cifarlens.cli import app
from cifarlens.errors import CifarlensError
from cifarlens.explain.ranking import (
    REFERENCES,
    RankSettings,
    centre_maps,
    randomised,
    rank,
    rank_maps,
    resolve_methods,
    seeded_indices,
    spearman_rows,
)
from cifarlens.models import create_model, model_capabilities
from cifarlens.models.registry import Capabilities

runner = CliRunner()
SQUARE_CAPS = Capabilities(
    classifier="fc",
    cam_layer="features.4",
    probe_stages=("features.1", "features.4", "flatten"),
    gap_features="features",
)


def by_method(rows: list[dict]) -> dict[str, dict]:
    return {r["method"]: r for r in rows}


@pytest.fixture(scope="module")
def square_rank(square_net):
    """rank_maps of four methods on 12 images with the square at random places (class 1: square)."""
    x = to_input(square_images(12, np.random.default_rng(3), np.ones(12, bool)))
    rows, curves = rank_maps(
        square_net,
        x,
        [1] * 12,
        ["saliency", "guided-backprop", "integrated-gradients", "gradcam"],
        capabilities=SQUARE_CAPS,
        mean=SQUARE_SPEC.mean,
        std=SQUARE_SPEC.std,
        settings=RankSettings(batch_size=5, steps=8),
    )
    return rows, curves, x


def test_spearman_rows_rank_maps_and_give_constant_maps_zero():
    a = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    maps = np.concatenate([a, a, a, np.zeros_like(a)])
    other = np.concatenate([a * 3 + 1, -a, a**2, a])  # same order, reversed, same order (monotone), vs constant
    np.testing.assert_allclose(spearman_rows(maps, other), [1.0, -1.0, 1.0, 0.0])


def test_randomised_resets_only_the_cascade_step_seeded_and_leaves_the_model():
    model = create_model("tutorial").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = randomised(model, ["classifier"], seed=1)
    for name, value in head.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == name.startswith("classifier."), name
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original untouched
    again = randomised(model, ["classifier"], seed=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in head.state_dict().items())
    other = randomised(model, ["classifier"], seed=2)
    assert not torch.equal(other.classifier.fc1.weight, head.classifier.fc1.weight)


def test_guided_backprop_survives_randomisation_of_the_head_and_saliency_does_not(square_rank):
    """Adebayo et al. 2018: guided backprop barely depends on the top layers, plain gradients do. If the
    randomisation were not applied, both correlations would be 1."""
    rows = by_method(square_rank[0])
    assert rows["guided-backprop"]["randomisation_corr_head"] > 0.85
    assert rows["guided-backprop"]["randomisation_corr_head"] > rows["saliency"]["randomisation_corr_head"] + 0.15
    assert rows["centre"]["randomisation_corr_all"] == 1.0  # a map that ignores the model
    assert rows["integrated-gradients"]["randomisation_corr_all"] < 0.2
    assert rows["integrated-gradients"]["passes_sanity"] and not rows["centre"]["passes_sanity"]


def test_faithful_methods_beat_both_references_on_the_planted_square(square_rank):
    rows = by_method(square_rank[0])
    for method in ("saliency", "integrated-gradients"):
        row = rows[method]
        assert row["beats_references"] and row["verdict"].startswith("beats random and centre"), row
        assert row["deletion_auc"] < rows["random"]["deletion_auc"] - 0.2
        assert row["road_morf"] < rows["centre"]["road_morf"] - 0.2  # imputing the square removes the evidence
    assert [r["rank"] for r in square_rank[0]] == list(range(1, 7))
    assert list(square_rank[0][0])[0] == "method" and set(rows) == {
        *REFERENCES,
        "saliency",
        "guided-backprop",
        "integrated-gradients",
        "gradcam",
    }
    assert len(square_rank[1]["saliency"]["deletion"]) == 9  # the mean curve: steps + 1 points


def test_the_ranking_is_seeded(square_net, square_rank):
    rows, _, x = square_rank
    again, _ = rank_maps(
        square_net,
        x,
        [1] * 12,
        ["saliency", "guided-backprop", "integrated-gradients", "gradcam"],
        capabilities=SQUARE_CAPS,
        mean=SQUARE_SPEC.mean,
        std=SQUARE_SPEC.std,
        settings=RankSettings(batch_size=5, steps=8),
    )

    def drop_time(rows):
        return [{k: v for k, v in r.items() if k != "ms_per_image"} for r in rows]

    assert drop_time(again) == drop_time(rows)


def test_centre_reference_peaks_in_the_middle_and_images_are_seeded():
    maps = centre_maps(2, 32, 32)
    assert maps.shape == (2, 32, 32) and np.unravel_index(maps[0].argmax(), (32, 32)) in {
        (15, 15),
        (15, 16),
        (16, 15),
        (16, 16),
    }
    assert seeded_indices(100, 10, 0) == seeded_indices(100, 10, 0) != seeded_indices(100, 10, 1)
    assert len(set(seeded_indices(100, 10, 0))) == 10 and seeded_indices(5, 10, 0) == [0, 1, 2, 3, 4]


def test_all_and_cams_leave_out_what_the_model_cannot_do():
    airnet = model_capabilities("airnet")
    assert "cam" not in resolve_methods("all", airnet) and "cam" in resolve_methods(
        "all", model_capabilities("resnet18")
    )
    cams = resolve_methods("cams", model_capabilities("resnet18"))
    assert "gradcam" in cams and "saliency" not in cams and "guided-gradcam" not in cams
    with pytest.raises(CifarlensError, match="unknown attribution method magic; choose from"):
        resolve_methods("saliency,magic", airnet)


def invoke(*args):
    return runner.invoke(app, ["explain", *map(str, args)])


def test_cli_rank_writes_table_chart_and_numbers(run_dir):
    result = invoke(
        "rank", run_dir, "--methods", "saliency,gradcam,guided-backprop", "--n", 6, "--steps", 4, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    out = run_dir / "explain/rank"
    with open(out / "rank.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[0] == "method" and {r["method"] for r in rows} == {
        "saliency",
        "gradcam",
        "guided-backprop",
        "random",
        "centre",
    }
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    for column in (
        "deletion_auc",
        "insertion_auc",
        "road_morf",
        "road_lerf",
        "randomisation_corr_head",
        "randomisation_corr_all",
        "ms_per_image",
    ):
        assert all(np.isfinite(float(r[column])) for r in rows), column
    saved = json.loads((out / "rank.json").read_text())
    assert len(saved["indices"]) == 6 and saved["settings"]["steps"] == 4 and saved["device"] == "cpu"
    assert "| `saliency` |" in (out / "rank.md").read_text() and (out / "rank.png").stat().st_size > 10_000
    assert rows[0]["method"] in result.output and "rank.md" in result.output

    result = invoke("compare-cam", run_dir, "--methods", "gradcam,layercam", "--n", 4, "--steps", 4)
    assert result.exit_code == 0, result.output
    with open(run_dir / "explain/compare-cam/rank.csv", newline="") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"gradcam", "layercam", "random", "centre"}


def test_cli_rank_bad_input_is_one_line(run_dir):
    for args, fragment in (
        (("--methods", "saliency,magic"), "unknown attribution method magic"),
        (("--n", 0), "--n must be at least 1"),
        (("--methods", "cam"), "global-average-pool"),
        (("--baseline", "grey"), "unknown baseline 'grey'"),
        (
            ("--methods", "gradcam", "--target-layer", "nope"),
            "unknown module 'nope'; valid target layers: features, features.conv1",
        ),
    ):
        result = invoke("rank", run_dir, *args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert fragment in result.output.replace("\n", " "), result.output
    result = invoke("compare-cam", run_dir, "--methods", "saliency")
    assert result.exit_code == 2 and "unknown CAM method 'saliency'" in result.output.replace("\n", " ")


def test_the_library_names_are_functions_even_after_their_modules_load():
    import cifarlens.explain
    import cifarlens.explain.attribution  # noqa: F401
    import cifarlens.explain.dataset_examples  # noqa: F401
    import cifarlens.explain.ranking  # noqa: F401

    for name in ("rank", "attribute", "top_images", "cam_run", "probe_run"):
        found = getattr(cifarlens.explain, name)
        assert callable(found) and not isinstance(found, type(cifarlens)), name  # a function, not a module


def test_randomised_redraws_parameters_of_modules_without_reset_parameters():
    class Scale(torch.nn.Module):  # like timm's LayerScale: a parameter, no reset_parameters
        def __init__(self):
            super().__init__()
            self.gamma = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))
            self.constant = torch.nn.Parameter(torch.full((8,), 1e-6))

    model = torch.nn.Sequential(Scale())
    random = randomised(model, ["0"], seed=0)
    assert not torch.equal(random[0].gamma, model[0].gamma)
    assert abs(float(random[0].gamma.detach().std()) - float(model[0].gamma.detach().std())) < 0.5  # same spread
    assert torch.equal(random[0].constant, model[0].constant)  # a constant has no spread to draw from


def test_a_ranking_stopped_half_way_keeps_the_images_it_finished(run_dir, tmp_path):
    def stop_after_the_first_batch(done, total):
        if done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rank(
            run_dir,
            methods="saliency",
            n=6,
            device="cpu",
            settings=RankSettings(batch_size=2, steps=4),
            partial_to=tmp_path / "partial",
            on_batch=stop_after_the_first_batch,
        )
    saved = json.loads((tmp_path / "partial/rank.json").read_text())
    assert len(saved["indices"]) == 2 and saved["planned"] == 6 and len(saved["rows"]) == 3
    assert "PARTIAL: the first 2 of 6 images" in (tmp_path / "partial/rank.md").read_text()
    done = rank(run_dir, methods="saliency", n=6, device="cpu", settings=RankSettings(batch_size=2, steps=4))
    assert done.planned == 0 and len(done.indices) == 6 and done.indices[:2] == saved["indices"]
