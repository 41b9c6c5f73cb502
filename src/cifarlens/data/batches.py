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
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images uint8 (B, 3, 32, 32), labels int64 (B,)) views of ``split``, from batch ``start`` on.
    The order is drawn on ``generator``'s device, so a split kept on a GPU is batched there without the host.

    With ``shuffle``, the order is drawn from ``generator`` when this is called (not at the first batch),
    so a seeded epoch is reproducible and a resumed one can restore the generator right after it.
    """
    n = len(split)
    device = generator.device if generator is not None else "cpu"
    order = torch.randperm(n, generator=generator, device=device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    return _batches(split, order, range(start * batch_size, stop, batch_size), batch_size)


def _batches(split: Split, order: torch.Tensor | None, starts: range, batch_size: int):
    for first in starts:
        if order is None:
            yield split.images[first : first + batch_size], split.labels[first : first + batch_size]
        else:
            idx = order[first : first + batch_size]
            yield split.images[idx], split.labels[idx]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields for ``n`` images."""
    return n // batch_size if drop_last else -(-n // batch_size)
