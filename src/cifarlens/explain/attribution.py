"""Attribution maps at pixel resolution: the methods of Captum and pytorch-grad-cam that fit a CNN classifier,
behind one registry.

``attribute_maps(model, x, targets, methods, capabilities=...) -> {method: (N, H, W) float32}`` for normalised
batches x (N, 3, H, W). Each method is one ``METHODS`` entry (name, library, what it needs, how its raw
attribution becomes one map per image), so validation, ``--help`` and the README's table all come from it.

Pitfalls handled here, not by callers: Captum's and grad-cam's hooks break on in-place ReLUs and on modules
called twice per forward (ResNet's shared ReLU), so the methods run on ``hook_safe(model)``, a copy with
in-place ops off and every shared module unshared by FX; the run's own model is never changed. The model
is in eval mode (BatchNorm uses its running statistics). Baselines are images in the model's input
normalisation: ``black`` (zero pixels), ``blur`` (the image, Gaussian-blurred) or ``mean`` (the training
mean, 0 after normalisation).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from cifarlens.errors import CifarlensError, first_line
from cifarlens.explain.cam import CLASSIC_CAM, GRAD_CAM_CLASSES, CamExplainer, class_index
from cifarlens.explain.faithfulness import DeletionInsertion
from cifarlens.explain.images import choose_images, denormalize
from cifarlens.explain.plots import plot_cams
from cifarlens.explain.run_model import load_run_model
from cifarlens.io import atomic_path, atomic_write_csv
from cifarlens.models.layers import LayerError
from cifarlens.models.registry import Capabilities, guess_capabilities
from cifarlens.run.predictor import Predictor

BASELINES = ("black", "blur", "mean")
PATCH = 4  # side of the square patches the perturbation methods switch on and off (an 8x8 grid at 32 px)


@dataclass
class Inputs:
    """What every method gets: the hook-safe model, the batch, the classes to explain and the options."""

    model: nn.Module  # a copy without in-place ops, eval mode: its modules are the run's (CAM layers by name)
    unshared: nn.Module  # hook_safe(model): one module per call, for the methods that hook every ReLU
    x: torch.Tensor  # normalised (N, 3, H, W)
    targets: list[int]
    baseline: torch.Tensor  # (N, 3, H, W), in the same normalisation
    capabilities: Capabilities
    target_layer: str | None = None  # CAM methods: None uses the declared cam_layer
    seed: int = 0
    internal_batch_size: int = 64  # integrated gradients' interpolation steps per forward pass: bounds memory


@dataclass(frozen=True)
class Method:
    """One attribution method. ``run(inputs)`` returns its raw attribution, (N, 3, H, W) or (N, H, W)."""

    name: str
    library: str  # "captum" or "grad-cam"
    summary: str
    run: Callable[[Inputs], torch.Tensor | np.ndarray]
    needs_layer: bool = False  # looks at a CAM target layer
    needs_baseline: bool = False  # compares with a baseline image
    signed: bool = False  # the positive part is the evidence for the class (else magnitudes count)
    per_image: bool = False  # the library takes one image per call
    hooks_every_relu: bool = False  # hooks every ReLU module: runs on hook_safe(model), shared modules unshared
    gap_head_only: bool = False  # defined only for a global-average-pool + linear head (the original CAM)
    gradient_free: bool = False  # perturbs the input and reads the outputs only: runs on a graph without gradients

    def applies_to(self, capabilities: Capabilities) -> bool:
        """Whether the method is defined for a model with these capabilities."""
        return not self.gap_head_only or capabilities.gap_features is not None


METHODS: dict[str, Method] = {}


def register(name: str, library: str, summary: str, **options) -> Callable:
    """Register the decorated ``run(inputs)`` as method ``name``: adding a method is this one entry."""

    def add(run: Callable[[Inputs], torch.Tensor | np.ndarray]) -> Callable:
        if name in METHODS:
            raise ValueError(f"attribution method {name!r} registered twice")
        METHODS[name] = Method(name, library, summary, run, **options)
        return run

    return add


def check_methods(names: list[str]) -> list[str]:
    """``names`` if every one is registered, else a ``CifarlensError`` listing the valid ones."""
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise CifarlensError(
            f"unknown attribution method {', '.join(unknown) or '(none)'}; choose from: {', '.join(METHODS)}"
        )
    return names


# -- Captum -----------------------------------------------------------------------------------------------
def _captum(cls_name: str):
    import captum.attr

    return getattr(captum.attr, cls_name)


def _patches(x: torch.Tensor) -> torch.Tensor:
    """Feature mask (1, 1, H, W) of PATCH x PATCH squares, numbered row by row, shared by the channels."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device) // PATCH
    cols = torch.arange(w, device=x.device) // PATCH
    return (rows[:, None] * ((w + PATCH - 1) // PATCH) + cols[None, :])[None, None]


@register("saliency", "captum", "gradient magnitude of the class score (Simonyan et al. 2014)")
def _saliency(a: Inputs):
    return _captum("Saliency")(a.model).attribute(a.x, target=a.targets, abs=True)


@register("input-x-gradient", "captum", "input times gradient (Shrikumar et al. 2016)", signed=True)
def _input_x_gradient(a: Inputs):
    return _captum("InputXGradient")(a.model).attribute(a.x, target=a.targets)


@register(
    "integrated-gradients",
    "captum",
    "path integral of gradients from the baseline, 32 steps (Sundararajan et al. 2017)",
    needs_baseline=True,
    signed=True,
)
def _integrated_gradients(a: Inputs):
    ig = _captum("IntegratedGradients")(a.model)
    return ig.attribute(
        a.x, baselines=a.baseline, target=a.targets, n_steps=32, internal_batch_size=a.internal_batch_size
    )


@register(
    "smoothgrad", "captum", "saliency averaged over 16 noisy copies, noise 15% of the input range (Smilkov et al. 2017)"
)
def _smoothgrad(a: Inputs):
    tunnel = _captum("NoiseTunnel")(_captum("Saliency")(a.model))
    sigma = 0.15 * float(a.x.max() - a.x.min())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)
        return tunnel.attribute(a.x, nt_type="smoothgrad", nt_samples=16, stdevs=sigma, target=a.targets, abs=True)


@register(
    "gradient-shap",
    "captum",
    "expected gradients over noisy copies of the baseline and the input path, 16 samples (Lundberg and Lee 2017)",
    needs_baseline=True,
    signed=True,
)
def _gradient_shap(a: Inputs):
    shap = _captum("GradientShap")(a.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)
        return shap.attribute(a.x, baselines=a.baseline, n_samples=16, stdevs=0.09, target=a.targets)


@register(
    "deeplift",
    "captum",
    "DeepLIFT rescale rule against the baseline (Shrikumar et al. 2017)",
    needs_baseline=True,
    signed=True,
    hooks_every_relu=True,
)
def _deeplift(a: Inputs):
    return _captum("DeepLift")(a.unshared).attribute(a.x, baselines=a.baseline, target=a.targets)


@register(
    "guided-backprop",
    "captum",
    "gradients with negative ReLU gradients zeroed (Springenberg et al. 2015)",
    hooks_every_relu=True,
)
def _guided_backprop(a: Inputs):
    return _captum("GuidedBackprop")(a.unshared).attribute(a.x, target=a.targets).abs()


@register(
    "deconvolution",
    "captum",
    "gradients through ReLUs applied to the gradient (Zeiler and Fergus 2014)",
    hooks_every_relu=True,
)
def _deconvolution(a: Inputs):
    return _captum("Deconvolution")(a.unshared).attribute(a.x, target=a.targets).abs()


@register(
    "occlusion",
    "captum",
    f"drop in the class score when a {PATCH}x{PATCH} window (stride 2) is set to the baseline (Zeiler and Fergus 2014)",
    needs_baseline=True,
    signed=True,
    gradient_free=True,
)
def _occlusion(a: Inputs):
    occlusion = _captum("Occlusion")(a.model)
    return occlusion.attribute(
        a.x,
        sliding_window_shapes=(3, PATCH, PATCH),
        strides=(3, 2, 2),
        baselines=a.baseline,
        target=a.targets,
        perturbations_per_eval=16,
    )


@register(
    "feature-ablation",
    "captum",
    f"drop in the class score when each {PATCH}x{PATCH} patch is set to the baseline",
    needs_baseline=True,
    signed=True,
    gradient_free=True,
)
def _feature_ablation(a: Inputs):
    ablation = _captum("FeatureAblation")(a.model)
    return ablation.attribute(
        a.x, baselines=a.baseline, target=a.targets, feature_mask=_patches(a.x), perturbations_per_eval=16
    )


@register(
    "kernel-shap",
    "captum",
    f"Shapley values of the {PATCH}x{PATCH} patches by weighted regression, 256 samples (Lundberg and Lee 2017)",
    needs_baseline=True,
    signed=True,
    per_image=True,
    gradient_free=True,
)
def _kernel_shap(a: Inputs):
    shap = _captum("KernelShap")(a.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)
        return shap.attribute(
            a.x,
            baselines=a.baseline,
            target=a.targets,
            feature_mask=_patches(a.x),
            n_samples=256,
            perturbations_per_eval=64,
        )


@register(
    "lime",
    "captum",
    f"a local ridge regression over the {PATCH}x{PATCH} patches, 256 samples (Ribeiro et al. 2016)",
    needs_baseline=True,
    signed=True,
    per_image=True,
    gradient_free=True,
)
def _lime(a: Inputs):
    from captum._utils.models.linear_model import SkLearnRidge

    # ridge, as the LIME paper fits: captum's default lasso zeroes every patch when the effects are small
    lime = _captum("Lime")(a.model, interpretable_model=SkLearnRidge(alpha=1.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)
        return lime.attribute(
            a.x,
            baselines=a.baseline,
            target=a.targets,
            feature_mask=_patches(a.x),
            n_samples=256,
            perturbations_per_eval=64,
        )


# -- pytorch-grad-cam -------------------------------------------------------------------------------------------
def _cam(method: str) -> Callable[[Inputs], np.ndarray]:
    def run(a: Inputs) -> np.ndarray:

        explainer = CamExplainer(
            a.model,
            method,
            capabilities=a.capabilities,
            target_layer=a.target_layer,
            image_size=a.x.shape[-1],
            seed=a.seed,
        )
        return explainer(a.x, a.targets)

    return run


def _register_cams() -> None:

    for name, (_, summary) in GRAD_CAM_CLASSES.items():
        register(name, "grad-cam", summary, needs_layer=name != "fullgrad")(_cam(name))
    register("cam", "grad-cam", CLASSIC_CAM, needs_layer=True, gap_head_only=True)(_cam("cam"))


_register_cams()


@register(
    "guided-gradcam",
    "grad-cam",
    "guided backprop times the Grad-CAM map (Selvaraju et al. 2017)",
    needs_layer=True,
    signed=True,
    hooks_every_relu=True,
)
def _guided_gradcam(a: Inputs):
    guided = _guided_backprop(a).sum(1)
    return guided * torch.as_tensor(_cam("gradcam")(a), device=guided.device)


# -- running them -------------------------------------------------------------------------------------------
def has_gradients(model: nn.Module) -> bool:
    """False for a model that gives no gradients (an imported ONNX graph run by onnxruntime)."""
    return all(getattr(m, "differentiable", True) for m in model.modules())


def usable_methods(model: nn.Module, capabilities: Capabilities) -> list[str]:
    """The ``METHODS`` names that run on ``model``: those its capabilities allow, only gradient-free ones when it
    gives no gradients."""
    gradients = has_gradients(model)
    return [n for n, m in METHODS.items() if m.applies_to(capabilities) and (gradients or m.gradient_free)]


def check_gradients(model: nn.Module, methods: list[str]) -> None:
    """A ``LayerError`` naming the methods that need gradients when ``model`` has none (an ONNX graph)."""
    if has_gradients(model):
        return
    needing = [m for m in methods if not METHODS[m].gradient_free]
    if needing:
        free = ", ".join(n for n, m in METHODS.items() if m.gradient_free)
        verb = "needs" if len(needing) == 1 else "need"
        raise LayerError(
            f"{', '.join(needing)} {verb} gradients, and this model is an ONNX graph run by onnxruntime, which "
            f"gives none: use {free}, or import the model's PyTorch form"
        )


def without_inplace(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose in-place ops (ReLU(inplace=True) ...) write new tensors."""
    safe = copy.deepcopy(model).eval()
    for module in safe.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return safe


def hook_safe(model: nn.Module) -> nn.Module:
    """``without_inplace(model)`` with every module that the forward calls more than once replaced by one copy
    per call (through FX; a model FX cannot trace keeps its modules)."""
    import torch.fx

    safe = without_inplace(model)
    try:
        graph = torch.fx.symbolic_trace(safe)
    except Exception:  # FX raises many types for untraceable control flow
        return safe
    seen: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op != "call_module":
            continue
        seen[node.target] = seen.get(node.target, 0) + 1
        if seen[node.target] > 1:  # a second call: give it a module of its own
            name = f"{node.target}_call{seen[node.target]}".replace(".", "_")
            graph.add_submodule(name, copy.deepcopy(graph.get_submodule(node.target)))
            node.target = name
    if max(seen.values(), default=1) == 1:
        return safe
    graph.recompile()
    return graph.eval()


def baseline_images(x: torch.Tensor, kind: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The baseline of each image of normalised x (N, 3, H, W), in the same normalisation."""
    if kind not in BASELINES:
        raise CifarlensError(f"unknown baseline {kind!r}; choose one of: {', '.join(BASELINES)}")
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "black":
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        return ((0 - m) / s).expand_as(x).contiguous()
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])


def to_map(raw: torch.Tensor | np.ndarray, method: Method) -> np.ndarray:
    """One non-negative map (N, H, W) per image: the channels summed, the positive part of a signed method."""
    out = torch.as_tensor(np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw), dtype=torch.float32)
    if out.ndim == 4:
        out = out.sum(1)
    if method.signed:
        out = out.clamp(min=0)
    return out.abs().numpy()


