"""The frontier as a picture: held-out accuracy against training time, one machine per figure (issue 27).

Reads runs from
  * JSON files that map a recipe key to a list of runs, each with ``seed``, ``train_clock`` (seconds) and the
    accuracy named by ``--metric`` as a fraction (``benchmarks/results/clean_pixels_runs_epyc_bf16.json`` is one);
  * ``--runs-dir DIR``: every run directory in DIR named ``KEY-sSEED`` (``ab5-s0``, ``ab7-s1``) that was scored
    with ``cifarlens evaluate RUN --split val --tta-translate``; its time is the last ``train_clock`` of
    metrics.csv, its machine comes from provenance.json.
Runs without the metric are left out (named on stderr): a mirror-only TTA score is not the same measure.

Draws every run faded, each recipe's mean with a std bar in both axes (hollow: one seed), a line through
airbench94 and its cuts to fewer epochs (keys ``abN``), and the Pareto front of the ``fast`` family (recipes that
change ``fast``'s early-size, early-epochs, epochs or batch settings). The top axis gives the time as a ratio to
the reference's mean. Prints a Markdown table with each recipe's accuracy minus the reference's on the same seeds
(the same held-out split), and writes it to ``--table`` if given.

Times from different machines, or from before and after a trainer speed-up, do not compare: plot one machine
and one trainer version per figure, and name the CPU with ``--machine`` when the inputs do not record it.

    python benchmarks/frontier.py --out benchmarks/results/frontier_epyc_bf16.png --table /tmp/frontier.md
    python benchmarks/frontier.py --runs-dir /work/benchruns --out frontier_new.png --save-runs runs.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.transforms import Bbox

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "clean_pixels_runs_epyc_bf16.json"
DEFAULT_MACHINE = "AMD EPYC Zen 4, 2 vCPUs, AVX512-BF16, bf16 autocast"  # the machine of DEFAULT_JSON's runs
METRIC_LABELS = {
    "val_tta_translate": "held-out accuracy, TTA with mirrors + 1-px shifts (%)",
    "val_tta": "held-out accuracy, mirror TTA (%)",
    "val": "held-out accuracy, no TTA (%)",
}
SETTINGS = {  # what each key of the runs JSON changes (BENCHMARKS.md, "A 94% recipe on clean pixels")
    "airbench94": "8 ep at 32 px",
    "fast": "5 of 8 ep resized to 24 px",
    "fast94": "5 of 8 ep cropped to 24 px",
    "fast94r9": "6 of 9 ep resized to 24 px",
    "fast94r20": "6 of 9 ep resized to 20 px",
    "fast10e20": "7 of 10 ep resized to 20 px",
    "f10e6": "6 of 10 ep resized to 24 px",
    "ramp20e5": "5 of 8 ep ramped 20, 20, 24, 24, 28 px",
    "b1000": "`fast` at batch 1000",
    "la3": "`fast` + lookahead (scratch patch)",
    "w240e4": "widths 64/240/240, 4 of 8 ep at 24 px",
    "w192": "airbench94 at widths 64/192/192",
    "prune5": "airbench94 + loss-based pruning (scratch patch)",
}
FAST_FAMILY = {"fast", "fast94", "fast94r9", "fast94r20", "fast10e20", "f10e6", "ramp20e5", "b1000"}
AB_CUT = re.compile(r"ab(\d+)$")
COLORS = {"airbench": "tab:blue", "fast": "tab:orange", "other": "tab:gray"}


@dataclass
class Run:
    recipe: str
    seed: int
    seconds: float
    acc: float  # percent
    epochs: int | None = None
    settings: str = ""
    machine: str = ""


@dataclass
class Recipe:
    name: str
    family: str
    settings: str
    runs: list[Run] = field(default_factory=list)

    def mean_std(self, attr: str) -> tuple[float, float]:
        values = [getattr(r, attr) for r in self.runs]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def by_seed(self) -> dict[int, float]:
        return {r.seed: r.acc for r in self.runs}


# -- reading -------------------------------------------------------------------------------------------------
def load_json(path: Path, metric: str) -> list[Run]:
    """Runs from a JSON that maps recipe keys to lists of runs; other keys are ignored."""
    runs = []
    for key, items in json.loads(path.read_text()).items():
        if not (isinstance(items, list) and items and isinstance(items[0], dict) and "seed" in items[0]):
            continue
        for item in items:
            if item.get(metric) is None:
                print(f"skipped {path.name}:{item.get('run', key)}: no {metric}", file=sys.stderr)
                continue
            runs.append(
                Run(
                    key,
                    int(item["seed"]),
                    float(item["train_clock"]),
                    100 * float(item[metric]),
                    item.get("epochs"),
                    item.get("settings", ""),
                    item.get("machine", ""),
                )
            )
    return runs


def save_runs(runs: list[Run], path: Path, metric: str) -> None:
    """The runs as a JSON that ``load_json`` reads back: the figure can be redrawn from benchmarks/results
    after the run directories are gone."""
    out: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (r.recipe, r.seed)):
        out.setdefault(r.recipe, []).append(
            {
                "seed": r.seed,
                "train_clock": round(r.seconds, 3),
                metric: r.acc / 100,
                "epochs": r.epochs,
                "settings": r.settings,
                "machine": r.machine,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


def load_run_dirs(folder: Path, metric: str) -> list[Run]:
    """Runs from the cifarlens run directories named KEY-sSEED in ``folder``."""
    from cifarlens.run.directory import RunDir

    runs = []
    for path in sorted(p for p in folder.iterdir() if (p / RunDir.SUMMARY).is_file()):
        name = re.fullmatch(r"(.+)-s(\d+)", path.name)
        run = RunDir(path)
        if name is None or metric not in run.summary:
            print(f"skipped {path}: {'no ' + metric if name else 'not named KEY-sSEED'}", file=sys.stderr)
            continue
        config, prov = run.config, run.provenance
        machine = f"{prov.get('processor')}, {'native bf16' if prov.get('cpu_native_bf16') else 'no native bf16'}"
        runs.append(
            Run(
                name[1],
                int(name[2]),
                float(run.metrics[-1]["train_clock"]),
                100 * float(run.summary[metric]["accuracy"]),
                int(config["epochs"]),
                describe(config),
                f"{machine}, {prov.get('precision')}",
            )
        )
    return runs


def describe(config: dict) -> str:
    """A run's settings in the words of the SETTINGS column."""
    text = f"{config.get('recipe')}, {config['epochs']} ep"
    if config.get("early_epochs"):
        text += f", {config['early_epochs']} at {config['early_size']} px ({config.get('early_mode')})"
    return text + (f", batch {config['batch_size']}" if config.get("batch_size") not in (None, 2000) else "")


