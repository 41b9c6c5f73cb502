"""Stratified subsets and train/validation splits, seeded, so tuning never touches the test set."""

from __future__ import annotations

import torch

from cifarlens.errors import ConfigError


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices with classes in their original proportions (within one), sorted.

    labels: (N,) int64. Returns (n,) int64.
    """
    total = len(labels)
    if n <= 0 or n > total:
        raise ConfigError(f"cannot take {n} images from a split of {total}; use a number in 1..{total}")
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    # Largest-remainder apportionment keeps the subset exactly n and as balanced as the data.
    quotas = torch.tensor([len(idx) * n / total for idx in per_class])
    counts = quotas.floor().long()
    remainder = n - int(counts.sum())
    if remainder:
        order = torch.argsort(quotas - counts, descending=True, stable=True)
        counts[order[:remainder]] += 1
    chosen = [idx[torch.randperm(len(idx), generator=gen)[: int(k)]] for idx, k in zip(per_class, counts)]
    return torch.sort(torch.cat(chosen)).values


def train_val_indices(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into stratified (train, val) index tensors; val has ``val_size``."""
    if val_size <= 0:
        return torch.arange(len(labels)), torch.empty(0, dtype=torch.long)
    if val_size >= len(labels):
        raise ConfigError(f"--val-size {val_size} leaves no training images out of {len(labels)}; use a smaller value")
    val = stratified_indices(labels, val_size, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val