@dataclass
class Attribution:
    """The maps of one method: ``maps`` (N, H, W) >= 0, the raw attribution, and seconds per image."""

    method: str
    maps: np.ndarray
    raw: np.ndarray
    seconds_per_image: float


def attribute_maps(
    model: nn.Module,
    x: torch.Tensor,
    targets: list[int],
    methods: list[str],
    *,
    capabilities: Capabilities | None = None,
    baseline: str = "black",
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    target_layer: str | None = None,
    seed: int = 0,
) -> dict[str, Attribution]:
    """Attribution maps of ``methods`` (``METHODS`` names) for normalised x (N, 3, H, W) and the classes
    ``targets``. ``mean``/``std``: the model's input normalisation (for the ``black`` baseline)."""
    check_methods(methods)
    check_gradients(model, methods)
    caps = capabilities or guess_capabilities(model, x.shape[-1])
    plain = without_inplace(model)
    unshared = hook_safe(model) if any(METHODS[m].hooks_every_relu for m in methods) else plain
    inputs = Inputs(
        plain, unshared, x, list(targets), baseline_images(x, baseline, mean, std), caps, target_layer, seed
    )
    _import_libraries({METHODS[m].library for m in methods})  # so that no method's time includes an import
    results = {}
    for name in methods:
        method = METHODS[name]
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Captum warns on every call that the input needs gradients and that its hooks go afterwards
                warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\..*")
                raw = _run(method, inputs)
        except CifarlensError:
            raise
        except Exception as err:  # a library refusing this architecture: one line naming method and model
            reason = first_line(err)
            raise CifarlensError(
                f"{name} does not work on {type(model).__name__} ({reason}); drop it from --method"
            ) from None
        seconds = (time.perf_counter() - t0) / max(len(x), 1)
        raw_np = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw, dtype=np.float32)
        results[name] = Attribution(name, to_map(raw, method), raw_np, seconds)
    return results


