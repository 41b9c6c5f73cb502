"""Deletion and insertion curves (Petsiuk et al., RISE, 2018): is a heat map faithful to the model?

Deletion removes the most-salient pixels first (sets them to the dataset mean, i.e. 0 after
normalisation) and watches the explained class's probability fall: a faithful map makes it
fall fast (low AUC). Insertion starts from a blurred image and reveals the most-salient
pixels first: a faithful map makes the probability rise fast (high AUC). A random map is the
reference any method must beat. grad-cam ships ROAD but not these curves, hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CurveResult:
    """Mean curves over images (``fractions``: (S+1,)); probabilities and top-1 agreement with the explained class."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_accuracy: np.ndarray
    insertion_accuracy: np.ndarray

    def auc(self) -> dict[str, float]:
        area = lambda y: float(np.trapezoid(y, self.fractions))  # noqa: E731
        return {
            "deletion_auc": area(self.deletion),
            "insertion_auc": area(self.insertion),
            "deletion_accuracy_auc": area(self.deletion_accuracy),
            "insertion_accuracy_auc": area(self.insertion_accuracy),
        }


def _blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.transpose(2, 3), groups=x.shape[1])


class DeletionInsertion:
    """``metric(x, saliency, targets) -> CurveResult`` for normalised x (N, 3, H, W), saliency (N, H, W).

    ``steps`` fractions from 0 to 1 are evaluated; each image's steps go through the model as one batch.
    """

    def __init__(self, model: nn.Module, *, steps: int = 16, blur_sigma: float = 2.0):
        self.model, self.steps, self.blur_sigma = model.eval(), steps, blur_sigma

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, saliency: np.ndarray | torch.Tensor, targets: list[int]) -> CurveResult:
        sal = torch.as_tensor(np.asarray(saliency), dtype=torch.float32, device=x.device)
        fractions = torch.linspace(0, 1, self.steps + 1, device=x.device)
        n, _, h, w = x.shape
        blurred = _blur(x, self.blur_sigma)
        rows = {k: [] for k in ("del", "ins", "del_acc", "ins_acc")}
        for i in range(n):
            order = torch.argsort(sal[i].flatten(), descending=True, stable=True)
            rank = torch.empty(h * w, dtype=torch.long, device=x.device)
            rank[order] = torch.arange(h * w, device=x.device)
            masks = (rank.view(1, h, w) < (fractions * h * w).round().view(-1, 1, 1)).unsqueeze(1)  # (S+1, 1, H, W)
            deleted = torch.where(masks, torch.zeros_like(x[i]), x[i])
            inserted = torch.where(masks, x[i], blurred[i])
            for key, batch in (("del", deleted), ("ins", inserted)):
                logits = self.model(batch).float()
                rows[key].append(logits.softmax(1)[:, targets[i]])
                rows[key + "_acc"].append((logits.argmax(1) == targets[i]).float())
        mean = {k: torch.stack(v).mean(0).cpu().numpy() for k, v in rows.items()}
        return CurveResult(fractions.cpu().numpy(), mean["del"], mean["ins"], mean["del_acc"], mean["ins_acc"])
