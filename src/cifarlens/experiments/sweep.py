"""``cifarlens sweep``: a grid or an Optuna search over training options, each trial a normal run.

Trials are tuned on the validation split only; the test split is scored for the top
``finalists`` alone. Layout of the sweep folder::

    OUT/trials/NNN/       one run directory per trial (grid: NNN = grid index; optuna: trial number)
    OUT/trials.csv        one row per trial: state, params, val accuracy, test accuracy (finalists)
    OUT/sweep.json        the resolved sweep config, the budget plan, best trial and finalists
    OUT/study.db          the Optuna study (method optuna with the default storage)
    OUT/compare.{md,csv,png}  `cifarlens compare` of the finalists

Re-running the same command resumes: finished grid trials are skipped, an interrupted one
continues from its checkpoint, and Optuna continues the study stored in ``storage``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from rich.console import Console

from cifarlens.config import build_config, read_yaml, to_dict
from cifarlens.data import prepare_data
from cifarlens.errors import ConfigError, TrainingDiverged
from cifarlens.evaluation import evaluate_run
from cifarlens.experiments.budget import plan_budget
from cifarlens.experiments.compare import write_comparison
from cifarlens.io import atomic_write_text
from cifarlens.run import RunDir, write_json
from cifarlens.training.config import TrainConfig
from cifarlens.training.recipes import default_recipe, recipe_options, scaled_to_epochs
from cifarlens.training.run_folder import load_run_config, run_config
from cifarlens.training.trainer import resume, train

TRIALS = "trials"
AfterTraining = Callable[..., Path]  # (run folder, *, console, data) -> run folder
FORCED = ("val_size", "out", "evaluate", "eval_test_every_epoch")  # set by the sweep for every trial


@dataclass
class SweepConfig:
    base: dict = field(default_factory=dict)  # TrainConfig options every trial starts from (recipe, model, epochs, ...)
    method: Literal["grid", "optuna"] = "grid"  # grid: every combination of params; optuna: a TPE search over them
    # grid: option -> list of values (or a list of such grids); optuna: option -> {type: float|int|categorical, low,
    # high, log, step, choices}; model args as model_args.NAME
    params: Any = None
    trials: int = 20  # optuna: trials the study runs in total (over all processes sharing it)
    worker_trials: int = 0  # optuna: stop this process after N trials (0: until the study has --trials)
    val_size: int = 5000  # validation images held out of training; the objective is the last epoch's val accuracy
    finalists: int = 3  # best trials (by val accuracy) scored on the test split
    # optuna storage URL (default: sqlite:///OUT/study.db); a postgresql:// or mysql:// URL lets several machines share
    # one study
    storage: str = ""
    study_name: str = "cifarlens"  # optuna study name inside the storage
    # optuna: stop trials whose val accuracy is below the median of earlier trials at the same epoch
    pruning: bool = True
    prune_startup: int = 3  # optuna: trials that always run to the end before pruning starts
    prune_warmup: int = 1  # optuna: epochs of each trial that are never pruned
    seed: int = 0  # seed of the Optuna sampler
    # seconds the whole sweep should take on this machine: shrinks subset (then epochs) to fit (0: as configured)
    budget: float = 0.0
    out: str = "sweeps/sweep"  # sweep folder

    def validate(self) -> None:
        """Raise ``ConfigError`` for bad values; check that every parameter names a training option."""
        for name in ("val_size", "finalists", "trials"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sweep {name} must be at least 1, got {getattr(self, name)}")
        if self.worker_trials < 0 or self.budget < 0 or self.prune_startup < 0 or self.prune_warmup < 0:
            raise ConfigError("sweep worker_trials, budget, prune_startup and prune_warmup must not be negative")
        fixed = sorted(set(self.base) & set(FORCED))
        if fixed:
            raise ConfigError(f"sweep base sets {', '.join(fixed)}, which the sweep sets itself; remove it from base")
        if not self.params:
            raise ConfigError("the sweep has no params; list the options to vary under params:")
        grids = self.params if isinstance(self.params, list) else [self.params]
        if self.method == "optuna" and isinstance(self.params, list):
            raise ConfigError("optuna params must be one mapping of option: distribution, not a list")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        for grid in grids:
            if not isinstance(grid, dict) or not grid:
                raise ConfigError("sweep params must be a mapping of option: values (or a list of such mappings)")
            for key, spec in grid.items():
                name = key.split(".", 1)[0].replace("-", "_")
                if name not in known or (name == "model_args") != ("." in key):
                    raise ConfigError(
                        f"unknown sweep parameter {key!r}; use a training option (cifarlens train --help) "
                        "or model_args.NAME"
                    )
                if name in FORCED:
                    raise ConfigError(f"sweep parameter {key!r} is set by the sweep itself; remove it from params")
                if self.method == "grid" and not (isinstance(spec, list) and spec):
                    raise ConfigError(f"grid parameter {key!r} needs a non-empty list of values, got {spec!r}")
                if self.method == "optuna":
                    _check_distribution(key, spec)


def _check_distribution(key: str, spec: Any) -> None:
    kinds = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
    if not isinstance(spec, dict) or spec.get("type") not in kinds:
        raise ConfigError(f"optuna parameter {key!r} needs {{type: float|int|categorical, ...}}, got {spec!r}")
    extra = set(spec) - kinds[spec["type"]] - {"type"}
    if extra:
        raise ConfigError(f"optuna parameter {key!r}: unknown field(s) {', '.join(sorted(extra))}")
    needed = {"choices"} if spec["type"] == "categorical" else {"low", "high"}
    if not needed <= set(spec):
        raise ConfigError(f"optuna parameter {key!r} of type {spec['type']} needs {', '.join(sorted(needed))}")


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """The sweep config of a YAML file, ``overrides`` (command-line options) winning."""
    return build_config(
        SweepConfig, read_yaml(path, where="cifarlens sweep"), overrides or {}, sources=(str(path), "options")
    )


def trial_config(sweep: SweepConfig, params: dict[str, Any], out: Path, plan: dict | None = None) -> TrainConfig:
    """The training config of one trial: recipe < base < params < budget plan < what the sweep forces."""

    options = dict(sweep.base)
    model_args = dict(options.get("model_args") or {})
    for key, value in params.items():
        if key.startswith("model_args."):
            model_args[key.split(".", 1)[1]] = value
        else:
            options[key] = value
    if model_args:
        options["model_args"] = model_args
    recipe = default_recipe(options)
    options["recipe"] = recipe
    if plan:
        options["subset"] = plan["subset"]
        epochs = int(options.get("epochs") or recipe_options(recipe).get("epochs") or TrainConfig.epochs)
        options["epochs"] = max(1, round(epochs * plan["epoch_scale"]))
        options["warmup"] = min(
            float(options.get("warmup") or recipe_options(recipe).get("warmup") or 0), options["epochs"]
        )
    val_size = plan["val_size"] if plan else sweep.val_size
    forced = {"val_size": val_size, "out": str(out), "evaluate": False, "eval_test_every_epoch": False}
    preset, _ = scaled_to_epochs(recipe_options(recipe), options)
    return build_config(
        TrainConfig, preset, options, forced, sources=(f"recipe {recipe}", "sweep base/params", "sweep")
    )


def budget_plan(sweep: SweepConfig, console: Console | None = None) -> dict:
    """The plan that fits the sweep's trials into ``sweep.budget`` seconds (``experiments.budget``)."""

    points = grid_points(sweep.params) if sweep.method == "grid" else [{}] * sweep.trials
    configs = [trial_config(sweep, p, Path(sweep.out)) for p in points]
    return plan_budget(
        configs, budget=sweep.budget, val_size=sweep.val_size, finalists=sweep.finalists, console=console
    )