def merge(runs: list[Run]) -> list[Run]:
    """One run per (recipe, seed): a later input replaces an earlier one, with a note on stderr."""
    kept: dict[tuple[str, int], Run] = {}
    for run in runs:
        if (run.recipe, run.seed) in kept:
            print(f"{run.recipe} seed {run.seed} given twice: the later input is kept", file=sys.stderr)
        kept[(run.recipe, run.seed)] = run
    return list(kept.values())


def machine_name(runs: list[Run], given: str | None, default_inputs: bool) -> str:
    """The CPU for the title; an error if the run directories come from more than one machine, or if runs that
    record their machine join runs that do not and ``--machine`` does not vouch for both."""
    recorded = sorted({r.machine for r in runs if r.machine})
    if len(recorded) > 1:
        sys.exit(f"runs from {len(recorded)} machines ({'; '.join(recorded)}): plot one machine per figure")
    if recorded and not given and any(not r.machine for r in runs):
        sys.exit(
            f"the JSON runs do not record their machine; if it is {recorded[0]!r}, and the trainer the same, "
            "say so with --machine"
        )
    if given:
        return given
    if recorded:
        return recorded[0]
    return DEFAULT_MACHINE if default_inputs else "machine not recorded: name it with --machine"


# -- summarising ---------------------------------------------------------------------------------------------
def family(name: str, reference: str) -> str:
    if name == reference or AB_CUT.match(name):
        return "airbench"
    return "fast" if name in FAST_FAMILY or name.startswith("fast") else "other"


def settings(name: str, runs: list[Run]) -> str:
    if name in SETTINGS:
        return SETTINGS[name]
    if AB_CUT.match(name):
        return f"airbench94 cut to {AB_CUT.match(name)[1]} ep"
    return runs[0].settings or (f"{runs[0].epochs} ep" if runs[0].epochs else "")


def group(runs: list[Run], reference: str) -> list[Recipe]:
    names = sorted({r.recipe for r in runs})
    recipes = [Recipe(n, family(n, reference), "", [r for r in runs if r.recipe == n]) for n in names]
    for recipe in recipes:
        recipe.runs.sort(key=lambda r: r.seed)
        recipe.settings = settings(recipe.name, recipe.runs)
    order = {"airbench": 0, "fast": 1, "other": 2}
    return sorted(recipes, key=lambda r: (r.name != reference, order[r.family], r.mean_std("seconds")[0]))


def paired_difference(recipe: Recipe, reference: Recipe) -> list[float]:
    """Accuracy minus the reference's on each seed both have (the same held-out split)."""
    ref = reference.by_seed()
    return [acc - ref[seed] for seed, acc in recipe.by_seed().items() if seed in ref]


