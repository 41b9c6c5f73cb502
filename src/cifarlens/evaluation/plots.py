"""PNG figures of a run: confusion matrix, training curves, confident mistakes, sample grid.

Figures are built as ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never
through ``pyplot``: no GUI backend is touched, no global figure list grows, and a figure is
freed as soon as the function returns. Every PNG is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from cifarlens.io import atomic_path

DPI = 130
CMAP = "Blues"
# image_grid geometry in pixels (its PNG is drawn at 1:1 so every CIFAR pixel is a SCALE x SCALE block).
GRID_DPI = 100
GRID_SCALE = 2
GRID_PAD = 4
GRID_LABEL_PX = 120
# Series drawn by plot_curves: (csv column, legend label, colour).
_SPLITS = (("train", "train", "tab:blue"), ("val", "val", "tab:orange"), ("test", "test", "tab:green"))


def _new_figure(width: float, height: float, dpi: int = DPI) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, dpi: int = DPI, **kwargs) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and release it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, **kwargs)
    finally:
        fig.clear()
    return path


def _to_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, H, W, 3) numpy."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Heat map of a confusion matrix (rows = true class, columns = predicted).

    With ``normalize`` the colours are row fractions (recall on the diagonal) and each cell
    shows its percentage above its count; otherwise colours and labels are counts. Zero cells
    are left blank so the mistakes stand out.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    c = len(class_names)
    if cm.shape != (c, c):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {c} classes")
    totals = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    values = frac if normalize else cm.astype(float)
    vmax = 1.0 if normalize else max(float(cm.max()), 1.0)

    size = max(5.0, 0.62 * c + 2.2)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if normalize:
        cbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        cbar.set_label("share of the true class")
    else:
        cbar.set_label("images")

    fontsize = 8 if c <= 12 else 6
    for t in range(c):
        for p in range(c):
            if cm[t, p] == 0:
                continue
            text = f"{frac[t, p]:.0%}\n{cm[t, p]}" if normalize else f"{cm[t, p]}"
            if normalize and 0 < frac[t, p] < 0.01:
                text = f"<1%\n{cm[t, p]}"
            color = "white" if values[t, p] / vmax > 0.55 else "#1a1a1a"
            ax.text(p, t, text, ha="center", va="center", fontsize=fontsize, color=color, linespacing=1.1)

    ax.set_xticks(range(c), labels=class_names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(c), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    # Thin white grid between cells.
    ax.set_xticks(np.arange(-0.5, c, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, c, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    n = int(cm.sum())
    acc = float(np.trace(cm)) / n if n else 0.0
    ax.set_title(title or f"Confusion matrix: accuracy {acc:.2%} on {n} images", fontsize=11, pad=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(metrics: Sequence[dict[str, float | int]], path: str | Path) -> Path | None:
    """Loss, accuracy and learning rate against epoch from a run's metrics rows (``RunDir.metrics``).

    Splits whose column is empty for every epoch (no validation split, test not scored
    per epoch) are skipped; epochs where a split is missing are gaps. Returns ``path``,
    or None (and writes nothing) when there are no epochs.
    """
    names = {key for row in metrics for key in row}
    cols = {name: np.array([float(row.get(name, math.nan)) for row in metrics], dtype=float) for name in names}
    epochs = cols.get("epoch")
    if epochs is None or len(epochs) == 0:
        return None
    few = len(epochs) <= 40
    style = {"marker": "o", "markersize": 3.5} if few else {}

    fig = _new_figure(8.0, 8.2)
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 3, 1.4], hspace=0.12)
    ax_loss = fig.add_subplot(grid[0])
    ax_acc = fig.add_subplot(grid[1], sharex=ax_loss)
    ax_lr = fig.add_subplot(grid[2], sharex=ax_loss)

    for split, label, color in _SPLITS:
        loss = cols.get(f"{split}_loss")
        acc = cols.get(f"{split}_acc")
        if loss is not None and np.isfinite(loss).any():
            ok = np.isfinite(loss)
            ax_loss.plot(epochs[ok], loss[ok], color=color, label=label, **style)
        if acc is not None and np.isfinite(acc).any():
            ok = np.isfinite(acc)
            final, best = acc[ok][-1], acc[ok].max()
            ax_acc.plot(
                epochs[ok], acc[ok], color=color, label=f"{label}  (final {final:.2%}, best {best:.2%})", **style
            )

    lr = cols.get("lr")
    if lr is not None and np.isfinite(lr).any():
        ok = np.isfinite(lr)
        ax_lr.plot(epochs[ok], lr[ok], color="tab:gray", **style)
    ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax_lr.set_ylim(bottom=0)

    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_ylabel("accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
    for ax in (ax_loss, ax_acc):
        ax.tick_params(labelbottom=False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=9)
    ax_loss.set_title("Training curves", fontsize=12)
    fig.align_ylabels([ax_loss, ax_acc, ax_lr])
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.07)
    return _save(fig, path)


def plot_misclassified(
    images: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    n: int = 36,
) -> Path:
    """Grid of the ``n`` most confidently wrong images, each titled "true → pred (p=0.93)".

    ``p`` is the softmax probability of the wrong prediction. Fewer than ``n`` mistakes
    give a smaller grid; none gives a figure that says so.
    """
    labels = torch.as_tensor(labels).cpu()
    probs = torch.softmax(torch.as_tensor(logits).float().cpu(), dim=1)
    conf, preds = probs.max(1)
    wrong = torch.nonzero(preds != labels).flatten()
    order = wrong[torch.argsort(conf[wrong], descending=True, stable=True)][: max(n, 0)]
    k = len(order)

    if k == 0:
        fig = _new_figure(5.0, 1.6)
        fig.text(0.5, 0.5, f"No misclassified images among {len(labels)}", ha="center", va="center", fontsize=12)
        return _save(fig, path)

    cols = min(6, k)
    rows = math.ceil(k / cols)
    cell_w, cell_h = 1.95, 2.3  # inches: a square image plus its two-line title
    header = 0.6  # inches above the first row's titles for the figure title
    height = rows * cell_h + header
    fig = _new_figure(cols * cell_w, height)
    pics = _to_hwc(images[order])
    for i, idx in enumerate(order.tolist()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(pics[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("#c0392b")
            spine.set_linewidth(1.2)
        true_name, pred_name = class_names[int(labels[idx])], class_names[int(preds[idx])]
        ax.set_title(f"{true_name} → {pred_name}\n(p={float(conf[idx]):.2f})", fontsize=8.5, linespacing=1.15, pad=4)
    fig.suptitle(
        f"Most confident mistakes: {k} of {len(wrong)} misclassified ({len(labels)} images)\n"
        "true class → predicted class (probability given to the prediction)",
        fontsize=10.5,
        y=1 - 0.08 / height,
        va="top",
    )
    title_room = 0.5  # inches of the first row's titles
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.1 / height, top=1 - (header + title_room) / height, wspace=0.08, hspace=0.3
    )
    return _save(fig, path)


def image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    per_class: int = 10,
    seed: int = 0,
) -> Path:
    """One row per class, its name on the left, ``per_class`` random images (seeded by ``seed``).

    Drawn at 1:1 with each CIFAR pixel as a ``GRID_SCALE`` square (nearest neighbour), so the
    PNG is ``GRID_LABEL_PX + per_class * (32 * GRID_SCALE + GRID_PAD) + GRID_PAD`` pixels wide
    and ``classes * (32 * GRID_SCALE + GRID_PAD) + GRID_PAD`` high (for 32x32 images). Classes
    with fewer images leave blank cells.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = torch.as_tensor(labels).cpu()
    gen = torch.Generator().manual_seed(seed)
    c = len(class_names)
    _, _, h, w = images.shape
    ch, cw = h * GRID_SCALE + GRID_PAD, w * GRID_SCALE + GRID_PAD
    canvas = np.full((c * ch + GRID_PAD, per_class * cw + GRID_PAD, 3), 255, dtype=np.uint8)
    for row in range(c):
        idx = torch.nonzero(labels == row).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
        if len(idx) == 0:
            continue
        pics = _to_hwc(images[idx]).repeat(GRID_SCALE, axis=1).repeat(GRID_SCALE, axis=2)
        for col, pic in enumerate(pics):
            y, x = row * ch + GRID_PAD, col * cw + GRID_PAD
            canvas[y : y + h * GRID_SCALE, x : x + w * GRID_SCALE] = pic

    height, width = canvas.shape[0], canvas.shape[1] + GRID_LABEL_PX
    fig = _new_figure(width / GRID_DPI, height / GRID_DPI, dpi=GRID_DPI)
    fig.patch.set_facecolor("white")
    ax = fig.add_axes((GRID_LABEL_PX / width, 0.0, canvas.shape[1] / width, 1.0))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for row, name in enumerate(class_names):
        y_centre = row * ch + GRID_PAD + h * GRID_SCALE / 2
        fig.text(
            (GRID_LABEL_PX - 10) / width,
            1 - y_centre / height,
            name,
            ha="right",
            va="center",
            fontsize=11,
            family="sans-serif",
        )
    return _save(fig, path, dpi=GRID_DPI)


