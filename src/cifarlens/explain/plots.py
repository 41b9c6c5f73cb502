"""PNG figures of the explain commands (Agg canvas, atomic writes, as ``cifarlens.evaluation.plots``)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from cifarlens.evaluation.plots import _new_figure, _save


def _class_colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_projection(
    points: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    thumbnails: np.ndarray | None = None,
    n_thumbnails: int = 0,
    seed: int = 0,
) -> Path:
    """Scatter ``points`` (N, 2) coloured by class, with a legend; optionally ``n_thumbnails`` of the
    images (``thumbnails``: uint8 (N, 3, H, W)) drawn at their points."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    fig = _new_figure(9, 8)
    ax = fig.add_subplot()
    colours = _class_colours(len(classes))
    size = float(np.clip(30.0 / np.sqrt(max(len(points), 1) / 100), 2.0, 30.0))
    for c, name in enumerate(classes):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=size, color=colours[c], label=name, alpha=0.7, linewidths=0)
    if thumbnails is not None and n_thumbnails:
        rng = np.random.default_rng(seed)
        for i in rng.choice(len(points), size=min(n_thumbnails, len(points)), replace=False):
            thumbnail = OffsetImage(thumbnails[i].transpose(1, 2, 0), zoom=0.7, interpolation="nearest")  # sharp pixels
            box = AnnotationBbox(
                thumbnail, points[i], frameon=True, pad=0.05, bboxprops={"edgecolor": colours[int(labels[i])]}
            )
            ax.add_artist(box)
    ax.legend(markerscale=max(1.0, 6 / math.sqrt(size)), loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(textwrap.fill(title, 110), fontsize=10)
    _bare(ax)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def plot_probe(rows: list[dict], path: str | Path, *, chance: float, title: str = "") -> Path:
    """Linear-probe and kNN test accuracy per stage (rows: dicts with layer, linear_accuracy, knn_accuracy)."""
    fig = _new_figure(max(6, 0.8 * len(rows) + 2), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.plot(x, [r["linear_accuracy"] for r in rows], "o-", label="linear probe (logistic regression)")
    ax.plot(x, [r["knn_accuracy"] for r in rows], "s--", label="k-NN")
    ax.axhline(chance, color="grey", lw=0.8, ls=":", label=f"chance ({chance:.0%})")
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_tiles(
    tiles: np.ndarray,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    columns: int = 0,
    cmap: str = "viridis",
    tile_inches: float = 1.0,
) -> Path:
    """A grid of tiles: (N, H, W) single-channel (drawn with ``cmap``) or (N, H, W, 3) RGB in [0, 1]."""
    n = len(tiles)
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / columns))
    fig = _new_figure(columns * tile_inches + 0.2, rows * tile_inches * (1.15 if labels else 1) + 0.5)
    for i in range(n):
        ax = fig.add_subplot(rows, columns, i + 1)
        tile = tiles[i]
        ax.imshow(tile, cmap=None if tile.ndim == 3 else cmap, interpolation="nearest")
        _bare(ax)
        if labels is not None:
            ax.set_title(labels[i], fontsize=6, pad=2)
    fig.suptitle(textwrap.fill(title, max(40, int(columns * tile_inches * 14))), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_cams(
    images: np.ndarray, heatmaps: dict[str, np.ndarray], path: str | Path, *, captions: Sequence[str], title: str = ""
) -> Path:
    """One row per image: the image, then its heat map per method overlaid.

    images: float (N, H, W, 3) in [0, 1]; heatmaps[method]: (N, H, W) in [0, 1].
    """
    methods = list(heatmaps)
    n, cols = len(images), 1 + len(methods)
    fig = _new_figure(1.6 * cols + 0.3, 1.7 * n + 0.5)
    for i in range(n):
        ax = fig.add_subplot(n, cols, i * cols + 1)
        ax.imshow(images[i], interpolation="nearest")
        ax.set_ylabel(captions[i], fontsize=7)
        _bare(ax)
        for j, method in enumerate(methods, start=2):
            ax = fig.add_subplot(n, cols, i * cols + j)
            ax.imshow(images[i], interpolation="nearest")
            ax.imshow(heatmaps[method][i], cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(method, fontsize=8)
    fig.suptitle(textwrap.fill(title, int(cols * 1.6 * 13)), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_rank(rows: list[dict], path: str | Path, *, title: str = "", threshold: float = 0.5) -> Path:
    """The ranking as four bar panels, one bar per row (best first): faithfulness (insertion - deletion AUC,
    ROAD LeRF - MoRF; higher is better), randomisation correlation with all weights random (lower is saner;
    ``threshold`` dashed) and milliseconds per image (log scale). References are grey, sanity failures hatched."""
    names = [r["method"] for r in rows]
    y = np.arange(len(rows))
    colours = ["0.6" if r["library"] == "reference" else "tab:blue" if r["passes_sanity"] else "tab:red" for r in rows]
    hatches = ["" if r["passes_sanity"] else "//" for r in rows]
    panels = [
        ("insertion - deletion AUC (higher: more faithful)", [r["insertion_auc"] - r["deletion_auc"] for r in rows]),
        ("ROAD LeRF - MoRF (higher: more faithful)", [r["road_lerf"] - r["road_morf"] for r in rows]),
        ("Spearman corr. with all weights random (lower: saner)", [r["randomisation_corr_all"] for r in rows]),
        ("ms per image (log)", [max(r["ms_per_image"], 1e-3) for r in rows]),
    ]
    fig = _new_figure(15, 0.3 * len(rows) + 1.6)
    for k, (label, values) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), k)
        bars = ax.barh(y, values, color=colours)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        ax.set_yticks(y, names if k == 1 else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
        if k == 3:
            ax.axvline(threshold, color="k", ls="--", lw=0.8)
        if k == 4:
            ax.set_xscale("log")
    from matplotlib.patches import Patch

    legend = [
        Patch(color="tab:blue", label="passes sanity"),
        Patch(facecolor="tab:red", hatch="//", label="fails sanity"),
        Patch(color="0.6", label="reference map"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(textwrap.fill(title, 160), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def plot_top_images(
    optimised: np.ndarray,
    images: np.ndarray,
    overlays: np.ndarray,
    path: str | Path,
    *,
    optimised_titles: Sequence[str],
    titles: Sequence[Sequence[str]],
    title: str = "",
) -> Path:
    """One row per channel: its optimised image, a gap, then its top images with the activation overlaid.

    optimised: float (C, S, S, 3) in [0, 1]; images: uint8 (C, k, H, W, 3); overlays: (C, k, H, W) in [0, 1],
    drawn as a spotlight: a black veil, more opaque where the channel is silent, so what it fires on stays lit
    whatever the image's colours.
    """
    from matplotlib.gridspec import GridSpec

    rows, k = images.shape[:2]
    fig = _new_figure(1.1 * (k + 1.25) + 0.3, 1.2 * rows + 0.6)
    grid = GridSpec(rows, k + 2, figure=fig, width_ratios=[1, 0.25] + [1] * k)
    for r in range(rows):
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(optimised[r], interpolation="nearest")
        ax.set_title(optimised_titles[r], fontsize=6, pad=2)
        _bare(ax)
        for j in range(k):
            ax = fig.add_subplot(grid[r, j + 2])
            ax.imshow(images[r, j], interpolation="nearest")  # nearest: the 32 px image stays pixel-sharp
            veil = np.zeros((*overlays.shape[2:], 4))
            veil[..., 3] = 0.75 * (1 - overlays[r, j])
            ax.imshow(veil, interpolation="bilinear")
            ax.set_title(titles[r][j], fontsize=6, pad=2)
            _bare(ax)
    fig.suptitle(textwrap.fill(title, int(1.1 * (k + 1.25) * 15)), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
