"""ImageNet weights for torchvision backbones and ``timm:<name>`` models, with clear offline errors.

torchvision weights come through its weights API (``ResNet18_Weights.DEFAULT`` ...) and
live in ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``); timm weights come from
the Hugging Face hub cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``). With
``CIFARLENS_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) nothing is downloaded: a missing file
stops with one line naming it and the folder to put it in.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from cifarlens.errors import CifarlensError, ConfigError, first_line

TIMM_PREFIX = "timm:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailable(CifarlensError):
    """Pretrained weights are neither cached nor downloadable."""


def offline() -> bool:
    """True when ``CIFARLENS_OFFLINE`` or ``HF_HUB_OFFLINE`` asks for no downloads."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("CIFARLENS_OFFLINE", "HF_HUB_OFFLINE")
    )


def hub_weights_path(weights) -> Path:
    """Where torch.hub caches a torchvision ``weights`` enum member: ``<hub dir>/checkpoints/<url basename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def torchvision_state_dict(weights) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum member, from the hub cache or downloaded into it.

    Loaded with ``weights_only=True``; a download is checked against the hash in the file name.
    """
    path = hub_weights_path(weights)
    where = f"save {weights.url} as {path} (the folder is $TORCH_HOME/hub/checkpoints)"
    if not path.is_file() and offline():
        raise WeightsUnavailable(
            f"pretrained weights {path.name} ({weights}) are not cached and downloads are off; {where}"
        )
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash or a corrupt file a RuntimeError
        reason = first_line(err)
        raise WeightsUnavailable(
            f"could not get pretrained weights {path.name} ({weights}): {reason}; {where}"
        ) from None


def load_pretrained(model: nn.Module, weights) -> nn.Module:
    """Load ``weights`` (a torchvision weights enum member) into ``model``, which has torchvision's layout."""
    model.load_state_dict(torchvision_state_dict(weights))
    return model


# ---- timm -----------------------------------------------------------------------------------------------------


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm: models need the timm package; pip install 'cifarlens[timm]'") from None
    return timm


def check_timm_name(name: str) -> str:
    """The timm model name of ``timm:<name>``; unknown names suggest close ones."""
    timm = _timm()
    arch = name[len(TIMM_PREFIX) :]
    if not arch or not timm.is_model(arch):
        stem = arch.split(".")[0].split("_")[0]
        close = timm.list_models(f"*{stem}*")[:8] if stem else []
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm model {arch!r}{hint} (timm.list_models() lists them all)")
    return arch


def create_timm_model(name: str, num_classes: int = 10, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model(arch, pretrained=..., num_classes=...)`` for ``name`` = ``timm:<arch>``."""
    timm = _timm()
    arch = check_timm_name(name)
    if pretrained:
        cached = _timm_cached_file(timm, arch)
        if cached is not None:  # load the cached file directly: no hub request at all
            kwargs["pretrained_cfg_overlay"] = {"file": cached}
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"timm model {arch!r} rejects its model args: {err}") from None
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        reason = first_line(err)
        url = _timm_url(timm, arch)
        if url:
            raise WeightsUnavailable(
                f"could not get pretrained weights for timm model {arch!r} from {url}: {reason}; "
                f"save it into {Path(torch.hub.get_dir()) / 'checkpoints'}"
            ) from None
        repo, cache = _timm_source(timm, arch)
        raise WeightsUnavailable(
            f"could not get pretrained weights for timm model {arch!r} from Hugging Face repo {repo}: {reason}; "
            f"run `huggingface-cli download {repo}` online, or copy its model.safetensors into the hub cache {cache}"
        ) from None


def timm_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a timm model was pretrained with (ImageNet's when it does not say)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def hf_hub_cache() -> str:
    """The Hugging Face hub cache folder, read from the environment now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _timm_source(timm, arch: str) -> tuple[str, str]:
    cfg = timm.models.get_pretrained_cfg(arch)
    repo = (cfg.hf_hub_id if cfg is not None else None) or f"timm/{arch}"
    return repo, hf_hub_cache()


def _timm_url(timm, arch: str) -> str | None:
    """The download URL of weights that timm takes from a URL instead of the Hugging Face hub (legacy_xception)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.url if cfg is not None and not cfg.hf_hub_id and cfg.url else None


def _timm_url_cached_file(arch: str, url: str) -> str | None:
    """timm caches URL weights as torch.hub does: ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if path.is_file():
        return str(path)
    if offline():
        raise WeightsUnavailable(
            f"pretrained weights {path.name} (timm model {arch!r}) are not cached and downloads are off; "
            f"save {url} as {path} (the folder is $TORCH_HOME/hub/checkpoints)"
        )
    return None


def _timm_cached_file(timm, arch: str) -> str | None:
    """The cached ``model.safetensors`` of ``arch``'s hub repo; None when absent and downloads are allowed."""
    from huggingface_hub import try_to_load_from_cache

    url = _timm_url(timm, arch)
    if url:
        return _timm_url_cached_file(arch, url)
    repo, cache = _timm_source(timm, arch)
    filename = "model.safetensors"
    found = try_to_load_from_cache(repo, filename, cache_dir=cache)
    if isinstance(found, str):
        return found
    if offline():
        raise WeightsUnavailable(
            f"pretrained weights {filename} of Hugging Face repo {repo} (timm model {arch!r}) are not in the hub cache "
            f"{cache} and downloads are off; run `huggingface-cli download {repo} {filename}` where the network is "
            "reachable and copy the cache folder over (it follows $HF_HUB_CACHE / $HF_HOME)"
        )
    return None
