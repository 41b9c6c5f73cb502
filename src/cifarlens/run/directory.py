"""``RunDir``: the one object that knows a run directory's file names and formats.

Layout::

    RUN/config.yaml          resolved training config
    RUN/metrics.csv          one row per epoch (METRIC_COLUMNS)
    RUN/model.safetensors    final weights; the header holds the ModelSpec that rebuilds the model
    RUN/summary.json         results by key: train, test, test_tta, val ...; each evaluation records its data
                             (folder, split, n, fingerprint); one of other data is KEY@FINGERPRINT
    RUN/provenance.json      git SHA, package versions, machine, device, precision
    RUN/per_class_KEY.csv    per-class scores of one evaluation (KEY: test, test_tta, val ...)
    RUN/confusion_KEY.csv    its confusion matrix
    RUN/plots/*.png          curves, confusion_KEY, misclassified_KEY
    RUN/checkpoint/          resumable state (cifarlens.run.checkpoint)
    RUN/explain/COMMAND/     what each explain command wrote (COMMAND: RunDir.EXPLAIN_COMMANDS)
    RUN/export/              model.onnx, model.int8.onnx and their JSON sidecars, TFLite/SavedModel, bench.json
    RUN/explore/             what ``cifarlens explore`` computed once and keeps (predictions, channel images)
    RUN/report.html          the static HTML report
    RUN/source/              an imported model's code (with its sibling modules) or graph file

Train, evaluate, explain, export, compare, report and sweep read and write a run only through
this class, so a file name or format changes in one place.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import yaml
from torch import nn

from cifarlens import __version__
from cifarlens.config import read_yaml
from cifarlens.data import prepare_data
from cifarlens.data.cifar10 import find_batches_dir, resolve_data_dir
from cifarlens.device import cpu_has_fast_bf16, cpu_name
from cifarlens.errors import RunDirError
from cifarlens.io import atomic_write_text
from cifarlens.run import checkpoint
from cifarlens.run.spec import ModelSpec, load_weights, read_spec, save_weights

if TYPE_CHECKING:
    from cifarlens.data import RunData

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "image_size",
    "images_per_s",
    "elapsed",
    "train_clock",
    "gflops",
    "data_s",
    "forward_s",
    "backward_s",
    "step_s",
]
_INT_COLUMNS = {"epoch", "image_size"}
PER_CLASS_COLUMNS = ["class", "accuracy", "precision", "recall", "f1", "support"]


class RunDir:
    """A run directory at ``path`` (which need not exist yet). Reads are typed; writes are atomic."""

    CONFIG = "config.yaml"
    METRICS = "metrics.csv"
    WEIGHTS = "model.safetensors"
    SUMMARY = "summary.json"
    PROVENANCE = "provenance.json"
    PLOTS = "plots"
    CHECKPOINT = "checkpoint"
    EXPLAIN = "explain"
    EXPORT = "export"
    EXPLORE = "explore"
    REPORT = "report.html"
    SOURCE = "source"  # an imported model's code or graph file, which its spec's kwargs name
    ROBUSTNESS = "robustness"  # one folder per corruption benchmark run: robustness/KEY/
    ROBUSTNESS_FILES = {
        "numbers": "robustness.json",
        "table": "accuracy.csv",
        "markdown": "robustness.md",
        "per_class": "per_class_drop.csv",
        "predictions": "predictions.npz",
        "severity_plot": "severity.png",
        "grid": "grid.png",
    }
    CALIBRATION = "calibration.json"  # the temperature of cifarlens calibrate, and what it was fitted on
    # One folder per explain command under explain/ (a new command adds its folder here).
    EXPLAIN_COMMANDS = (
        "layers",
        "features",
        "projection",
        "probe",
        "filters",
        "feature-maps",
        "activation-max",
        "top-images",
        "cam",
        "attribute",
        "rank",
        "compare-cam",
    )
    RANK_FILES = {"table": "rank.csv", "markdown": "rank.md", "chart": "rank.png", "numbers": "rank.json"}
    HEADLINE_KEYS = ("test_tta_translate", "test_tta", "test")  # the fullest scored test evaluation first

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # -- files ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def weights_file(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def summary_file(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def provenance_file(self) -> Path:
        return self.path / self.PROVENANCE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def report_file(self) -> Path:
        return self.path / self.REPORT

    def plot_file(self, name: str) -> Path:
        """``plots/NAME.png``: ``curves``, ``confusion_KEY``, ``misclassified_KEY``."""
        return self.path / self.PLOTS / f"{name}.png"

    def per_class_file(self, key: str) -> Path:
        return self.path / f"per_class_{key}.csv"

    def confusion_file(self, key: str) -> Path:
        return self.path / f"confusion_{key}.csv"

    def explain_dir(self, command: str, *, make: bool = True) -> Path:
        """``explain/COMMAND/`` (COMMAND one of ``EXPLAIN_COMMANDS``), made if missing unless ``make`` is False:
        where one explain command writes."""
        if command not in self.EXPLAIN_COMMANDS:
            raise ValueError(f"no explain folder {command!r}; add it to RunDir.EXPLAIN_COMMANDS")
        folder = self.path / self.EXPLAIN / command
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def explain_files(self) -> list[Path]:
        """Every PNG, JSON and CSV the explain commands wrote, sorted."""
        root = self.path / self.EXPLAIN
        if not root.is_dir():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".json", ".csv"))

    @staticmethod
    def file_stem(layer: str) -> str:
        """A layer name as part of a file name (no folder separators)."""
        return layer.replace("/", "_")

    @classmethod
    def projection_names(cls, layer: str, method: str) -> dict[str, str]:
        """The file names of the 2-D map of ``layer`` by ``method``: its chart, its numbers and its points."""
        stem = f"{cls.file_stem(layer)}_{method}"
        return {"chart": f"{stem}.png", "numbers": f"{stem}.json", "points": f"{stem}_points.npy"}

    def projection_files(self, layer: str, method: str) -> dict[str, Path]:
        """``projection_names`` in ``explain/projection/``."""
        folder = self.explain_dir("projection", make=False)
        return {kind: folder / name for kind, name in self.projection_names(layer, method).items()}

    def rank_files(self, command: str = "rank") -> dict[str, Path]:
        """``RANK_FILES`` in ``explain/COMMAND/`` (``rank``, or ``compare-cam`` for the CAM-only ranking): the
        ranking of attribution methods as a table, markdown, chart and every number behind them."""
        folder = self.explain_dir(command, make=False)
        return {kind: folder / name for kind, name in self.RANK_FILES.items()}

    def explore_file(self, name: str) -> Path:
        """``explore/NAME``, its folder made if missing: a cache of ``cifarlens explore``."""
        folder = self.path / self.EXPLORE
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def explore_predictions_file(self, split: str) -> Path:
        """The explorer's cache of the model's outputs on ``split``."""
        return self.explore_file(f"predictions_{split}.safetensors")

    def explore_channels_file(self, split: str, layer: str, channels: str, k: int) -> Path:
        """The explorer's cache of the top-``k`` images of ``channels`` (e.g. ``3,5``) of ``layer`` on ``split``."""
        return self.explore_file(
            f"channels_{split}_{self.file_stem(layer)}_{channels.replace(',', '+')}_k{k}.safetensors"
        )

    @property
    def export_dir(self) -> Path:
        """``export/``: where ``cifarlens export`` puts the graphs (not made here)."""
        return self.path / self.EXPORT

    @property
    def onnx_file(self) -> Path:
        """``export/model.onnx``: the exported graph (its int8 version and sidecars are named after it)."""
        return self.export_dir / "model.onnx"

    def tf_file(self, fmt: str) -> Path:
        """``export/model.tflite`` (``fmt`` tflite) or ``export/saved_model/`` (saved_model)."""
        return self.export_dir / ("model.tflite" if fmt == "tflite" else "saved_model")

    @property
    def bench_file(self) -> Path:
        """``export/bench.json``: what ``cifarlens bench`` measured on the run."""
        return self.export_dir / "bench.json"

    def robustness_files(self, key: str) -> dict[str, Path]:
        """``ROBUSTNESS_FILES`` in ``robustness/KEY/`` (KEY names the split, seed, size, TTA and backend)."""
        folder = self.path / self.ROBUSTNESS / key
        return {kind: folder / name for kind, name in self.ROBUSTNESS_FILES.items()}

    def robustness_keys(self) -> list[str]:
        """The keys of every robustness result the run holds, oldest first."""
        folder = self.path / self.ROBUSTNESS
        found = [p.parent for p in folder.glob(f"*/{self.ROBUSTNESS_FILES['numbers']}")] if folder.is_dir() else []
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def read_robustness(self, key: str) -> dict[str, Any]:
        path = self.robustness_files(key)["numbers"]
        return _read_json_object(path, f"run cifarlens robustness {self.path} again")

    @property
    def calibration_file(self) -> Path:
        return self.path / self.CALIBRATION

    def read_calibration(self) -> dict[str, Any] | None:
        """What ``cifarlens calibrate`` stored (``temperature`` and the scores behind it), or None."""
        if not self.calibration_file.is_file():
            return None
        return _read_json_object(self.calibration_file, f"run cifarlens calibrate {self.path} again")

    @property
    def temperature(self) -> float:
        """The fitted temperature the run's probabilities are divided by; 1.0 when it was never calibrated."""
        stored = self.read_calibration()
        return float(stored["temperature"]) if stored else 1.0

    # -- what kind of folder ------------------------------------------------------------------------
    def has_config(self) -> bool:
        return self.config_file.is_file()

    def has_weights(self) -> bool:
        return self.weights_file.is_file()

    def has_checkpoint(self) -> bool:
        return checkpoint.has_checkpoint(self.checkpoint_dir)

    def require_config(self, fix: str = "pass the folder that cifarlens train wrote") -> "RunDir":
        """``self`` if it holds a run's config.yaml, else a ``RunDirError`` naming ``fix``."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} not found; {fix}")
        if not self.has_config():
            raise RunDirError(f"{self.path} is not a cifarlens run directory (no {self.CONFIG}); {fix}")
        return self

    def require_weights(self) -> "RunDir":
        """``self`` if it holds final weights; an unfinished run points to ``--resume``."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} not found; pass the folder that cifarlens train wrote")
        if not self.has_weights():
            if self.checkpoint_dir.is_dir():
                raise RunDirError(
                    f"run {self.path} has no {self.WEIGHTS} yet (training unfinished); "
                    f"finish it with cifarlens train --resume {self.path}"
                )
            raise RunDirError(
                f"{self.path} is not a cifarlens run directory (no {self.WEIGHTS}); pass the folder that train wrote"
            )
        return self

    # -- config ---------------------------------------------------------------------------------------
    @cached_property
    def config(self) -> dict[str, Any]:
        """config.yaml as a plain mapping, read once; ``cifarlens.training.load_run_config`` types it."""
        self.require_config()
        return read_yaml(self.config_file, where="the run directory")

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=False))
        self.__dict__.pop("config", None)

    def load_data(self, data_dir: str | Path | None = None) -> "RunData":
        """The splits the run was trained with, rebuilt from its config (``data_dir``: where the data is now)."""

        if not self.has_config():
            raise RunDirError(f"{self.path} has no {self.CONFIG}; it is not a complete cifarlens run directory")
        cfg = self.config
        return prepare_data(
            data_dir or cfg.get("data_dir") or None,
            download=bool(cfg.get("download", True)),
            subset=int(cfg.get("subset") or 0),
            val_size=int(cfg.get("val_size") or 0),
            seed=int(cfg.get("seed") or 0),
            saved_in=None if data_dir else self.config_file,
        )

    # -- metrics ------------------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, float | int]]:
        """metrics.csv rows as numbers (``epoch`` and ``image_size`` int, the rest float); empty cells are
        left out of a row, so ``row.get("val_acc")`` is None for an epoch without a validation score."""
        if not self.metrics_file.is_file():
            return []
        with open(self.metrics_file, newline="") as f:
            return [_typed_row(row, self.metrics_file) for row in csv.DictReader(f)]

    @cached_property
    def metrics(self) -> list[dict[str, float | int]]:
        """``read_metrics()``, read once."""
        return self.read_metrics()

    def write_metrics(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write all rows (floats with 6 significant digits), atomically."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.metrics_file, buf.getvalue())

    # -- summary -------------------------------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any]:
        """summary.json ({} when absent); a damaged file is a ``RunDirError`` that says how to fix it."""
        return _read_json_object(self.summary_file, "delete it and evaluate again")

    @cached_property
    def summary(self) -> dict[str, Any]:
        """``read_summary()``, read once."""
        return self.read_summary()

    def evaluation_key(self, key: str, data: dict[str, Any]) -> str:
        """Where an evaluation of ``data`` (its record: folder, split, n, fingerprint) is kept in summary.json:
        ``key`` for the run's own data (or the very images an earlier entry under ``key`` scored), else
        ``KEY@FINGERPRINT``, beside the run's own entry and never over it."""
        earlier = self.summary.get(key)
        if earlier is not None and (earlier.get("data") or {}).get("fingerprint") == data["fingerprint"]:
            return key
        own = Path(data["folder"]).resolve() == self.own_data_folder()
        return key if own else f"{key}@{data['fingerprint'][:8]}"

    def own_data_folder(self) -> Path | None:
        """The folder holding the batches the run's config names (None when it is not there)."""
        folder = find_batches_dir(resolve_data_dir(self.config.get("data_dir") or None)[0])
        return folder.resolve() if folder is not None else None

    def evaluations(self) -> dict[str, dict[str, Any]]:
        """Every evaluation entry of summary.json (those with an accuracy), by key, the run's own first."""
        entries = {k: v for k, v in self.summary.items() if isinstance(v, dict) and "accuracy" in v}
        return dict(sorted(entries.items(), key=lambda item: ("@" in item[0], item[0])))

    def merge_summary(self, key: str, value: dict[str, Any]) -> None:
        """Set ``summary[key] = value``, keeping the other keys."""
        summary = self.read_summary()
        summary[key] = value
        write_json(self.summary_file, summary)
        self.__dict__.pop("summary", None)

    @property
    def test_acc(self) -> float | None:
        """The plain test accuracy: the evaluation's, else the trainer's last per-epoch score."""
        if "test" in self.summary:
            return float(self.summary["test"]["accuracy"])
        return self.summary.get("train", {}).get("final_test_acc")

    def headline(self) -> dict[str, Any] | None:
        """The accuracy to show first: the fullest scored test evaluation (TTA with shifts, then TTA, then plain),
        with the plain one beside it. ``{"key", "label", "accuracy", "plain"}``; None when the test split was
        never scored."""
        labels = {"test_tta_translate": "test, TTA + shifts", "test_tta": "test, TTA", "test": "test"}
        for key in self.HEADLINE_KEYS:
            if key in self.summary:
                entry = self.summary[key]
                return {
                    "key": key,
                    "label": labels[key],
                    "accuracy": float(entry["accuracy"]),
                    "plain": self.test_acc,
                    "n": entry.get("n"),
                    "data": entry.get("data"),
                }
        if self.test_acc is None:
            return None
        accuracy = float(self.test_acc)
        return {"key": "test", "label": "test", "accuracy": accuracy, "plain": self.test_acc, "n": None, "data": None}

    @property
    def val_acc(self) -> float | None:
        """The last epoch's validation accuracy."""
        value = self.metrics[-1].get("val_acc") if self.metrics else None
        return float(value) if value is not None else None

    # -- provenance -----------------------------------------------------------------------------------------
    def write_provenance(self, machine: dict[str, Any]) -> None:
        write_json(self.provenance_file, machine_provenance() | machine)

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return _read_json_object(self.provenance_file, "re-run training")

    # -- evaluation reports -----------------------------------------------------------------------------
    def write_evaluation(
        self, key: str, per_class: list[dict[str, Any]], confusion: list[list[int]], classes: Sequence[str]
    ) -> None:
        """per_class_KEY.csv and confusion_KEY.csv of one evaluation."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(PER_CLASS_COLUMNS)
        for row in per_class:
            writer.writerow(
                [row["class"]] + [f"{row[k]:.6f}" for k in ("accuracy", "precision", "recall", "f1")] + [row["support"]]
            )
        atomic_write_text(self.per_class_file(key), buf.getvalue())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion):
            writer.writerow([name, *row])
        atomic_write_text(self.confusion_file(key), buf.getvalue())

    def read_per_class(self, key: str = "test") -> list[dict[str, Any]]:
        """per_class_KEY.csv rows: class (str), support (int), the scores (float); [] when not evaluated."""
        path = self.per_class_file(key)
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return [
                {"class": r["class"], "support": int(r["support"])}
                | {k: float(r[k]) for k in ("accuracy", "precision", "recall", "f1")}
                for r in csv.DictReader(f)
            ]

    @cached_property
    def per_class(self) -> list[dict[str, Any]]:
        """``read_per_class("test")``, read once."""
        return self.read_per_class("test")

    # -- weights and checkpoints ----------------------------------------------------------------------
    def read_spec(self) -> ModelSpec:
        self.require_weights()
        return read_spec(self.weights_file)[0]

    def load_model(self, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
        """The trained model (eval mode, on ``device``) and its spec, rebuilt from model.safetensors alone."""
        self.require_weights()
        return load_weights(self.weights_file, device)

    def save_model(self, model: nn.Module, spec: ModelSpec) -> None:
        save_weights(model, spec, self.weights_file)

    def save_checkpoint(
        self, epoch: int, model: nn.Module, spec: ModelSpec, state: dict[str, Any], step: int = 0
    ) -> None:
        """The checkpoint ``step`` steps after finished epoch ``epoch`` (1-based; 0: at its end), atomically;
        older ones are pruned."""
        checkpoint.save_checkpoint(self.checkpoint_dir, epoch, model, spec, state, step)

    def load_checkpoint(self) -> checkpoint.Checkpoint:
        return checkpoint.load_checkpoint(self.checkpoint_dir)


def _typed_row(row: dict[str, str], path: Path) -> dict[str, float | int]:
    typed: dict[str, float | int] = {}
    for key, text in row.items():
        if key is None or text in (None, ""):
            continue
        try:
            typed[key] = int(text) if key in _INT_COLUMNS else float(text)
        except ValueError:
            raise RunDirError(f"{path}: column {key} holds {text!r}, not a number; the file is damaged") from None
    return typed


def _read_json_object(path: Path, fix: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{path} is not valid JSON; {fix}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} does not hold a JSON object; {fix}")
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def machine_provenance() -> dict[str, Any]:
    """Git SHA of the cifarlens checkout (if any), package versions, and the machine."""

    return {
        "cifarlens": __version__,
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "packages": package_versions(("torch", "torchvision", "numpy", "safetensors")),
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_native_bf16": cpu_has_fast_bf16(),  # decides --precision auto on CPU
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """The installed version of each package (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
