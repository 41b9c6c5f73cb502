"""``RobustnessConfig``: the options of ``cifarlens robustness`` (each field's comment is its ``--help`` text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cifarlens.errors import ConfigError
from cifarlens.robustness.corruptions import parse_corruptions, parse_severities


@dataclass
class RobustnessConfig:
    run: str = ""  # the run directory to score
    corruptions: str = "all"  # all (the 19), benchmark (CIFAR-10-C's 15) or comma-separated names
    severities: str = "1-5"  # severities to score: a range like 1-5 or a list like 1,3,5
    # the images to corrupt: val (the run's held-out training images) or test; auto: val when the run has one
    split: Literal["auto", "val", "test"] = "auto"
    n: int = 0  # score a stratified subset of this many images of the split (0: all of it)
    seed: int = 0  # seed of the corruptions' random draws (and of the subset): the same seed, the same images
    tta: bool = False  # average each image with its mirror (as evaluate --tta)
    backend: str = "torch"  # inference backend, as bench's: torch, torch-compile, torch-bf16, onnxruntime, openvino ...
    baseline: str = ""  # a run to compare with: corruption errors relative to it (Hendrycks's CE and relative mCE)
    device: str = "cpu"  # where corruptions are generated and torch backends run: auto, cpu, cuda or mps
    # a folder of the published CIFAR-10-C files (gaussian_noise.npy ..., labels.npy) to score instead of
    # generating the corruptions; they corrupt the test split
    cifar10c_dir: str = ""
    batch_size: int = 500  # images per forward pass
    data_dir: str = ""  # folder holding cifar-10-batches-py (default: the run's, then $CIFARLENS_DATA_DIR)

    def validate(self) -> None:
        if not self.run:
            raise ConfigError("name the run to score: cifarlens robustness RUN")
        self.corruption_names()
        self.severity_list()
        if self.n < 0:
            raise ConfigError(f"--n must be 0 (the whole split) or more, got {self.n}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.cifar10c_dir and self.split == "val":
            raise ConfigError("CIFAR-10-C corrupts the test split; drop --split val with --cifar10c-dir")

    def corruption_names(self) -> list[str]:
        return parse_corruptions(self.corruptions)

    def severity_list(self) -> list[int]:
        return parse_severities(self.severities)
