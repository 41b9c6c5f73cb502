"""The splits a run trains and is scored on, rebuilt identically from the run's config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarlens.data.cifar10 import Split, load_cifar10
from cifarlens.data.splits import stratified_indices, train_val_indices
from cifarlens.errors import ConfigError


@dataclass
class RunData:
    """train/val/test splits of one run; ``val`` is None without ``--val-size``."""

    train: Split
    val: Split | None
    test: Split
    classes: tuple[str, ...]
    root: Path

    def split(self, name: str) -> Split:
        """The split called ``name`` ("train", "val" or "test")."""
        if name == "val":
            if self.val is None:
                raise ConfigError("this run has no validation split; train with --val-size N or use --split test")
            return self.val
        if name in ("train", "test"):
            return getattr(self, name)
        raise ConfigError(f"unknown split {name!r}; choose train, val or test")


def prepare_data(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    subset: int = 0,
    val_size: int = 0,
    seed: int = 0,
    saved_in: Path | None = None,
) -> RunData:
    """Load CIFAR-10, hold out ``val_size`` training images, then keep a stratified ``subset``.

    The validation split is drawn before the subset so that it is the same whatever the subset;
    ``subset`` also caps the test split at the same size, so quick runs stay quick. Seeded by ``seed``.
    ``saved_in``: the run's config.yaml that ``data_dir`` was read from, if it was; the error for missing
    data then names it, and --data-dir as the fix (a saved folder wins over the environment variable).
    """
    hint = {}
    if saved_in is not None and data_dir:
        hint = {
            "source": f"data_dir in {saved_in}",
            "fix": "if the data moved, pass --data-dir with the folder that now holds cifar-10-batches-py",
        }
    data = load_cifar10(data_dir, download=download, **hint)
    train_idx, val_idx = train_val_indices(data.train.labels, val_size, seed)
    val = data.train.take(val_idx) if len(val_idx) else None
    train = data.train.take(train_idx)
    test = data.test
    if subset:
        if subset > len(train):
            raise ConfigError(f"--subset {subset} is larger than the {len(train)} training images; use a smaller value")
        train = train.take(stratified_indices(train.labels, subset, seed))
        if subset < len(test):
            test = test.take(stratified_indices(test.labels, subset, seed))
    return RunData(train=train, val=val, test=test, classes=data.classes, root=data.root)
