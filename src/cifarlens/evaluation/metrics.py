"""Accuracy, cross-entropy, per-class precision/recall/F1 and the confusion matrix from logits."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_report(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Scores of ``logits`` (N, C) against integer ``labels`` (N,); all values are plain Python.

    Returns ``accuracy`` and ``loss`` (mean cross-entropy), ``n``, ``per_class`` (one dict per
    class: class, accuracy (= recall), precision, recall, f1, support) and ``confusion``
    (C x C counts, rows = true class, columns = predicted). Classes absent from ``labels``
    still get a row (support 0, zero scores).
    """
    logits = torch.as_tensor(logits).float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    num_classes = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match {num_classes} classes")
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} logits but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot score an empty split")
    preds = logits.argmax(1)
    y_true, y_pred = labels.numpy(), preds.numpy()
    ids = list(range(num_classes))
    confusion = confusion_matrix(y_true, y_pred, labels=ids)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    per_class = [
        {
            "class": name,
            "accuracy": float(recall[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "accuracy": int((preds == labels).sum()) / len(labels),
        "loss": float(F.cross_entropy(logits, labels)),
        "n": int(len(labels)),
        "per_class": per_class,
        "confusion": confusion.astype(int).tolist(),
    }


def top_confusions(
    confusion: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], k: int = 5
) -> list[dict[str, Any]]:
    """The ``k`` most frequent off-diagonal (true, predicted) pairs, most frequent first.

    Each entry: ``true``, ``pred``, ``count`` and ``fraction`` (of the true class's images).
    Pairs with zero count are left out; ties keep row-major order.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    row_totals = cm.sum(axis=1)
    pairs = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    pairs.sort(key=lambda item: -item[0])  # stable: ties stay in row-major order
    return [
        {
            "true": class_names[t],
            "pred": class_names[p],
            "count": count,
            "fraction": count / int(row_totals[t]),
        }
        for count, t, p in pairs[:k]
    ]
