"""The robustness plots: accuracy against severity, and one image under every corruption and severity."""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlens.evaluation.plots import _new_figure, _save
from cifarlens.robustness.corruptions import CORRUPTIONS, corrupt

FAMILY_COLOURS = {"noise": "tab:red", "blur": "tab:blue", "weather": "tab:green", "digital": "tab:purple"}


def plot_severity(numbers: dict, path: Path) -> Path:
    """Accuracy (%) against severity, clean at 0: one thin line per corruption coloured by family, the mean bold."""
    severities = [0] + list(numbers["severities"])
    clean = 100 * numbers["clean"]["accuracy"]
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for name in numbers["corruptions"]:
        accs = {c["severity"]: 100 * c["accuracy"] for c in numbers["cells"] if c["corruption"] == name}
        family = CORRUPTIONS[name].family
        style = "-" if CORRUPTIONS[name].benchmark else ":"
        ax.plot(
            severities,
            [clean] + [accs[s] for s in severities[1:]],
            style,
            lw=1,
            alpha=0.8,
            color=FAMILY_COLOURS[family],
            label=name,
        )
    means = [clean] + [100 * v for v in numbers["accuracy_by_severity"].values()]
    ax.plot(severities, means, "k-", lw=3, label="mean")
    ax.set_xticks(severities, ["clean"] + [str(s) for s in severities[1:]])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy under corruption ({numbers['n']} {numbers['split']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def plot_corruption_grid(image: torch.Tensor, names: list[str], severities: list[int], seed: int, path: Path) -> Path:
    """One row per corruption: ``image`` (uint8 (3, H, W)) clean, then at each severity (the draws of ``seed``)."""
    cols = 1 + len(severities)
    fig = _new_figure(1.1 * cols + 1.4, 1.1 * len(names))
    axes = fig.subplots(len(names), cols, squeeze=False)
    for row, name in enumerate(names):
        views = [image] + [corrupt(image[None], name, s, seed=seed)[0] for s in severities]
        for col, view in enumerate(views):
            ax = axes[row][col]
            ax.imshow(view.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("clean" if col == 0 else f"severity {severities[col - 1]}", fontsize=7)
        axes[row][0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save(fig, path, dpi=100)