def plot_reliability(calibration: dict, path: str | Path, title: str, scaled: dict | None = None) -> Path:
    """Reliability diagram of ``calibration_report``'s bins: accuracy against confidence per bin (a bar, with the
    gap to the diagonal shaded), and the same after temperature scaling (``scaled``) as a line."""
    fig = _new_figure(5.2, 5.0)
    ax = fig.add_subplot()
    bins = calibration["bins"]
    width = bins[0]["upper"] - bins[0]["lower"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    filled = [b for b in bins if b["count"]]
    ax.bar(
        [(b["lower"] + b["upper"]) / 2 for b in filled],
        [b["accuracy"] for b in filled],
        width=width * 0.95,
        color="tab:blue",
        edgecolor="white",
        label="accuracy",
    )
    for b in filled:
        low, high = sorted((b["accuracy"], b["confidence"]))
        ax.bar((b["lower"] + b["upper"]) / 2, high - low, bottom=low, width=width * 0.95, color="tab:red", alpha=0.3)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    if scaled is not None:
        points = [(c, b["accuracy"]) for c, b in zip(centres, scaled["bins"]) if b["count"]]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "o-",
            color="tab:green",
            ms=3,
            label=f"after temperature (ECE {scaled['ece']:.2%})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"{title}\nECE {calibration['ece']:.2%}, MCE {calibration['mce']:.2%}, {calibration['n_bins']} bins", fontsize=9
    )
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_confidence_histogram(calibration: dict, path: str | Path, title: str) -> Path:
    """How many images fall in each confidence bin, with the mean confidence and the accuracy marked."""
    fig = _new_figure(5.2, 3.6)
    ax = fig.add_subplot()
    bins = calibration["bins"]
    total = max(sum(b["count"] for b in bins), 1)
    width = bins[0]["upper"] - bins[0]["lower"]
    ax.bar(
        [(b["lower"] + b["upper"]) / 2 for b in bins],
        [b["count"] / total for b in bins],
        width=width * 0.95,
        color="tab:blue",
        edgecolor="white",
    )
    confidence = sum(b["confidence"] * b["count"] for b in bins) / total
    accuracy = sum(b["accuracy"] * b["count"] for b in bins) / total
    ax.axvline(confidence, color="tab:red", ls="--", label=f"mean confidence {confidence:.1%}")
    ax.axvline(accuracy, color="black", ls=":", label=f"accuracy {accuracy:.1%}")
    ax.set_xlim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("share of images")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_risk_coverage(calibration: dict, path: str | Path, title: str) -> Path:
    """Accuracy on the most confident share of images against that share (coverage)."""
    fig = _new_figure(5.2, 3.6)
    ax = fig.add_subplot()
    curve = calibration["coverage"]
    ax.plot(curve["coverage"], curve["accuracy"], "o-", color="tab:blue", ms=3)
    ax.set_xlim(0, 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("coverage (most confident share of images kept)")
    ax.set_ylabel("accuracy on the kept images")
    ax.set_title(f"{title}\narea under the risk-coverage curve {curve['aurc']:.4f}", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)