def _import_libraries(libraries: set[str]) -> None:
    if "captum" in libraries:
        import captum.attr  # noqa: F401
    if "grad-cam" in libraries:
        import pytorch_grad_cam  # noqa: F401


def _run(method: Method, inputs: Inputs):
    if not method.per_image:
        return method.run(inputs)
    parts = []
    for i in range(len(inputs.x)):
        one = Inputs(
            inputs.model,
            inputs.unshared,
            inputs.x[i : i + 1],
            inputs.targets[i : i + 1],
            inputs.baseline[i : i + 1],
            inputs.capabilities,
            inputs.target_layer,
            inputs.seed,
        )
        parts.append(torch.as_tensor(method.run(one)))
    return torch.cat(parts)


# Activation modules DeepLIFT needs a rule for (Captum's are in deep_lift.SUPPORTED_NON_LINEAR).
ACTIVATIONS = {
    nn.ReLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.ReLU6,
    nn.PReLU,
    nn.SELU,
    nn.CELU,
}


def method_notes(model: nn.Module, methods: list[str]) -> list[str]:
    """Where a method's rules do not reach this model's layers, so its map means less than its name says."""
    kind, found = type(model).__name__, []
    relu_rules = [m for m in methods if METHODS[m].hooks_every_relu and m != "deeplift"]
    if relu_rules and not any(isinstance(m, nn.ReLU) for m in model.modules()):
        also = " (guided-gradcam: gradient x Grad-CAM)" if "guided-gradcam" in relu_rules else ""
        found.append(
            f"{', '.join(relu_rules)}: {kind} has no ReLU modules, so Captum's ReLU rules never apply and the "
            f"guided gradient is the plain gradient{also}"
        )
    if "deeplift" in methods:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        skipped = sorted(
            {type(m).__name__ for m in model.modules() if type(m) in ACTIVATIONS - SUPPORTED_NON_LINEAR.keys()}
        )
        if skipped:
            found.append(
                f"deeplift: Captum has no DeepLIFT rule for {', '.join(skipped)} in {kind}; it passes their "
                "plain gradient"
            )
    return found


