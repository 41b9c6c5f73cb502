"""The published CIFAR-10-C files (Hendrycks & Dietterich): ``NAME.npy`` of (5 x 10000, 32, 32, 3) uint8 images,
severity s in rows (s - 1) * 10000 to s * 10000, each block the CIFAR-10 test split in order, and ``labels.npy``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifarlens.errors import DataError


class Cifar10C:
    """A folder of the published CIFAR-10-C ``.npy`` files, read memory-mapped (never as pickles)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(f"--cifar10c-dir {self.folder} is not a folder; pass the folder holding labels.npy")

    def _array(self, name: str) -> np.ndarray:
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            raise DataError(f"{path} is missing; download CIFAR-10-C (zenodo.org/records/2535967) into {self.folder}")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise DataError(f"{path} is not a numpy array file ({err}); download it again") from None

    def check(self, names: list[str], per_severity: int) -> None:
        """Every file of ``names`` is there, holding 5 blocks of ``per_severity`` 32x32 RGB uint8 images."""
        labels = self._array("labels")
        for name in names:
            array = self._array(name)
            if array.dtype != np.uint8 or array.shape != (5 * per_severity, 32, 32, 3):
                raise DataError(
                    f"{self.folder / name}.npy holds {array.dtype} {array.shape}, not 5 x {per_severity} 32x32 RGB "
                    "uint8 images (one block of the test split per severity); download it again"
                )
        if labels.shape[0] < per_severity:
            raise DataError(f"{self.folder / 'labels.npy'} holds {labels.shape[0]} labels, fewer than {per_severity}")

    def labels(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._array("labels")[indices.numpy()], dtype=np.int64))

    def images(self, name: str, severity: int, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (len(indices), 3, 32, 32): the test images at ``indices`` under ``name`` at ``severity``."""
        array = self._array(name)
        block = array.shape[0] // 5
        rows = np.asarray(array[(severity - 1) * block + indices.numpy()])
        return torch.from_numpy(rows).permute(0, 3, 1, 2).contiguous()
