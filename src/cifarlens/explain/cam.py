"""Class activation maps through the grad-cam package (pytorch-grad-cam).

``CamExplainer(model, method="gradcam")(x, targets) -> (N, H, W)`` heat maps in [0, 1] over
normalised input batches x (N, 3, H, W). The original CAM (Zhou et al. 2016), which grad-cam
does not ship, is added as a grad-cam ``BaseCAM`` whose channel weights are the linear head's
row for the class; it is offered only for models whose head is global-average-pool + linear.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarlens.errors import CifarlensError
from cifarlens.explain.faithfulness import DeletionInsertion
from cifarlens.explain.images import choose_images, denormalize
from cifarlens.explain.plots import plot_cams
from cifarlens.explain.run_model import load_run_model
from cifarlens.io import atomic_write_csv
from cifarlens.models.layers import get_module, map_size
from cifarlens.models.registry import Capabilities, get_submodule, guess_capabilities
from cifarlens.run.predictor import Predictor

# Method name -> (its pytorch-grad-cam class, imported on first use; what it shows): a new grad-cam method is one
# line here, and explain attribute/cam/compare-cam offer it.
GRAD_CAM_CLASSES = {
    "gradcam": ("GradCAM", "channel weights from the pooled gradients (Selvaraju et al. 2017)"),
    "gradcam++": ("GradCAMPlusPlus", "Grad-CAM with higher-order gradient weights (Chattopadhay et al. 2018)"),
    "scorecam": ("ScoreCAM", "channel weights from the class score of each masked copy (Wang et al. 2020)"),
    "eigencam": ("EigenCAM", "first principal component of the activations, class-agnostic (Muhammad and Yeasin 2020)"),
    "layercam": ("LayerCAM", "positive gradients times activations per position (Jiang et al. 2021)"),
    "hirescam": ("HiResCAM", "gradients times activations per position, no pooling (Draelos and Carin 2020)"),
    "xgradcam": ("XGradCAM", "Grad-CAM with activation-normalised weights (Fu et al. 2020)"),
    "ablationcam": (
        "AblationCAM",
        "channel weights from the score drop when each channel is zeroed (Desai and Ramaswamy 2020)",
    ),
    "fullgrad": ("FullGrad", "bias gradients of every layer plus the input gradient (Srinivas and Fleuret 2019)"),
}
CLASSIC_CAM = "the head's weights on the pooled features: global-average-pool + linear heads only (Zhou et al. 2016)"
METHODS = (*GRAD_CAM_CLASSES, "cam")  # "cam": the original CAM, a BaseCAM of ours (_classic_cam)
# Reference for faithfulness scores: random channel weights on the same target layer (grad-cam's
# RandomCAM), so the map has the same blocky resolution as the real ones. A pixel-wise random map
# would be an unfair reference: scattered deletions destroy an image faster than any region does.
RANDOM = "random"


def _grad_cam_class(method: str):
    import pytorch_grad_cam as pgc

    return getattr(pgc, "RandomCAM" if method == RANDOM else GRAD_CAM_CLASSES[method][0])


def classic_cam_layers(model: nn.Module, caps: Capabilities) -> tuple[str, nn.Linear]:
    """The feature module and the Linear of a model whose head is global-average-pool + linear, as its
    capabilities declare; any other head is a ``CifarlensError`` naming the methods that work."""
    if caps.gap_features is None:
        raise CifarlensError(
            f"the original CAM needs a global-average-pool + linear head, which {type(model).__name__} does not "
            "have; use --method gradcam (or gradcam++, scorecam, eigencam, layercam)"
        )
    return caps.gap_features, get_submodule(model, caps.classifier)


def _classic_cam(model: nn.Module, target_layers: list[nn.Module], weight: torch.Tensor):
    from pytorch_grad_cam.base_cam import BaseCAM

    class ClassicCAM(BaseCAM):
        """CAM_k = sum_c w[k, c] A_c: the head's weights for class k applied to the last feature maps."""

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            categories = [int(t.category) for t in targets]
            return weight[categories].detach().cpu().numpy()

    return ClassicCAM(model=model, target_layers=target_layers, uses_gradients=False)


@contextlib.contextmanager
def _quiet_progress_bars():
    """Silence the tqdm bars ScoreCAM and AblationCAM draw for every batch (they have no option for it)."""
    import types
    from unittest import mock

    from pytorch_grad_cam import ablation_cam, score_cam

    silent = types.SimpleNamespace(tqdm=lambda iterable, **_: iterable)
    with mock.patch.object(score_cam, "tqdm", silent), mock.patch.object(ablation_cam, "tqdm", silent):
        yield


