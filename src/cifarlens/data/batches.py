"""Batches straight from in-memory tensors: no DataLoader workers, no per-sample Python."""

from __future__ import annotations

from typing import Iterator

import torch

from cifarlens.data.cifar10 import Split


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images uint8 (B, 3, 32, 32), labels int64 (B,)) views of ``split``.

    With ``shuffle``, the order comes from ``generator`` so a seeded epoch is reproducible.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield split.images[idx], split.labels[idx]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields for ``n`` images."""
    return n // batch_size if drop_last else -(-n // batch_size)
