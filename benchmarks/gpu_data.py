"""The CIFAR-10 subset that travels to a GPU machine with the code, compressed losslessly, and its unpacking.

A GPU machine of this workplace gets the checkout and little more (64 MiB in all), and no network: the
50,000 training images are 150 MB raw. ``pack`` keeps a stratified subset of the pixel-exact training images,
by default 20,000 to train on and 5,000 held out to score on (drawn as ``--val-size`` draws them), as two
lossless WebP mosaics (32x32 tiles, 100 a row) and a JSON file of labels, indices and SHA-256 sums of the
pixels. ``unpack`` writes a ``cifar-10-batches-py`` folder from it: the training images as data_batch_1..5
(``--repeat-to N`` repeats them up to N images, to time full-size epochs) and the held-out ones as test_batch,
so ``cifarlens train --data-dir`` scores the held-out images as its test split. The sums are checked on
unpacking, so a lossy round trip cannot go unnoticed.

    python benchmarks/gpu_data.py pack --data-dir ../shared/data/cifar10 --out gpu_data
    python benchmarks/gpu_data.py unpack gpu_data --out /tmp/cifar20k [--repeat-to 50000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image, features

from cifarlens.data import load_cifar10, stratified_indices, train_val_indices

TILES_PER_ROW = 100
SIDE = 32
INDEX = "subset.json"


def pack(data_dir: str | None, out: Path, train: int, held_out: int, seed: int, method: int) -> dict:
    """Write the subset to ``out`` (train.webp, held_out.webp, subset.json); return subset.json's content."""
    _need_webp()
    data = load_cifar10(data_dir, download=False)
    train_idx, held_idx = train_val_indices(data.train.labels, held_out, seed)
    train_idx = train_idx[stratified_indices(data.train.labels[train_idx], train, seed)]
    out.mkdir(parents=True, exist_ok=True)
    index = {"format": 1, "classes": list(data.classes), "source": str(data.root), "seed": seed}
    for name, idx in (("train", train_idx), ("held_out", held_idx)):
        images = data.train.images[idx].numpy()
        Image.fromarray(_mosaic(images)).save(out / f"{name}.webp", lossless=True, quality=100, method=method)
        index[name] = {
            "n": len(idx),
            "labels": data.train.labels[idx].tolist(),
            "indices": idx.tolist(),
            "sha256": hashlib.sha256(images.tobytes()).hexdigest(),
        }
    (out / INDEX).write_text(json.dumps(index) + "\n")
    return index


def unpack(packed: Path, out: Path, repeat_to: int = 0) -> Path:
    """Write ``out/cifar-10-batches-py`` from the packed subset; return ``out``."""
    _need_webp()
    index = json.loads((packed / INDEX).read_text())
    splits = {
        name: (_read(packed, name, index[name]), np.array(index[name]["labels"])) for name in ("train", "held_out")
    }
    images, labels = splits["train"]
    if repeat_to:
        images, labels = np.resize(images, (repeat_to, *images.shape[1:])), np.resize(labels, repeat_to)
    folder = out / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (part, part_labels) in enumerate(zip(np.array_split(images, 5), np.array_split(labels, 5)), start=1):
        _write_batch(folder / f"data_batch_{i}", part, part_labels)
    _write_batch(folder / "test_batch", *splits["held_out"])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": index["classes"], "num_cases_per_batch": len(images) // 5}, f, protocol=4)
    return out


def _mosaic(images: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) uint8 -> one (rows * 32, 100 * 32, 3) RGB image, tiles row by row, the last row zero-padded."""
    rows = -(-len(images) // TILES_PER_ROW)
    tiles = np.zeros((rows * TILES_PER_ROW, SIDE, SIDE, 3), np.uint8)
    tiles[: len(images)] = images.transpose(0, 2, 3, 1)
    return tiles.reshape(rows, TILES_PER_ROW, SIDE, SIDE, 3).transpose(0, 2, 1, 3, 4).reshape(rows * SIDE, -1, 3)


def _read(packed: Path, name: str, entry: dict) -> np.ndarray:
    mosaic = np.asarray(Image.open(packed / f"{name}.webp").convert("RGB"))
    rows = mosaic.shape[0] // SIDE
    tiles = mosaic.reshape(rows, SIDE, TILES_PER_ROW, SIDE, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, SIDE, SIDE)
    images = np.ascontiguousarray(tiles[: entry["n"]])
    if hashlib.sha256(images.tobytes()).hexdigest() != entry["sha256"]:
        raise SystemExit(f"error: {packed / name}.webp does not decode to the packed pixels; pack it again")
    return images


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One batch in the official python format: (N, 3072) uint8 rows, R then G then B planes."""
    entry = {"batch_label": "cifarlens gpu subset", "labels": labels.tolist(), "data": images.reshape(len(images), -1)}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=4)


def _need_webp() -> None:
    if not features.check("webp"):
        raise SystemExit(
            "error: this Pillow was built without WebP; install a Pillow wheel from PyPI (they include it)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the compressed subset")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: $CIFARLENS_DATA_DIR)")
    p.add_argument("--out", type=Path, default=Path("gpu_data"), help="folder to write (git-ignored: gpu_data)")
    p.add_argument("--train", type=int, default=20_000, help="training images to keep")
    p.add_argument("--held-out", type=int, default=5_000, help="training images held out to score on")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified draws")
    p.add_argument("--method", type=int, default=6, choices=range(7), help="WebP effort: 6 packs smallest, 0 fastest")
    u = sub.add_parser("unpack", help="write cifar-10-batches-py from the subset")
    u.add_argument("packed", type=Path)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--repeat-to", type=int, default=0, help="repeat the training images up to this many")
    args = parser.parse_args(argv)
    if args.command == "pack":
        if args.train < 10 or args.held_out < 10:
            parser.error("--train and --held-out need at least 10 images (one per class)")
        index = pack(args.data_dir, args.out, args.train, args.held_out, args.seed, args.method)
        size = sum(f.stat().st_size for f in args.out.iterdir())
        print(
            f"packed {index['train']['n']} training + {index['held_out']['n']} held-out images into {args.out} "
            f"({size / 2**20:.1f} MiB)"
        )
    else:
        if not (args.packed / INDEX).is_file():
            sys.exit(f"error: no packed subset in {args.packed}; run: python benchmarks/gpu_data.py pack")
        print(f"unpacked to {unpack(args.packed, args.out, args.repeat_to)}")


if __name__ == "__main__":
    main()