# -- on a run ----------------------------------------------------------------------------------------------
@dataclass
class AttributeResult:
    """What ``attribute`` computed for a run: per method the maps (N, H, W), per image the numbers."""

    model_name: str
    images: np.ndarray  # float (N, H, W, 3) in [0, 1], as shown
    tags: list[str]
    targets: list[int]
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N,) of the explained class
    attributions: dict[str, Attribution]
    rows: list[dict]  # one per image and method: faithfulness and cost
    notes: list[str]  # where a method's rules do not reach the model (method_notes)

    def write(self, folder) -> list:
        """figure PNG, raw maps (safetensors) and the per-image CSV into ``folder``; returns their paths."""
        from pathlib import Path

        from safetensors.numpy import save_file

        folder = Path(folder)
        stem = "_".join(m.replace("+", "p") for m in self.attributions)
        captions = [f"{t}: {self.classes[c]} {p:.0%}" for t, c, p in zip(self.tags, self.targets, self.probabilities)]
        shown = {
            m: a.maps / np.maximum(a.maps.reshape(len(a.maps), -1).max(1), 1e-12)[:, None, None]
            for m, a in self.attributions.items()
        }
        figure = plot_cams(
            self.images,
            shown,
            folder / f"{stem}.png",
            captions=captions,
            title=f"{self.model_name}: attribution of the explained class (row: image, class, probability)",
        )
        tensors = {f"{m}.map": a.maps for m, a in self.attributions.items()}
        tensors |= {f"{m}.raw": np.ascontiguousarray(a.raw) for m, a in self.attributions.items()}
        with atomic_path(folder / f"{stem}.safetensors") as tmp:
            save_file(
                tensors,
                str(tmp),
                metadata={
                    "format": "cifarlens-attributions",
                    "images": ",".join(self.tags),
                    "targets": ",".join(map(str, self.targets)),
                },
            )
        atomic_write_csv(folder / f"{stem}.csv", self.rows)
        return [figure, folder / f"{stem}.safetensors", folder / f"{stem}.csv"]


