"""Reading CIFAR-10 from the official ``cifar-10-batches-py`` layout into uint8 tensors.

We read the pickled batches ourselves instead of through ``torchvision.datasets.CIFAR10``
because torchvision refuses any copy whose MD5 differs from the official release, while
re-encoded copies are common (see the data README); an MD5 mismatch is only a warning here.
torchvision is still used to download the archive when the data is missing.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlens.errors import DataError, first_line

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
# From torchvision.datasets.CIFAR10, the official release.
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATA_DIR_ENV = "CIFARLENS_DATA_DIR"


@dataclass
class Split:
    """Images and labels of one split.

    images: (N, 3, 32, 32) uint8, labels: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: torch.Tensor) -> "Split":
        """The rows at ``indices`` (a 1-D index tensor)."""
        return Split(self.images[indices], self.labels[indices])

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of the images and labels: which images an evaluation scored."""
        digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.to(torch.int64).numpy().tobytes())
        return digest.hexdigest()[:16]


@dataclass
class Cifar10:
    """The whole dataset in memory: ``train`` and ``test`` splits and the class names."""

    train: Split
    test: Split
    classes: tuple[str, ...]
    root: Path


def default_data_dir() -> Path:
    """Where data goes when neither ``--data-dir`` nor ``CIFARLENS_DATA_DIR`` is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cifarlens" / "data"


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path, str]:
    """The data folder and where its value came from: ``--data-dir`` > env > cache dir, or Keras's dataset
    cache when the cache dir holds no data and Keras's does."""
    if data_dir:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser(), DATA_DIR_ENV
    if find_batches_dir(default_data_dir()) is None:
        for folder in keras_dataset_dirs():
            if find_batches_dir(folder) is not None:
                return folder, "Keras's dataset cache"
    return default_data_dir(), "the default cache dir"


def keras_home() -> Path:
    """Keras's cache folder, as Keras picks it (read now, where Keras reads it once at import): ``$KERAS_HOME``,
    else ``~/.keras``, else ``/tmp/.keras`` when the home folder is not writable."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def keras_dataset_dirs() -> list[Path]:
    """Where ``keras.datasets.cifar10.load_data()`` leaves the batches: ``keras_home()/datasets``, in
    ``cifar-10-batches-py-target/`` since Keras 3.6 and directly before."""
    datasets = keras_home() / "datasets"
    return [datasets / "cifar-10-batches-py-target", datasets]


def find_batches_dir(root: Path) -> Path | None:
    """``root`` itself if it holds the batches, else ``root/cifar-10-batches-py``, else None."""
    for candidate in (root, root / BATCHES_DIR):
        if (candidate / TEST_FILES[0]).is_file() or (candidate / TRAIN_FILES[0]).is_file():
            return candidate
    return None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch: images (N, 3, 32, 32) uint8 and labels (N,) int64.

    Accepts both ``encoding="latin1"`` (str keys) and ``encoding="bytes"`` (bytes keys) pickles.
    These are the dataset's own files, opened from a data folder the user chose; the unpickler
    only admits numpy arrays and builtins (see ``_SafeUnpickler``).
    """
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} is missing; re-download the dataset or fix --data-dir")
    try:
        with open(path, "rb") as f:
            entry = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(
            f"CIFAR-10 file {path} is truncated or corrupted ({type(err).__name__}); "
            "delete it and re-download the dataset"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR-10 file {path} does not hold a batch dict; is this the python version?")
    entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if data is None or labels is None:
        raise DataError(f"CIFAR-10 file {path} has no 'data'/'labels' entries; is this the python version?")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"CIFAR-10 file {path} holds data of shape {data.shape} ({data.dtype}); "
            "expected N x 3072 uint8 with N labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"CIFAR-10 file {path} has labels outside 0-9; the file is corrupted")
    return data.reshape(-1, 3, 32, 32), labels


def read_classes(batches_dir: Path) -> tuple[str, ...]:
    """Class names from ``batches.meta``, or the official names when the file is absent."""
    path = batches_dir / META_FILE
    if not path.is_file():
        return CLASSES
    try:
        with open(path, "rb") as f:
            meta = _SafeUnpickler(f, encoding="latin1").load()
        meta = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in meta.items()}
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    except Exception:
        raise DataError(f"CIFAR-10 file {path} is corrupted; delete it and re-download the dataset") from None
    return tuple(names)


def check_md5(batches_dir: Path) -> list[str]:
    """Names of files whose MD5 differs from the official release (a warning, not an error)."""
    mismatched = []
    for name, expected in OFFICIAL_MD5.items():
        path = batches_dir / name
        if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() != expected:
            mismatched.append(name)
    return mismatched


def load_cifar10(
    data_dir: str | Path | None = None,
    download: bool = True,
    verify_md5: bool = True,
    source: str | None = None,
    fix: str | None = None,
) -> Cifar10:
    """Load CIFAR-10 from ``data_dir`` (the batches folder or its parent), downloading if allowed.

    Raises ``DataError`` with where it looked and how to fix it when the data can't be had; ``source``
    names where a given ``data_dir`` came from in that message (default: --data-dir) and ``fix`` replaces
    the default remedy (set the folder by --data-dir or the environment, or download).
    """
    root, found_in = resolve_data_dir(data_dir)
    source = source if data_dir and source else found_in
    batches = find_batches_dir(root)
    if batches is None:
        if download:
            _download(root, source, fix)
            batches = find_batches_dir(root)
        if batches is None:
            raise DataError(
                f"CIFAR-10 not found in {root} (from {source}); "
                + (
                    fix
                    or f"put the cifar-10-batches-py folder there, set {DATA_DIR_ENV} or --data-dir to the "
                    "folder that holds it, or allow --download with a network"
                )
            )
    if verify_md5:
        mismatched = check_md5(batches)
        if mismatched:
            warnings.warn(
                f"{batches}: {', '.join(mismatched)} differ from the official CIFAR-10 MD5 sums "
                "(re-encoded copy?); using them anyway",
                stacklevel=2,
            )
    train = _read_split(batches, TRAIN_FILES)
    test = _read_split(batches, TEST_FILES)
    return Cifar10(train=train, test=test, classes=read_classes(batches), root=batches)


def _read_split(batches_dir: Path, names: list[str]) -> Split:
    parts = [read_batch(batches_dir / name) for name in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Split(images.contiguous(), labels)


def _download(root: Path, source: str, fix: str | None) -> None:
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(root=str(root), train=True, download=True)
    except (OSError, RuntimeError) as err:
        reason = first_line(err)
        raise DataError(
            f"CIFAR-10 not found in {root} (from {source}) and the download failed ({reason}); "
            + (fix or f"put cifar-10-batches-py there by hand, or point {DATA_DIR_ENV} / --data-dir at it")
        ) from None


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only builds the numpy arrays and builtins a CIFAR batch contains."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
