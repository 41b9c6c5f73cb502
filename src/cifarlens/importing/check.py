"""Did the import feed the model the way it was trained? Below ``MIN_ACCURACY`` on the test split, score the
usual input conventions on ``DIAGNOSE_N`` test images and name the flags of the best one; never pick silently."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cifarlens.data import Split
from cifarlens.data.augment import CIFAR10_MEAN, CIFAR10_STD
from cifarlens.models.imported import adapt
from cifarlens.models.pretrained import IMAGENET_MEAN, IMAGENET_STD
from cifarlens.run import ModelSpec
from cifarlens.run.predictor import Predictor

MIN_ACCURACY = 0.30  # a trained CIFAR-10 model scores far above this; one fed the wrong way scores near 10%
DIAGNOSE_N = 1000


def _flags(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    return f"--mean {','.join(f'{v:g}' for v in mean)} --std {','.join(f'{v:g}' for v in std)}"


# (name, flags, mean, std): how CIFAR-10 training scripts normalise their inputs
NORMALIZATIONS = (
    ("CIFAR-10 mean/std", _flags(CIFAR10_MEAN, CIFAR10_STD), CIFAR10_MEAN, CIFAR10_STD),
    ("0-1 scaling", "--scale 0-1", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ("ImageNet mean/std", _flags(IMAGENET_MEAN, IMAGENET_STD), IMAGENET_MEAN, IMAGENET_STD),
    ("-1 to 1 (mean 0.5, std 0.5)", _flags((0.5,) * 3, (0.5,) * 3), (0.5,) * 3, (0.5,) * 3),
)


@dataclass
class Trial:
    """One input convention scored on the diagnosis images, as the outputs come and in their best class order."""

    name: str
    flags: str
    accuracy: float
    reordered_accuracy: float  # with the outputs assigned to the classes they match most
    class_order: str  # those classes in output order: what --classes takes


@dataclass
class Diagnosis:
    trials: list[Trial]  # best first

    @property
    def best(self) -> Trial:
        return self.trials[0]

    @property
    def reordered(self) -> Trial | None:
        """The trial whose outputs, reordered, score far better than any as they come (a shifted or otherwise
        numbered class order), or None."""
        trial = max(self.trials, key=lambda t: t.reordered_accuracy)
        return trial if trial.reordered_accuracy > max(MIN_ACCURACY, self.best.accuracy + 0.2) else None

    @property
    def class_order(self) -> str | None:
        return self.reordered.class_order if self.reordered else None

    def advice(self) -> str:
        """One line: what scores best, and the flags that select it."""
        if (trial := self.reordered) is not None:
            return (
                f"the outputs look numbered in another class order: with {trial.flags} --classes "
                f"{trial.class_order} it scores {trial.reordered_accuracy:.1%}; re-run with those flags"
            )
        return f"best: {self.best.name} at {self.best.accuracy:.1%}: re-run with {self.best.flags}"


def diagnose(
    model: nn.Module,
    split: Split,
    classes: tuple[str, ...],
    *,
    output: str,
    image_size: int,
    device: str = "cpu",
    n: int = DIAGNOSE_N,
) -> Diagnosis:
    """Score each normalisation in ``NORMALIZATIONS``, in RGB and BGR order, on the first ``n`` images of
    ``split``, as the outputs come and with each output assigned to the class it matches most (the assignment
    that maximises the matches: labels shifted or numbered otherwise)."""
    images, labels = split.images[:n], split.labels[:n]
    trials = []
    for name, flags, mean, std in NORMALIZATIONS:
        for bgr in (False, True):
            spec = ModelSpec("check", {}, len(classes), classes, mean, std, image_size)
            predicted = Predictor(adapt(model, bgr, output), spec, device=device).logits(images).argmax(1)
            accuracy = float((predicted == labels).float().mean())
            reordered, order = _best_order(predicted.numpy(), labels.numpy(), classes)
            suffix = (", BGR", " --bgr") if bgr else ("", "")
            trials.append(Trial(name + suffix[0], flags + suffix[1], accuracy, reordered, order))
    trials.sort(key=lambda t: -t.accuracy)
    return Diagnosis(trials)


def _best_order(predicted: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> tuple[float, str]:
    """Accuracy when each output is read as the class it matches most, and those classes in output order."""
    from scipy.optimize import linear_sum_assignment

    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (predicted, labels), 1)
    outputs, truths = linear_sum_assignment(-confusion)
    order = ",".join(classes[t] for t in truths[np.argsort(outputs)])
    return float(confusion[outputs, truths].sum() / len(labels)), order


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())
