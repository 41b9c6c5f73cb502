"""CIFAR-10 as uint8 tensors, splits, batched augmentation."""

from cifarlens.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Augmenter,
    EpochImages,
    model_input,
    normalize,
    parse_augment,
)
from cifarlens.data.batches import iterate_batches, num_batches
from cifarlens.data.cifar10 import CLASSES, Cifar10, Split, load_cifar10, resolve_data_dir
from cifarlens.data.prepare import RunData, prepare_data
from cifarlens.data.splits import stratified_indices, train_val_indices

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CLASSES",
    "Augmenter",
    "Cifar10",
    "EpochImages",
    "RunData",
    "Split",
    "prepare_data",
    "iterate_batches",
    "load_cifar10",
    "model_input",
    "normalize",
    "num_batches",
    "parse_augment",
    "resolve_data_dir",
    "stratified_indices",
    "train_val_indices",
]