def attribute(
    run,
    *,
    methods: list[str],
    images=None,
    index: str | None = None,
    target: str = "pred",
    baseline: str = "black",
    target_layer: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> AttributeResult:
    """Attribution maps of ``methods`` for a run's model on image files or ``index`` of ``split``, explaining
    the predicted class (``target="pred"``), the label (``"true"``) or a class name/number, each map scored
    by deletion and insertion (the probability as its most-attributed pixels go, or come back)."""

    check_methods(methods)
    model, spec, dev = load_run_model(run, device)
    imgs, labels, tags = choose_images(run, images, index, split, data_dir)
    probs = Predictor(model, spec, device=dev).probabilities(imgs)
    targets = explained_classes(target, probs, labels, spec.classes)
    x = spec.inputs(imgs.to(dev))
    found = attribute_maps(
        model,
        x,
        targets,
        methods,
        capabilities=spec.capabilities(model),
        baseline=baseline,
        mean=spec.mean,
        std=spec.std,
        target_layer=target_layer,
        seed=seed,
    )
    metric = DeletionInsertion(model, steps=10)
    rows = []
    for name, result in found.items():
        for i in range(len(x)):
            curves = metric(x[i : i + 1], result.maps[i : i + 1], [targets[i]])
            peak = np.unravel_index(int(result.maps[i].argmax()), result.maps[i].shape)
            rows.append(
                {
                    "image": tags[i],
                    "method": name,
                    "library": METHODS[name].library,
                    "label": spec.classes[labels[i]] if labels else "",
                    "explained_class": spec.classes[targets[i]],
                    "probability": float(probs[i, targets[i]]),
                    "peak_row": int(peak[0]),
                    "peak_col": int(peak[1]),
                    **curves.auc(),
                    "ms_per_image": 1000 * result.seconds_per_image,
                }
            )
    shown = denormalize(x, spec).permute(0, 2, 3, 1).cpu().numpy()
    chosen = probs[torch.arange(len(targets)), torch.tensor(targets)].numpy()
    return AttributeResult(
        spec.name, shown, tags, targets, spec.classes, chosen, found, rows, method_notes(model, methods)
    )


def explained_classes(
    target: str, probs: torch.Tensor, labels: list[int] | None, classes: tuple[str, ...]
) -> list[int]:
    """The class each map explains: ``pred``, ``true`` (the label; image files have none) or one class for all."""
    if target == "pred":
        return probs.argmax(1).tolist()
    if target == "true":
        if labels is None:
            raise CifarlensError("--target true needs labelled images: use --index (image files have no label)")
        return list(labels)
    try:
        return [class_index(target, classes)] * len(probs)
    except CifarlensError:
        raise CifarlensError(
            f"unknown --target {target!r}; use pred, true, or a class name or number: {', '.join(classes)}"
        ) from None