def paired_time_ratio(recipe: Recipe, reference: Recipe) -> list[float]:
    """Training clock over the reference's on each seed both have: a pair run back to back shares its slow spells."""
    ref = {r.seed: r.seconds for r in reference.runs}
    return [r.seconds / ref[r.seed] for r in recipe.runs if r.seed in ref]


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (time, accuracy) points that no faster point matches on accuracy, fastest first."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def airbench_line(recipes: list[Recipe]) -> list[Recipe]:
    """airbench94 and its epoch cuts, in order of epochs."""
    return sorted((r for r in recipes if r.family == "airbench"), key=epochs)


def epochs(recipe: Recipe) -> int:
    """The epochs of a recipe: from the key for ``abN``, else from its runs (0 when not recorded)."""
    cut = AB_CUT.match(recipe.name)
    return int(cut[1]) if cut else recipe.runs[0].epochs or 0


# -- the table -----------------------------------------------------------------------------------------------
def pm(mean: float, std: float, n: int, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def table(recipes: list[Recipe], reference: Recipe) -> str:
    ref_s = reference.mean_std("seconds")[0]
    name = reference.name
    lines = [
        f"| recipe | settings | seeds | held-out % | training clock s | vs {name} | minus {name}, same seed (n) "
        f"| clock / {name}'s, same seed |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in recipes:
        n, diffs = len(r.runs), [] if r is reference else paired_difference(r, reference)
        paired = f"{pm(statistics.mean(diffs), _std(diffs), len(diffs))} ({len(diffs)})" if diffs else "-"
        ratios = [] if r is reference else paired_time_ratio(r, reference)
        time_paired = f"{pm(statistics.mean(ratios), _std(ratios), len(ratios))}x" if ratios else "-"
        lines.append(
            f"| {r.name} | {r.settings} | {', '.join(str(x.seed) for x in r.runs)} | {pm(*r.mean_std('acc'), n)} "
            f"| {pm(*r.mean_std('seconds'), n, 0)} | {r.mean_std('seconds')[0] / ref_s:.2f}x | {paired} "
            f"| {time_paired} |"
        )
    return "\n".join(lines) + "\n"


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


# -- the figure ----------------------------------------------------------------------------------------------
def plot(recipes: list[Recipe], reference: Recipe, out: Path, machine: str, metric: str, bar: float) -> None:
    """Two panels on one time axis: the accuracy itself, and minus the reference's on the same seeds."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 10), sharex=True, layout="constrained", gridspec_kw={"height_ratios": [1, 1]}
    )
    ref = reference.by_seed()
    labels = panel(top, recipes, lambda r: [(x.seconds, x.acc) for x in r.runs], lambda r: r.name)
    labels += panel(
        bottom,
        recipes,
        lambda r: [(x.seconds, x.acc - ref[x.seed]) for x in r.runs if x.seed in ref],
        lambda r: f"{r.name} ({len(paired_difference(r, reference))})",
    )
    ref_s = reference.mean_std("seconds")[0]
    for ax, level in ((top, reference.mean_std("acc")[0]), (bottom, 0.0)):
        ax.axhline(level, color=COLORS["airbench"], lw=0.8, ls=":", zorder=0)
        if bar:
            ax.axvline(bar * ref_s, color="k", lw=0.8, ls=":", zorder=0)
        ax.grid(alpha=0.3)
    ratio = top.secondary_xaxis("top", functions=(lambda s: s / ref_s, lambda x: x * ref_s))
    ratio.set_xlabel(f"time / {reference.name}'s mean time" + (f" (dotted: {bar:g}x)" if bar else ""))
    top.set_ylabel(METRIC_LABELS.get(metric, metric) + "\non 5,000 held-out training images")
    bottom.set_ylabel(f"minus {reference.name} on the same seed (points)\nlabels: recipe (seeds paired)")
    bottom.set_xlabel("training clock, s (the trainer's clock without per-epoch evaluations)")
    top.set_title(
        f"Held-out accuracy against training time on {machine}\n"
        f"top: each recipe's mean ± std over seeds; bottom: paired with {reference.name} by seed "
        "(the same held-out split)",
        fontsize=11,
    )
    legend(top, reference, recipes)
    place_labels(fig, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def panel(ax, recipes: list[Recipe], points, name) -> list[tuple]:
    """Each recipe's points (faded) and their mean with a std bar in both axes (hollow: one point); the
    airbench94 line and the fast family's front through the means. Returns the labels to place."""
    means, labels = {}, []
    for r in recipes:
        if not (pairs := points(r)):
            continue
        xs, ys = zip(*pairs)
        color = COLORS[r.family]
        ax.scatter(xs, ys, s=16, color=color, alpha=0.3, lw=0, zorder=1)
        means[r.name] = statistics.mean(xs), statistics.mean(ys)
        ax.errorbar(
            *means[r.name],
            xerr=_std(xs),
            yerr=_std(ys),
            fmt="o",
            color=color,
            ms=7,
            capsize=2,
            lw=1,
            elinewidth=0.8,
            zorder=3,
            mfc=color if len(xs) > 1 else "white",
        )
        labels.append((ax, *means[r.name], name(r), color))
    line = [means[r.name] for r in airbench_line(recipes) if r.name in means]
    ax.plot(*zip(*line), color=COLORS["airbench"], lw=1.5, zorder=2)
    front = pareto([means[r.name] for r in recipes if r.family == "fast" and r.name in means])
    ax.plot(*zip(*front), color=COLORS["fast"], lw=1.5, ls="--", zorder=2)
    return labels


def legend(ax, reference: Recipe, recipes: list[Recipe]) -> None:
    cuts = ", ".join(str(epochs(r)) for r in airbench_line(recipes))
    handles = [
        ax.plot([], [], "-o", color=COLORS["airbench"], label=f"{reference.name} cut to fewer epochs ({cuts} ep)")[0],
        ax.plot([], [], "--o", color=COLORS["fast"], label="fast family (early size, epochs, batch): Pareto front")[0],
        ax.plot([], [], "o", color=COLORS["other"], label="other levers (width, lookahead, pruning)")[0],
        ax.plot([], [], "o", mfc="white", color="k", label="hollow: one seed; bars: std over seeds; faded: runs")[0],
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=9)


OFFSETS = [(6, 5), (6, -9), (-6, 5), (-6, -9), (6, 14), (6, -18), (-6, 14), (-6, -18), (6, 23), (6, -27)]


def place_labels(fig, labels: list[tuple]) -> None:
    """Put each label beside its point where it overlaps no label placed before it (first fit of OFFSETS)."""
    fig.canvas.draw()  # settle the layout, so that display coordinates hold
    renderer = fig.canvas.get_renderer()
    taken = [Bbox.from_bounds(*(ax.transData.transform((x, y)) - 5), 10, 10) for ax, x, y, *_ in labels]  # markers
    for ax, x, y, text, color in labels:
        for dx, dy in OFFSETS:
            note = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=8,
                color=color,
                ha="left" if dx > 0 else "right",
                va="center",
                zorder=4,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
            )
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken) or (dx, dy) == OFFSETS[-1]:
                break
            note.remove()
        taken.append(box)


