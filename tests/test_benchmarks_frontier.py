"""benchmarks/frontier.py on a tiny synthetic runs JSON and one run directory: the table's paired differences."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cifarlens.run.directory import RunDir

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
frontier = sys.modules["frontier"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(frontier)


def run(seed, seconds, acc, **extra):
    return {"run": f"x-s{seed}", "seed": seed, "train_clock": seconds, "val_tta_translate": acc} | extra


def write_run_dir(path: Path, seconds: float, acc: float, processor: str = "Test CPU") -> None:
    rundir = RunDir(path)
    rundir.write_config({"recipe": "airbench94", "epochs": 7, "seed": 0})
    rundir.write_metrics([{"epoch": 7, "train_clock": seconds}])
    rundir.merge_summary("val_tta_translate", {"accuracy": acc})
    (path / RunDir.PROVENANCE).write_text(
        json.dumps({"processor": processor, "cpu_native_bf16": True, "precision": "bf16"})
    )


def test_table_pairs_by_seed(tmp_path, capsys):
    runs = {
        "airbench94": [run(0, 100.0, 0.935), run(1, 110.0, 0.940), run(2, 90.0, 0.930)],
        "fast": [run(1, 70.0, 0.938), run(2, 60.0, 0.925), run(5, 65.0, 0.920)],  # seed 5: no pair
        "ab6": [run(0, 80.0, 0.931, epochs=6), {"seed": 1, "train_clock": 75.0, "val_tta": 0.93}],  # no metric
    }
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    write_run_dir(tmp_path / "dirs" / "ab7-s0", 95.0, 0.933)
    out, table = tmp_path / "f.png", tmp_path / "f.md"
    frontier.main(
        [
            str(tmp_path / "runs.json"),
            "--runs-dir",
            str(tmp_path / "dirs"),
            "--out",
            str(out),
            "--table",
            str(table),
            "--machine",
            "Test CPU",
        ]
    )
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.read_text().splitlines()}
    # time: 70/110 and 60/90 on the shared seeds 1 and 2
    assert rows["fast"][2:] == ["1, 2, 5", "92.77 ± 0.93", "65 ± 5", "0.65x", "-0.35 ± 0.21 (2)", "0.65 ± 0.02x |"]
    assert rows["ab6"][2] == "0" and rows["ab6"][-2:] == ["-0.40 (1)", "0.80x |"]
    assert rows["ab7"][1] == "airbench94 cut to 7 ep" and rows["ab7"][-2:] == ["-0.20 (1)", "0.95x |"]
    assert rows["airbench94"][-2:] == ["-", "- |"]
    assert "on Test CPU" in capsys.readouterr().out
    assert out.stat().st_size > 10_000


def test_one_machine_per_figure(tmp_path):
    write_run_dir(tmp_path / "dirs" / "airbench94-s0", 100.0, 0.935, processor="CPU A")
    write_run_dir(tmp_path / "dirs" / "ab6-s0", 80.0, 0.931, processor="CPU B")
    with pytest.raises(SystemExit, match="2 machines"):
        frontier.main(["--runs-dir", str(tmp_path / "dirs"), "--out", str(tmp_path / "f.png")])
    write_run_dir(tmp_path / "dirs" / "ab6-s0", 80.0, 0.931, processor="CPU A")
    (tmp_path / "runs.json").write_text(json.dumps({"fast": [run(0, 70.0, 0.93)]}))
    with pytest.raises(SystemExit, match="do not record their machine"):  # the JSON could be from another CPU
        frontier.main(
            [str(tmp_path / "runs.json"), "--runs-dir", str(tmp_path / "dirs"), "--out", str(tmp_path / "f.png")]
        )
    frontier.main(["--runs-dir", str(tmp_path / "dirs"), "--out", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").is_file()


def test_pareto_keeps_points_no_faster_one_beats():
    assert frontier.pareto([(3, 1.0), (1, 0.0), (2, 0.0), (4, 2.0), (5, 1.5)]) == [(1, 0.0), (3, 1.0), (4, 2.0)]


def test_saved_runs_redraw_the_same_table_without_the_run_directories(tmp_path):
    (tmp_path / "runs.json").write_text(json.dumps({"airbench94": [run(0, 100.0, 0.935)]}))
    write_run_dir(tmp_path / "dirs" / "airbench94-s1", 110.0, 0.940)
    write_run_dir(tmp_path / "dirs" / "ab7-s1", 95.0, 0.933)
    first, again, saved = tmp_path / "first.md", tmp_path / "again.md", tmp_path / "saved.json"
    frontier.main(
        [
            str(tmp_path / "runs.json"),
            "--runs-dir",
            str(tmp_path / "dirs"),
            "--machine",
            "Test CPU",
            "--out",
            str(tmp_path / "f.png"),
            "--table",
            str(first),
            "--save-runs",
            str(saved),
        ]
    )
    assert sorted(json.loads(saved.read_text())) == ["ab7", "airbench94"]
    frontier.main([str(saved), "--machine", "Test CPU", "--out", str(tmp_path / "g.png"), "--table", str(again)])
    assert again.read_text() == first.read_text()
    assert "| ab7 | airbench94 cut to 7 ep | 1 |" in again.read_text()


NO_CLOCK = '{"fast": [{"seed": 0, "val_tta_translate": 0.9}]}'


@pytest.mark.parametrize("content", [None, "not json", '["a list"]', NO_CLOCK])
def test_bad_inputs_end_in_one_line(tmp_path, content):
    path = tmp_path / "runs.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stop:
        frontier.main([str(path), "--out", str(tmp_path / "f.png")])
    message = str(stop.value.code)
    assert message.startswith(str(path)) and "\n" not in message
