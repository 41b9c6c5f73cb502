"""Rank attribution methods on one model: how faithful their maps are, whether they pass the sanity check,
and what they cost, on the same seeded test images, beside two reference maps every method must beat.

``rank(run, methods=..., n=500) -> RankResult``; ``rank_maps(model, x, targets, methods, ...)`` is the same
for any model and normalised batch x (N, 3, H, W). The measures, one row per method:

* ``deletion_auc`` / ``insertion_auc``: the probability of the explained class as the most-attributed pixels
  are removed (set to the mean) or revealed (from a blurred copy); Petsiuk et al. 2018, as ``explain cam``;
* ``road_morf`` / ``road_lerf``: ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for
  attribution methods"), grad-cam's implementation: the most (MoRF) or least (LeRF) relevant pixels are
  replaced by a noisy linear imputation of their neighbours, which leaks no mask shape to the model; the
  change in the class probability averaged over ``road_percentiles`` (MoRF: more negative is more
  faithful; LeRF: nearer 0 is);
* ``randomisation_corr_head`` / ``randomisation_corr_all``: model-parameter randomisation (Adebayo et al.
  2018, "Sanity checks for saliency maps"), cascading from the head down: the mean over images of the
  Spearman rank correlation between a method's map on the trained model and on a copy whose head (then
  every layer) is re-initialised. A map that stays correlated with the randomised model's shows the image
  more than what the model learned: it fails the check when ``randomisation_corr_all`` >= ``sanity_threshold``;
* ``ms_per_image``: the method's time on the trained model, on the run's device.

The references are ``random`` (grad-cam's RandomCAM at the CAM layer: random channel weights, so it has the
real maps' resolution; a pixel-wise random map would be an unfair reference, as scattered deletions destroy
an image faster than any region does) and ``centre`` (a centred Gaussian, the trivial prior for centred
CIFAR objects). A method beats a reference when both of its summary scores are higher: insertion minus
deletion AUC, and ROAD's LeRF minus MoRF. Rows are ordered by the mean of the two scores' ranks.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cifarlens.errors import CifarlensError
from cifarlens.explain.attribution import METHODS, attribute_maps, check_methods, method_notes, without_inplace
from cifarlens.explain.cam import METHODS as CAM_METHODS
from cifarlens.explain.cam import RANDOM, CamExplainer
from cifarlens.explain.faithfulness import DeletionInsertion
from cifarlens.explain.plots import plot_rank
from cifarlens.explain.run_model import load_run_model
from cifarlens.io import atomic_write_csv, atomic_write_text
from cifarlens.models.layers import check_hookable
from cifarlens.models.registry import Capabilities
from cifarlens.run import RunDir, write_json
from cifarlens.run.predictor import Predictor

REFERENCES = ("random", "centre")
CASCADE = ("head", "all")  # what is re-initialised, from the head down
ROAD_PERCENTILES = (10, 30, 50, 70, 90)
CENTRE_SIGMA = 0.25  # the centre reference's Gaussian: standard deviation as a fraction of the image side


@dataclass
class RankSettings:
    """How ``rank_maps`` scores; every field but ``road_percentiles`` is an ``explain rank`` option."""

    steps: int = 16  # points on each deletion/insertion curve
    road_percentiles: tuple[int, ...] = ROAD_PERCENTILES  # share of pixels ROAD imputes, averaged over
    sanity_threshold: float = 0.5  # randomisation_corr_all at or above this fails the sanity check
    # images the randomisation check runs on (the first of the N; 0: all): it costs two more maps each
    sanity_n: int = 100
    batch_size: int = 32  # images per attribution call: bounds the memory of perturbation methods
    baseline: str = "black"  # integrated-gradients, deeplift, occlusion ... (see explain attribute)
    target_layer: str | None = None  # CAM methods and the random reference (None: the model's declared layer)
    seed: int = 0  # sampling methods, the random reference, ROAD's noise and the re-initialised weights


# -- references and randomised models ----------------------------------------------------------------------------
def centre_maps(n: int, height: int, width: int) -> np.ndarray:
    """(n, height, width): a Gaussian centred on the image, standard deviation CENTRE_SIGMA of its side."""
    ys = (np.arange(height) - (height - 1) / 2) / (CENTRE_SIGMA * height)
    xs = (np.arange(width) - (width - 1) / 2) / (CENTRE_SIGMA * width)
    gauss = np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)
    return np.repeat(gauss[None], n, axis=0)


def reference_maps(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    targets: list[int],
    *,
    capabilities: Capabilities,
    target_layer: str | None,
    seed: int,
) -> np.ndarray:
    """The ``random`` or ``centre`` reference maps (N, H, W) for normalised x (N, 3, H, W)."""
    if name == "centre":
        return centre_maps(len(x), *x.shape[-2:])

    explainer = CamExplainer(
        without_inplace(model),
        RANDOM,
        capabilities=capabilities,
        target_layer=target_layer,
        image_size=x.shape[-1],
        seed=seed,
    )
    return explainer(x, targets)


def cascade_modules(model: nn.Module, capabilities: Capabilities) -> dict[str, list[str]]:
    """What each cascade step re-initialises: ``head`` the classifier's top-level module, ``all`` every
    top-level module (each holds its sub-modules)."""
    return {"head": [capabilities.head], "all": [name for name, _ in model.named_children()]}


def randomised(model: nn.Module, modules: Sequence[str], seed: int) -> nn.Module:
    """A copy of ``model`` whose ``modules`` (names) have every parameter re-initialised, seeded.

    Each layer's own ``reset_parameters`` draws the weights (as at construction; BatchNorm's running
    statistics are reset too); a module with parameters but no ``reset_parameters`` (timm's layer scales ...)
    gets each of its own parameters redrawn from a zero-mean normal with that parameter's standard deviation
    (a constant one, such as a freshly initialised scale, is kept)."""
    copied = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name in modules:
            for module in copied.get_submodule(name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                else:
                    for p in module.parameters(recurse=False):
                        spread = float(p.std()) if p.numel() > 1 else 0.0
                        if spread > 0:
                            p.normal_(0.0, spread)
    return copied


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps a[i], b[i] (N, H, W) -> (N,); ties get their mean
    rank; a constant map shares no ranking with anything, so its correlation is 0."""
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.where(denominator > 0, (ra * rb).sum(1) / np.where(denominator > 0, denominator, 1), 0.0)


# -- faithfulness ---------------------------------------------------------------------------------------------------
def road_scores(
    model: nn.Module, x: torch.Tensor, maps: np.ndarray, targets: list[int], *, percentiles: Sequence[int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """ROAD through grad-cam: per image (N,) the mean change in the explained class's probability when
    the most relevant (MoRF) or least relevant (LeRF) pixels are imputed, over ``percentiles`` (at p, MoRF
    keeps the p% least relevant pixels and LeRF the p% most relevant)."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    scaled = maps / np.maximum(maps.reshape(len(maps), -1).max(1), 1e-12)[:, None, None]  # LeRF inverts 1 - map
    with torch.no_grad():  # the probability before imputation, once (grad-cam's own averager redoes it per percentile)
        picked = torch.arange(len(x), device=x.device), torch.as_tensor(targets, device=x.device)
        before = model(x).softmax(1)[picked].cpu().numpy()
    scores = {}
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # the imputer's noise comes from torch's global generator
        # grad-cam passes a torch tensor to np.float32, which NumPy 2 warns about once per image
        warnings.filterwarnings("ignore", message=r"__array_wrap__", category=DeprecationWarning)
        for order, metric in (("morf", ROADMostRelevantFirst), ("lerf", ROADLeastRelevantFirst)):
            after = [metric(p)(x, scaled, wanted, model, return_diff=False) for p in percentiles]
            scores[order] = np.mean(np.asarray(after, dtype=np.float64), axis=0) - before
    return scores["morf"], scores["lerf"]


@dataclass
class MethodScores:
    """Per-image numbers of one method (or reference) on the N images, summed up by ``row``."""

    method: str
    library: str
    deletion_auc: list[float] = field(default_factory=list)
    insertion_auc: list[float] = field(default_factory=list)
    road_morf: list[float] = field(default_factory=list)
    road_lerf: list[float] = field(default_factory=list)
    randomisation: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in CASCADE})
    seconds: float = 0.0
    images: int = 0
    curves: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"deletion": [], "insertion": []})

    def row(self) -> dict:
        mean = lambda values: float(np.mean(values)) if len(values) else float("nan")  # noqa: E731
        return {
            "method": self.method,
            "library": self.library,
            "deletion_auc": mean(self.deletion_auc),
            "insertion_auc": mean(self.insertion_auc),
            "road_morf": mean(self.road_morf),
            "road_lerf": mean(self.road_lerf),
            **{f"randomisation_corr_{step}": mean(v) for step, v in self.randomisation.items()},
            "ms_per_image": 1000 * self.seconds / max(self.images, 1),
        }


RANK_HEADER = (
    "rank",
    "method",
    "library",
    "deletion AUC (low)",
    "insertion AUC (high)",
    "ROAD MoRF (low)",
    "ROAD LeRF (high)",
    "randomisation corr: head",
    "all",
    "ms / image",
    "verdict",
)


def rank_cells(row: dict) -> list[str]:
    """A ranking row as the text of its cells, in ``RANK_HEADER`` order."""
    return [
        str(row["rank"]),
        row["method"],
        row["library"],
        f"{row['deletion_auc']:.3f}",
        f"{row['insertion_auc']:.3f}",
        f"{row['road_morf']:+.3f}",
        f"{row['road_lerf']:+.3f}",
        f"{row['randomisation_corr_head']:.2f}",
        f"{row['randomisation_corr_all']:.2f}",
        f"{row['ms_per_image']:.1f}",
        row["verdict"],
    ]


@dataclass
class RankResult:
    """The ranking table (``rows``, best first; references included), its settings and the images used."""

    model_name: str
    split: str
    indices: list[int]
    settings: RankSettings
    rows: list[dict]
    curves: dict[str, dict[str, list[float]]]  # method -> deletion/insertion: the mean curve
    device: str
    notes: list[str] = field(default_factory=list)  # what a reader of the table should know (methods left out ...)
    planned: int = 0  # images the ranking set out to score, when it is a partial table of fewer (else 0)

    def markdown(self) -> str:
        """The table as GitHub markdown (what rank.md holds)."""
        lines = ["| " + " | ".join(RANK_HEADER) + " |", "|" + "---|" * len(RANK_HEADER)]
        for r in self.rows:
            cells = rank_cells(r)
            cells[1] = f"`{cells[1]}`"
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def title(self) -> str:
        sanity = f"{self.settings.sanity_n} of them" if 0 < self.settings.sanity_n < len(self.indices) else "all"
        partial = f", PARTIAL: the first {len(self.indices)} of {self.planned} images" if self.planned else ""
        return (
            f"{self.model_name}: attribution methods on {len(self.indices)} seeded {self.split} images "
            f"(seed {self.settings.seed}; sanity on {sanity}; {self.device}{partial})"
        )

    def write(self, folder) -> list:
        """rank.md, rank.csv (first column: the method), rank.png (the chart) and rank.json into ``folder``."""

        folder = Path(folder)
        paths = {kind: folder / name for kind, name in RunDir.RANK_FILES.items()}
        notes = "".join(f"\nNote: {note}\n" for note in self.notes)
        atomic_write_text(paths["markdown"], f"{self.title()}\n\n{self.markdown()}{notes}")
        atomic_write_csv(paths["table"], self.rows)
        plot_rank(self.rows, paths["chart"], title=self.title(), threshold=self.settings.sanity_threshold)
        write_json(
            paths["numbers"],
            {
                "model": self.model_name,
                "split": self.split,
                "indices": self.indices,
                "planned": self.planned or len(self.indices),
                "device": self.device,
                "settings": self.settings.__dict__,
                "rows": self.rows,
                "notes": self.notes,
                "curves": self.curves,
            },
        )
        return list(paths.values())


# -- the ranking ----------------------------------------------------------------------------------------------------
def rank_maps(
    model: nn.Module,
    x: torch.Tensor,
    targets: list[int],
    methods: list[str],
    *,
    capabilities: Capabilities,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: RankSettings | None = None,
    on_batch: Callable[[int, int, list[dict], dict], None] | None = None,
) -> tuple[list[dict], dict]:
    """Score ``methods`` and the references on normalised x (N, 3, H, W) explaining ``targets``: (rows best
    first, mean deletion/insertion curves per method). ``on_batch(done, total, rows, curves)`` gets the table of
    the first ``done`` images after each batch."""

    settings = settings or RankSettings()
    check_methods(methods)
    check_hookable(model)  # the random reference is a CAM
    model = model.eval()
    randomised_models = {
        step: randomised(model, names, settings.seed) for step, names in cascade_modules(model, capabilities).items()
    }
    scores = {m: MethodScores(m, METHODS[m].library) for m in methods}
    scores |= {r: MethodScores(r, "reference") for r in REFERENCES}
    metric = DeletionInsertion(model, steps=settings.steps)
    sanity_n = settings.sanity_n or len(x)
    for start in range(0, len(x), settings.batch_size):
        xb, tb = x[start : start + settings.batch_size], targets[start : start + settings.batch_size]
        sane = max(0, min(len(xb), sanity_n - start))  # images of this batch the randomisation check sees
        maps = _maps(model, xb, tb, methods, capabilities, mean, std, settings, scores)
        for step, random_model in randomised_models.items():
            again = (
                _maps(random_model, xb[:sane], tb[:sane], methods, capabilities, mean, std, settings) if sane else {}
            )
            for name, m in again.items():
                scores[name].randomisation[step].extend(spearman_rows(maps[name][:sane], m).tolist())
        for name, m in maps.items():
            _faithfulness(scores[name], metric, model, xb, m, tb, settings)
        if on_batch:
            on_batch(min(start + settings.batch_size, len(x)), len(x), *_table(scores, settings))
    return _table(scores, settings)


def _table(scores: dict[str, MethodScores], settings: RankSettings) -> tuple[list[dict], dict]:
    rows = order([s.row() for s in scores.values()], settings.sanity_threshold)
    curves = {name: {k: np.mean(v, axis=0).tolist() for k, v in s.curves.items()} for name, s in scores.items()}
    return rows, curves


def _maps(model, x, targets, methods, capabilities, mean, std, settings, scores=None) -> dict[str, np.ndarray]:
    """Maps (N, H, W) of every method and reference; with ``scores``, the methods' times are added to it."""
    found = attribute_maps(
        model,
        x,
        targets,
        methods,
        capabilities=capabilities,
        baseline=settings.baseline,
        mean=mean,
        std=std,
        target_layer=settings.target_layer,
        seed=settings.seed,
    )
    maps = {name: a.maps for name, a in found.items()}
    for name in REFERENCES:
        t0 = time.perf_counter()
        maps[name] = reference_maps(
            name, model, x, targets, capabilities=capabilities, target_layer=settings.target_layer, seed=settings.seed
        )
        if scores is not None:
            scores[name].seconds += time.perf_counter() - t0
            scores[name].images += len(x)
    if scores is not None:
        for name, a in found.items():
            scores[name].seconds += a.seconds_per_image * len(x)
            scores[name].images += len(x)
    return maps


def _faithfulness(scores: MethodScores, metric, model, x, maps, targets, settings: RankSettings) -> None:
    for i in range(len(x)):
        curves = metric(x[i : i + 1], maps[i : i + 1], [targets[i]])
        auc = curves.auc()
        scores.deletion_auc.append(auc["deletion_auc"])
        scores.insertion_auc.append(auc["insertion_auc"])
        scores.curves["deletion"].append(curves.deletion)
        scores.curves["insertion"].append(curves.insertion)
    morf, lerf = road_scores(model, x, maps, targets, percentiles=settings.road_percentiles, seed=settings.seed)
    scores.road_morf.extend(morf.tolist())
    scores.road_lerf.extend(lerf.tolist())


def order(rows: list[dict], threshold: float) -> list[dict]:
    """Rows sorted by the mean rank of their two summary scores (insertion - deletion AUC; ROAD LeRF - MoRF),
    each with its ``rank`` and a one-line ``verdict``: which references it beats, whether it passes sanity."""
    di = {r["method"]: r["insertion_auc"] - r["deletion_auc"] for r in rows}
    road = {r["method"]: r["road_lerf"] - r["road_morf"] for r in rows}
    position = lambda score: {m: i for i, m in enumerate(sorted(score, key=score.get, reverse=True))}  # noqa: E731
    di_pos, road_pos = position(di), position(road)
    rows = sorted(rows, key=lambda r: ((di_pos[r["method"]] + road_pos[r["method"]]) / 2, di_pos[r["method"]]))
    for i, r in enumerate(rows, start=1):
        beaten = [
            ref
            for ref in REFERENCES
            if ref != r["method"] and di[r["method"]] > di[ref] and road[r["method"]] > road[ref]
        ]
        r["rank"] = i
        r["beats_references"] = len(beaten) == len(REFERENCES) and r["method"] not in REFERENCES
        r["passes_sanity"] = bool(r["randomisation_corr_all"] < threshold)
        r["verdict"] = _verdict(r, beaten, threshold)
    return [{"method": r.pop("method"), **r} for r in rows]  # the method name is the first column


def _verdict(row: dict, beaten: list[str], threshold: float) -> str:
    if row["method"] in REFERENCES:
        faithful = "reference"
    elif len(beaten) == len(REFERENCES):
        faithful = "beats random and centre"
    elif beaten:
        faithful = f"beats {beaten[0]} only"
    else:
        faithful = "beats neither reference"
    corr = row["randomisation_corr_all"]
    if np.isnan(corr):
        return f"{faithful}; sanity not checked"
    if corr < threshold:
        return f"{faithful}; passes sanity ({corr:.2f} with all weights random)"
    return f"{faithful}; FAILS sanity: its maps survive random weights ({corr:.2f})"


# -- on a run -------------------------------------------------------------------------------------------------------
def seeded_indices(size: int, n: int, seed: int) -> list[int]:
    """``n`` distinct indices of a split of ``size`` images, drawn with ``seed``, in increasing order."""
    if n < 1:
        raise CifarlensError(f"--n must be at least 1, got {n}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[: min(n, size)].tolist())


def resolve_methods(text: str | Sequence[str], capabilities: Capabilities) -> list[str]:
    """``all``, ``cams`` (every CAM method) or names (a list or comma-separated) -> registered method names;
    ``all`` and ``cams`` leave out what the model lacks the head for (the original CAM)."""
    if isinstance(text, str) and text in ("all", "cams"):
        wanted = list(METHODS) if text == "all" else list(CAM_METHODS)
        return [m for m in wanted if METHODS[m].applies_to(capabilities)]
    names = check_methods([m.strip() for m in text.split(",") if m.strip()] if isinstance(text, str) else list(text))
    for name in names:
        if not METHODS[name].applies_to(capabilities):
            raise CifarlensError(
                f"{name} needs a global-average-pool + linear head, which this model does not have; "
                "drop it from --methods (all and cams leave it out)"
            )
    return names


def rank(
    run,
    *,
    methods: str | Sequence[str] = "all",
    n: int = 500,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "auto",
    settings: RankSettings | None = None,
    partial_to: str | Path | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> RankResult:
    """Rank ``methods`` (``all``, ``cams`` or names) on ``n`` seeded images of the run's ``split``, explaining
    the predicted class of each (see the module doc for the columns). With ``partial_to``, the table of the
    images done so far is written there after every batch, so a long ranking stopped half-way keeps them;
    ``on_batch(done, total)`` reports progress."""

    settings = settings or RankSettings()
    model, spec, dev = load_run_model(run, device)
    caps = spec.capabilities(model)
    names = resolve_methods(methods, caps)
    chosen = RunDir(run).load_data(data_dir).split(split)
    indices = seeded_indices(len(chosen), n, settings.seed)
    images = chosen.images[indices]
    targets = Predictor(model, spec, device=dev).probabilities(images).argmax(1).tolist()
    x = spec.inputs(images).to(dev)
    found = notes(model, names, methods, caps)

    def after_batch(done: int, total: int, rows: list[dict], curves: dict) -> None:
        if partial_to is not None and done < total:
            RankResult(spec.name, split, indices[:done], settings, rows, curves, str(dev), found, planned=total).write(
                partial_to
            )
        if on_batch:
            on_batch(done, total)

    rows, curves = rank_maps(
        model,
        x,
        targets,
        names,
        capabilities=caps,
        mean=spec.mean,
        std=spec.std,
        settings=settings,
        on_batch=after_batch,
    )
    return RankResult(spec.name, split, indices, settings, rows, curves, str(dev), found)


def notes(model: nn.Module, names: list[str], asked: str | Sequence[str], capabilities: Capabilities) -> list[str]:
    """What a reader of the ranking should know: methods ``all``/``cams`` left out, and ``method_notes``."""

    left_out = [m for m in METHODS if not METHODS[m].applies_to(capabilities)]
    found = []
    if asked in ("all", "cams") and left_out:
        found.append(
            f"left out: {', '.join(left_out)} (needs a global-average-pool + linear head, which "
            f"{type(model).__name__} does not have)"
        )
    return found + method_notes(model, names)