# -- command line --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", type=Path, help=f"runs JSON files (default: {DEFAULT_JSON.name})")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of cifarlens run directories KEY-sSEED to add (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--table", type=Path, help="also write the Markdown table here")
    parser.add_argument("--metric", default="val_tta_translate", help="accuracy key (default: val_tta_translate)")
    parser.add_argument("--reference", default="airbench94", help="the recipe the others are compared with")
    parser.add_argument("--machine", help="the CPU for the title (default: what the inputs record)")
    parser.add_argument("--save-runs", type=Path, help="also write the runs read, as a JSON these inputs accept")
    parser.add_argument("--bar", type=float, default=0.7, help="draw a line at this time ratio (0: none)")
    args = parser.parse_args(argv)

    default_inputs = not args.inputs and not args.runs_dir
    inputs = [DEFAULT_JSON] if default_inputs else args.inputs
    for path in [*inputs, *args.runs_dir]:
        if not path.exists():
            sys.exit(f"{path} not found: pass runs JSON files (benchmarks/results/) and folders of run directories")
    runs = []
    for path in inputs:
        try:
            runs += load_json(path, args.metric)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            sys.exit(
                f"{path} is not a runs JSON ({type(err).__name__}: {err}): each key maps to runs with seed, "
                f"train_clock and {args.metric}"
            )
    runs += [r for folder in args.runs_dir for r in load_run_dirs(folder, args.metric)]
    runs = merge(runs)
    recipes = group(runs, args.reference)
    reference = next((r for r in recipes if r.name == args.reference), None)
    if reference is None:
        sys.exit(f"no runs of the reference {args.reference!r}: the ratios and paired differences need it")
    machine = machine_name(runs, args.machine, default_inputs)
    if args.save_runs:
        save_runs(runs, args.save_runs, args.metric)
    plot(recipes, reference, args.out, machine, args.metric, args.bar)
    text = f"Held-out accuracy ({args.metric}) and training clock on {machine}\n\n" + table(recipes, reference)
    print(text, end="")
    if args.table:
        args.table.write_text(text)


if __name__ == "__main__":
    main()
