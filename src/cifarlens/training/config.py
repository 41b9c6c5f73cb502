"""The training config: every option of ``cifarlens train``, with its help text as a comment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cifarlens.data.augment import COLOR_BRIGHTNESS, COLOR_CONTRAST, parse_augment
from cifarlens.errors import ConfigError
from cifarlens.models import list_models, model_kwargs
from cifarlens.models.pretrained import is_timm


@dataclass
class TrainConfig:
    """Every option of ``cifarlens train``; the defaults are the ``fast`` recipe's (``cifarlens recipes``)."""

    # preset the defaults come from (see `cifarlens recipes`); without it, --model picks that model's recipe
    recipe: str = "fast"
    model: str = "airnet"  # registered model name (see `cifarlens models`)
    model_args: dict = field(default_factory=dict)  # model keyword arguments as YAML, e.g. '{dropout: 0.2}'
    epochs: int = 8  # passes over the training set
    batch_size: int = 2000  # images per optimizer step
    # sgd (with momentum), adam, adamw, or muon (Muon on conv filters, SGD on the rest)
    optimizer: Literal["sgd", "adam", "adamw", "muon"] = "muon"
    lr: float = 0.24  # peak learning rate (of the conv filters with muon)
    bias_lr: float = 106.0  # learning rate of biases and norm shifts (0: --lr)
    head_lr: float = 1.66  # learning rate of linear-layer weights (0: --lr)
    momentum: float = 0.85  # SGD momentum (beta1 for adam/adamw; the non-filter groups of muon)
    muon_momentum: float = 0.6  # muon: momentum of the conv-filter updates
    nesterov: bool = True  # Nesterov momentum for SGD and muon
    weight_decay: float = 0.0024  # L2 weight decay (decoupled for adamw)
    # learning-rate schedule over all steps (linear: decay to 0)
    schedule: Literal["constant", "step", "cosine", "linear", "onecycle"] = "linear"
    step_epochs: int = 10  # step schedule: epochs between decays
    step_gamma: float = 0.1  # step schedule: factor applied at each decay
    warmup: float = 0.0  # epochs of linear warm-up from 0 to --lr (may be fractional)
    # train a whitening layer's bias (airnet) only over the first N epochs, its lr decaying to 0 (0: all epochs; models
    # without one ignore it)
    whiten_bias_epochs: float = 3.0
    label_smoothing: float = 0.2  # cross-entropy label smoothing in [0, 1)
    # comma-separated list of crop, flip, altflip (alternating mirror per epoch), jpeg (JPEG q75 copies), augmix
    # (AugMix copies, for corruption robustness), cutout, color (brightness and contrast jitter); or none
    augment: str = "crop,altflip"
    crop_padding: int = 2  # pixels of reflect padding for random crops
    cutout_size: int = 8  # side of the square cutout erases
    # augment color: shift each image's brightness by up to +- this fraction of the full range
    color_brightness: float = COLOR_BRIGHTNESS
    color_contrast: float = COLOR_CONTRAST  # augment color: scale each image's contrast by a factor in 1 +- this
    # the first --early-epochs epochs train on SIZE x SIZE images (0: off); CPU time scales with pixels, so 24 costs
    # about half of 32
    early_size: int = 24
    early_epochs: int = 5  # how many epochs at the start train at --early-size
    # how --early-size images are made: resize (whole image, shrunk), ramp (shrunk, growing from --early-size toward
    # --image-size in even 4-pixel steps) or crop (random windows at native scale; scored lower)
    early_mode: Literal["resize", "crop", "ramp"] = "resize"
    seed: int = 0  # seed for weights, data order and augmentation
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto picks cuda, then mps, then cpu
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # channels-last memory format for conv nets (faster convs on CPU and GPU)
    compile: bool = False  # torch.compile the model for training (Inductor): less memory, a slow first step
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default (one per core)
    # CPU on Linux: the C allocator keeps freed memory for the next step instead of returning it to the OS, for the rest
    # of the process (faster steps, more peak memory; BENCHMARKS.md)
    keep_freed_memory: bool = True
    subset: int = 0  # train on a stratified subset of N images (0: all); also caps the test split at N
    val_size: int = 0  # hold out N training images as a validation split for tuning (0: none)
    data_dir: str = ""  # folder holding cifar-10-batches-py (default: $CIFARLENS_DATA_DIR, then the cache dir)
    download: bool = True  # download CIFAR-10 through torchvision when it is missing
    out: str = ""  # run directory (default: runs/MODEL-YYYYmmdd-HHMMSS)
    # seconds of training between recovery checkpoints inside an epoch, so a kill loses at most that much (0: at epoch
    # ends only; cost: BENCHMARKS.md); on a CUDA GPU also between epoch-end checkpoints (the last epoch always has one)
    checkpoint_every: float = 60.0
    # score the test split after every epoch for the curves (on CUDA the fast recipes default to off: their runs take
    # seconds)
    eval_test_every_epoch: bool = True
    tensorboard: bool = False  # also write TensorBoard logs to RUN/tensorboard
    # run `cifarlens evaluate` on the run when training ends (off together with --no-eval-test-every-epoch: the test
    # split is never scored)
    evaluate: bool = True
    # write RUN/report.html (config, curves, per-class accuracy, confusion, mistakes) when training ends
    report: bool = True
    tta: bool = True  # the final evaluation also scores flip test-time augmentation
    # with --tta, also average one-pixel shifts of the image and its mirror (6 views, airbench's TTA level 2)
    tta_translate: bool = True
    # start from ImageNet weights (models with a pretrained argument, timm:<name>); inputs get ImageNet mean/std
    pretrained: bool = False
    # fine-tune the model of this run (trained or imported: its architecture, weights, normalisation and capabilities;
    # --model is then ignored)
    init_from: str = ""
    # keras:FILE.keras models: allow Lambda layers, Python code that runs when the file is loaded (only for files you
    # trust)
    trust_code: bool = False
    # none; backbone (train the head only); or until:LAYER (freeze modules up to and including LAYER, e.g. until:layer2)
    freeze: str = "none"
    # learning rate of all but the head (the top-level module holding the last Linear) (0: same rules as the head)
    backbone_lr: float = 0.0
    # side the 32x32 images are resized to, per batch after augmentation (e.g. 64, 96, 224 for pretrained backbones)
    image_size: int = 32
    # linear probe instead of training: logistic regression on frozen features of this run dir or pretrained model name
    features_from: str = ""
    # data-parallel over the processes of `torchrun --nproc_per_node N -m cifarlens.cli train --distributed`
    distributed: bool = False

    def epoch_image_size(self, epoch: int) -> int:
        """Side of the images epoch ``epoch`` (0-based) trains on: --early-size and --early-mode, then --image-size."""
        if epoch >= self.early_epochs:
            return self.image_size
        if self.early_mode == "ramp":
            # 4-pixel steps: each step changes the side of the feature maps after two 2x pools, so it changes the cost.
            growth = (self.image_size - self.early_size) * epoch / self.early_epochs
            return self.early_size + 4 * int(growth // 4)
        return self.early_size

    def validate(self) -> None:
        """Raise ``ConfigError`` for values out of range."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        non_negative = {
            "momentum": self.momentum,
            "muon_momentum": self.muon_momentum,
            "bias_lr": self.bias_lr,
            "head_lr": self.head_lr,
            "whiten_bias_epochs": self.whiten_bias_epochs,
            "weight_decay": self.weight_decay,
            "warmup": self.warmup,
            "crop_padding": self.crop_padding,
            "cutout_size": self.cutout_size,
            "threads": self.threads,
            "subset": self.subset,
            "val_size": self.val_size,
            "step_epochs": self.step_epochs,
            "backbone_lr": self.backbone_lr,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {value}")
        if not 0 <= self.color_brightness <= 1 or not 0 <= self.color_contrast < 1:
            raise ConfigError(
                f"--color-brightness must be in [0, 1] and --color-contrast in [0, 1), "
                f"got {self.color_brightness} and {self.color_contrast}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup > self.epochs:
            raise ConfigError(f"--warmup {self.warmup} is longer than --epochs {self.epochs}")
        parse_augment(self.augment)
        if self.early_size or self.early_epochs:
            if not 8 <= self.early_size < self.image_size:
                raise ConfigError(f"--early-size must be between 8 and --image-size - 1, got {self.early_size}")
            if self.image_size != 32:
                raise ConfigError("--early-size works on 32x32 images; drop it or --image-size")
            if not 0 < self.early_epochs <= self.epochs:
                raise ConfigError(f"--early-epochs must be between 1 and --epochs, got {self.early_epochs}")
        if not 16 <= self.image_size <= 512:
            raise ConfigError(f"--image-size must be between 16 and 512 pixels, got {self.image_size}")
        parse_freeze(self.freeze)
        self._validate_model()

    def _validate_model(self) -> None:
        """Raise ``ConfigError`` for an unknown model, arguments it does not take, or weights it lacks."""
        if self.init_from:
            if self.pretrained:
                raise ConfigError("--init-from starts from that run's weights; drop --pretrained")
            return

        accepted = model_kwargs(self.model)  # also rejects unknown model names
        unknown = sorted(set(self.model_args) - set(accepted))
        if "pretrained" in self.model_args:
            raise ConfigError(
                "pass --pretrained, not pretrained in --model-args (runs are rebuilt without hub weights)"
            )
        if "trust_code" in self.model_args:
            raise ConfigError("pass --trust-code, not trust_code in --model-args (a run never trusts code by itself)")
        if self.pretrained and "pretrained" not in accepted:
            have = [name for name in list_models() if "pretrained" in model_kwargs(name)]
            raise ConfigError(
                f"model {self.model!r} has no pretrained weights; use one of {', '.join(have)}, "
                "timm:<name> or keras:<name>"
            )
        if unknown and not is_timm(self.model):
            raise ConfigError(
                f"model {self.model!r} does not take {', '.join(unknown)}; "
                f"valid model args: {', '.join(sorted(accepted)) or 'none'}"
            )


def parse_freeze(spec: str) -> tuple[str, str | None]:
    """``"none"`` -> ("none", None), ``"backbone"`` -> ("backbone", None), ``"until:layer2"`` -> ("until", "layer2")."""
    if spec in ("none", "backbone"):
        return spec, None
    if spec.startswith("until:") and spec[len("until:") :].strip():
        return "until", spec[len("until:") :].strip()
    raise ConfigError(
        f"invalid --freeze {spec!r}; use none, backbone or until:LAYER (a module name, e.g. until:layer2)"
    )