def grid_points(params: dict | list) -> list[dict[str, Any]]:
    """Every combination of a grid (or of each grid of a list, in order), as dicts."""
    from sklearn.model_selection import ParameterGrid

    grids = params if isinstance(params, list) else [params]
    # ParameterGrid sorts keys, so a point's order does not depend on the YAML's key order.
    return [dict(point) for point in ParameterGrid(grids)]


class _DataCache:
    """The splits of the last data settings, shared by consecutive trials that use the same ones."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.data = None

    def __call__(self, cfg: TrainConfig):

        key = (cfg.data_dir, cfg.download, cfg.subset, cfg.val_size, cfg.seed)
        if key != self.key:
            self.data = prepare_data(
                cfg.data_dir or None, download=cfg.download, subset=cfg.subset, val_size=cfg.val_size, seed=cfg.seed
            )
            self.key = key
        return self.data


def run_trial(
    cfg: TrainConfig,
    data_cache: _DataCache,
    console: Console,
    on_epoch_end=None,
    after_training: AfterTraining | None = None,
) -> Path:
    """Train one trial (or continue it from its checkpoint), then call ``after_training`` on its run folder;
    a finished one is returned as is."""

    run = RunDir(cfg.out)
    if run.has_config():
        saved = run.config
        data = data_cache(cfg)
        wanted = run_config(cfg, data)  # as the trainer wrote it, with the data folder it read
        # Where the data lies and how often it checkpoints are not options of the trial: data moved since is
        # resumed from its new folder. A key an older cifarlens did not write has its default.
        defaults = to_dict(TrainConfig())
        changed = sorted(
            k
            for k in set(saved) | set(wanted)
            if saved.get(k, defaults.get(k)) != wanted.get(k) and k not in ("data_dir", "checkpoint_every")
        )
        if changed:
            raise ConfigError(
                f"trial {run} was run with other options ({', '.join(changed)}); "
                "use another sweep out folder for a changed sweep"
            )
        if run.has_weights():
            return run.path
        if run.has_checkpoint():
            moved = {"data_dir": data.root} if saved.get("data_dir") != wanted["data_dir"] else {}
            path = resume(run.path, moved, console=console, data=data, on_epoch_end=on_epoch_end)
            return after_training(path, console=console, data=data) if after_training else path
    if run.path.exists():
        shutil.rmtree(run.path)  # a trial killed before its first checkpoint: nothing worth keeping
    path = train(cfg, console=console, data=data_cache(cfg), on_epoch_end=on_epoch_end)
    return after_training(path, console=console, data=data_cache(cfg)) if after_training else path


def run_sweep(
    sweep: SweepConfig, console: Console | None = None, after_training: AfterTraining | None = None
) -> dict[str, Any]:
    """Run (or resume) the sweep; return the content of sweep.json. ``after_training(run, console=, data=)``
    is called on each trial's run once it has trained (the command layer passes
    ``cifarlens.report.after_training``, which writes the trial's report)."""
    console = console or Console(soft_wrap=True)
    out = Path(sweep.out)
    (out / TRIALS).mkdir(parents=True, exist_ok=True)
    plan = None
    if sweep.budget:
        plan = budget_plan(sweep, console)
    trial_config(sweep, {}, out / TRIALS, plan)  # bad base options stop here, before any training
    cache = _DataCache()
    quiet = Console(file=io.StringIO()) if not console.is_terminal else console
    if sweep.method == "grid":
        return _finish(sweep, plan, _run_grid(sweep, plan, cache, console, quiet, after_training), cache, console)
    rows, verdict = _run_optuna(sweep, plan, cache, console, quiet, after_training)
    if verdict == "finish":
        return _finish(sweep, plan, rows, cache, console)
    console.print(verdict)
    return _read_result(sweep) or {"config": to_dict(sweep), "trials": len(rows), "finalists": []}