class CamExplainer:
    """Heat maps of one CAM method for batches: ``explainer(x, targets=None) -> (N, H, W)`` float32 in [0, 1].

    x: normalised (N, 3, H, W). ``targets``: class per image, or None for the predicted class.
    ``capabilities``: the model's declared ones (``model_capabilities``); None guesses them from the
    model (``guess_capabilities``). ``target_layer`` is a module name (default: the declared CAM layer;
    for ``cam`` the module before the global average pool).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "gradcam",
        *,
        capabilities: Capabilities | None = None,
        target_layer: str | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        seed: int = 0,
    ):
        if method not in (*METHODS, RANDOM):
            raise CifarlensError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
        self.model, self.method, self.seed = model.eval(), method, seed
        caps = capabilities or guess_capabilities(model, image_size)
        if method == "cam":
            layer, linear = classic_cam_layers(model, caps)
            if target_layer and target_layer != layer:
                raise CifarlensError(f"the original CAM is defined on {layer!r} (before the pool); drop --target-layer")
            self.target_layer = layer
            self._cam = _classic_cam(model, [get_module(model, layer)], linear.weight)
        else:
            self.target_layer = target_layer or caps.cam_layer
            with contextlib.redirect_stdout(io.StringIO()):  # FullGrad prints that it uses every bias layer
                self._cam = _grad_cam_class(method)(model=model, target_layers=[get_module(model, self.target_layer)])
            if method in ("scorecam", "ablationcam"):
                self._cam.batch_size = batch_size  # masked copies per forward pass
        self.time_per_image = 0.0
        self.map_size = map_size(model, self.target_layer, image_size)  # (H, W): the CAM's resolution

    def __call__(self, x: torch.Tensor, targets: list[int] | None = None) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if targets is None:
            with torch.no_grad():
                targets = self.model(x).argmax(1).tolist()
        t0 = time.perf_counter()
        state = np.random.get_state()
        np.random.seed(self.seed)  # RandomCAM draws from numpy's global generator
        try:
            with _quiet_progress_bars():
                maps = self._cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        finally:
            np.random.set_state(state)
        self.time_per_image = (time.perf_counter() - t0) / max(len(x), 1)
        return np.asarray(maps, dtype=np.float32)


@dataclass
class CamResult:
    """What ``cam_run`` computed: per method the heat maps (N, H, W) in [0, 1], per image and method the numbers."""

    model_name: str
    images: np.ndarray  # float (N, H, W, 3) in [0, 1], as shown
    tags: list[str]
    targets: list[int]  # the class each map explains
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N,) of the explained class
    maps: dict[str, np.ndarray]  # method -> (N, H, W)
    rows: list[dict]  # per method and image: target layer, peak, deletion/insertion AUCs, seconds

    @property
    def title(self) -> str:
        by_method = {m: np.mean([r["deletion_auc"] for r in self.rows if r["method"] == m]) for m in self.maps}
        layers = sorted({f"{r['target_layer']} ({r['map_size']} maps)" for r in self.rows})
        return f"{self.model_name} at {', '.join(layers)}, deletion AUC (lower: more faithful): " + ", ".join(
            f"{m} {v:.3f}" for m, v in by_method.items()
        )

    def write(self, folder: str | Path) -> list[Path]:
        """The figure (PNG: a row per image, a heat map per method) and the per-image CSV into ``folder``."""

        folder = Path(folder)
        stem = "_".join(m.replace("+", "p") for m in self.maps)
        paths = [folder / f"{stem}.png", folder / f"{stem}.csv"]
        captions = [f"{t}: {self.classes[c]} {p:.0%}" for t, c, p in zip(self.tags, self.targets, self.probabilities)]
        plot_cams(self.images, self.maps, paths[0], captions=captions, title=self.title)
        atomic_write_csv(paths[1], self.rows)
        return paths


def cam_run(
    run: str | Path,
    *,
    methods: list[str] | tuple[str, ...] = ("gradcam",),
    images=None,
    index: str | None = None,
    target_layer: str | None = None,
    target_class: str | int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "cpu",
) -> CamResult:
    """Heat maps of ``methods`` (``METHODS`` names) for image files or the ``index`` (``0-7``, ``0,3``) of the run's
    ``split``, explaining ``target_class`` (a class name or number; default: the predicted class), each map
    scored by deletion and insertion, computed on ``device``."""

    model, spec, dev = load_run_model(run, device)
    imgs, labels, tags = choose_images(run, images, index, split, data_dir)
    x = spec.inputs(imgs.to(dev))
    probs = Predictor(model, spec, device=dev).probabilities(imgs)
    if target_class is None:
        targets = probs.argmax(1).tolist()
    else:
        targets = [class_index(str(target_class), spec.classes)] * len(x)
    caps = spec.capabilities(model)
    metric = DeletionInsertion(model, steps=10)
    maps, rows = {}, []
    for method in methods:
        explainer = CamExplainer(
            model, method, capabilities=caps, target_layer=target_layer, image_size=spec.image_size
        )
        maps[method] = found = explainer(x, targets)
        for i in range(len(x)):
            curves = metric(x[i : i + 1], found[i : i + 1], [targets[i]])
            peak = np.unravel_index(int(found[i].argmax()), found[i].shape)
            rows.append(
                {
                    "image": tags[i],
                    "method": method,
                    "target_layer": explainer.target_layer,
                    "map_size": "x".join(map(str, explainer.map_size)),
                    "label": spec.classes[labels[i]] if labels else "",
                    "explained_class": spec.classes[targets[i]],
                    "probability": float(probs[i, targets[i]]),
                    "peak_row": int(peak[0]),
                    "peak_col": int(peak[1]),
                    **curves.auc(),
                    "seconds_per_image": explainer.time_per_image,
                }
            )
    shown = denormalize(x, spec).permute(0, 2, 3, 1).cpu().numpy()
    chosen = probs[torch.arange(len(targets)), torch.tensor(targets)].numpy()
    return CamResult(spec.name, shown, tags, targets, spec.classes, chosen, maps, rows)


def class_index(text: str, classes: tuple[str, ...]) -> int:
    """The number of a class given by name or number; anything else lists the classes."""
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise CifarlensError(f"unknown class {text!r}; give a name or number: {', '.join(classes)}")