def _run_grid(
    sweep: SweepConfig, plan, cache: _DataCache, console: Console, quiet: Console, after_training: AfterTraining | None
) -> list[dict]:
    points = grid_points(sweep.params)
    configs = [trial_config(sweep, p, Path(sweep.out) / TRIALS / f"{i:03d}", plan) for i, p in enumerate(points)]
    rows = []
    for i, (params, cfg) in enumerate(zip(points, configs)):
        console.print(f"[bold]trial {i + 1}/{len(points)}[/] {_params_text(params)}")
        try:
            run = run_trial(cfg, cache, quiet, after_training=after_training)
        except TrainingDiverged as err:
            console.print(f"  [red]failed:[/] {err}")
            rows.append(_trial_row(i, "fail", params, Path(cfg.out)))
            continue
        rows.append(_trial_row(i, "complete", params, run))
        console.print(f"  val accuracy {rows[-1]['val_acc']:.2%}  ({run})")
    return rows


def _storage(sweep: SweepConfig):
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = sweep.storage or f"sqlite:///{(Path(sweep.out) / 'study.db').resolve()}"
    # SQLite: wait for another process's write lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    # A trial whose process died stops beating; it is marked failed and run again.
                    heartbeat_interval=30,
                    grace_period=120,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            # Two workers creating a new database at once race on its schema; the loser retries.
            if attempt == 4:
                raise ConfigError(
                    f"cannot open optuna storage {url!r}: {err}; check the URL and the database"
                ) from None
            time.sleep(1 + attempt)
        except (ImportError, ValueError) as err:
            raise ConfigError(
                f"cannot open optuna storage {url!r}: {err}; check the URL and its database driver"
            ) from None


def _suggest(trial, params: dict[str, dict]) -> dict[str, Any]:
    chosen = {}
    for key, spec in params.items():
        kind = spec["type"]
        if kind == "categorical":
            chosen[key] = trial.suggest_categorical(key, spec["choices"])
        elif kind == "float":
            chosen[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")), step=spec.get("step")
            )
        else:
            chosen[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")), step=int(spec.get("step", 1))
            )
    return chosen


def _run_optuna(
    sweep: SweepConfig, plan, cache: _DataCache, console: Console, quiet: Console, after_training: AfterTraining | None
) -> tuple[list[dict], str]:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=sweep.prune_startup, n_warmup_steps=sweep.prune_warmup)
        if sweep.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=_storage(sweep),
        study_name=sweep.study_name,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    # A process joining a study already holding trials gets its own seed, so workers do not repeat each other.
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + len(study.get_trials(deepcopy=False)))
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial) -> float:
        params = _suggest(trial, sweep.params)
        cfg = trial_config(sweep, params, Path(sweep.out) / TRIALS / f"{trial.number:04d}", plan)
        trial.set_user_attr("run", cfg.out)
        trial.set_user_attr("worker", worker)
        console.print(f"[bold]trial {trial.number}[/] {_params_text(params)}")

        def report(row: dict) -> None:
            trial.report(row["val_acc"], row["epoch"])
            if trial.should_prune():
                console.print(f"  pruned after epoch {row['epoch']}: val accuracy {row['val_acc']:.2%}")
                raise optuna.TrialPruned()

        run = run_trial(cfg, cache, quiet, report if sweep.pruning else None, after_training)
        value = RunDir(run).val_acc
        console.print(f"  val accuracy {value:.2%}  ({run})")
        return value

    done_here = 0
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    while len(study.get_trials(deepcopy=False, states=live)) < sweep.trials:
        if sweep.worker_trials and done_here >= sweep.worker_trials:
            break
        study.optimize(objective, n_trials=1, catch=(TrainingDiverged,))
        done_here += 1
    trials = study.get_trials(deepcopy=False)
    rows = [
        _trial_row(
            t.number,
            t.state.name.lower(),
            t.params,
            Path(t.user_attrs.get("run", "")),
            worker=t.user_attrs.get("worker", ""),
        )
        for t in trials
    ]
    return rows, _verdict(sweep, trials, worker, done_here)


def _verdict(sweep: SweepConfig, trials: list, worker: str, done_here: int) -> str:
    """``"finish"`` when this process is the one to score the finalists and write the sweep's files, else the
    line saying why not. That is the worker whose trial ended last, once every trial has ended and the
    study holds its ``trials``: every worker sees the same study then, so exactly one finishes, without
    a lock; a worker that ran nothing finishes only a sweep whose files were never written."""
    from optuna.trial import TrialState

    unfinished = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    counted = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if unfinished:
        return (
            f"trial(s) {', '.join(map(str, unfinished))} still running in other workers: the last worker to end "
            "scores the finalists and writes trials.csv and sweep.json"
        )
    if counted < sweep.trials:
        return (
            f"the study holds {counted} of {sweep.trials} trials: a worker still running adds the rest, "
            "or run the sweep again to go on"
        )
    ended = [t for t in trials if t.datetime_complete is not None]
    last = max(ended, key=lambda t: (t.datetime_complete, t.number))
    if last.user_attrs.get("worker") == worker:
        return "finish"
    if done_here == 0 and _read_result(sweep) is None:
        return "finish"
    if done_here == 0:
        return f"the sweep is complete ({counted} trials); {sweep.out}/sweep.json is unchanged"
    return f"trial {last.number} ended last, in worker {last.user_attrs.get('worker')}: it scores the finalists"


def _read_result(sweep: SweepConfig) -> dict[str, Any] | None:
    """sweep.json as the finishing worker wrote it, or None before it has."""
    path = Path(sweep.out) / "sweep.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _trial_row(number: int, state: str, params: dict, run: Path, worker: str = "") -> dict:
    trial = RunDir(run)
    metrics = trial.read_metrics() if run.name else []
    return {
        "trial": number,
        "state": state,
        "val_acc": trial.val_acc if metrics else None,
        "epochs": len(metrics),
        "params": params,
        "run": str(run) if run.name else "",
        "worker": worker,
    }


def _finish(sweep: SweepConfig, plan, rows: list[dict], cache: _DataCache, console: Console) -> dict[str, Any]:
    """Score the finalists on test, write trials.csv, sweep.json and the compare table of the finalists."""

    done = [r for r in rows if r["state"] == "complete" and r["val_acc"] is not None and Path(r["run"]).is_dir()]
    done.sort(key=lambda r: -r["val_acc"])
    finalists = done[: sweep.finalists]
    quiet = Console(file=io.StringIO())
    for row in finalists:
        run = RunDir(row["run"])
        summary = run.read_summary()
        if "test" not in summary:
            cfg = load_run_config(run.path)
            summary["test"] = evaluate_run(run.path, split="test", data=cache(cfg), console=quiet)
        row["test_acc"] = summary["test"]["accuracy"]
    _write_trials_csv(Path(sweep.out) / "trials.csv", rows)
    result = {
        "config": to_dict(sweep),
        "budget_plan": plan,
        "trials": len(rows),
        "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "best": finalists[0] if finalists else None,
        "finalists": finalists,
    }
    write_json(Path(sweep.out) / "sweep.json", result)
    if finalists:
        table = write_comparison([Path(r["run"]) for r in finalists], Path(sweep.out) / "compare")
        console.print("finalists on the test split:")
        console.print(table, markup=False, highlight=False)
    console.print(f"wrote {sweep.out}/trials.csv, sweep.json" + (", compare.md/.csv/.png" if finalists else ""))
    return result


def _write_trials_csv(path: Path, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r["params"]})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "state", *keys, "epochs", "val_acc", "test_acc", "worker", "run"])
    for r in sorted(rows, key=lambda r: r["trial"]):
        writer.writerow(
            [
                r["trial"],
                r["state"],
                *(r["params"].get(k, "") for k in keys),
                r["epochs"],
                _fmt(r["val_acc"]),
                _fmt(r.get("test_acc")),
                r["worker"],
                r["run"],
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _params_text(params: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in params.items())
