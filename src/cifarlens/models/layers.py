"""Where features can be taken from: layer names, their output shapes, and an extractor for them.

Layer names are torchvision FX graph node names (``get_graph_node_names``): module outputs keep
their module path (``layer4``, ``features.conv1``, ``blocks.block2``) and functional ops get
names such as ``layer1.0.add``. A model that FX cannot trace falls back to forward hooks on
its named modules, so every model has layer names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifarlens.errors import CifarlensError


class LayerError(CifarlensError):
    """An unknown layer name, or a layer whose output cannot be used as asked."""


@dataclass
class LayerInfo:
    """One place features can be taken from: its name, output shape for one image, and its module type."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension, e.g. (64, 16, 16) or (512,)
    module_type: str  # class name of the module that outputs it ("" for a functional op such as add or flatten)

    @property
    def poolable(self) -> bool:
        return len(self.shape) in (1, 3)


def _tracer_kwargs(model: nn.Module) -> dict:
    # Subclasses of torch layers defined outside torch (airnet's Whitening conv) stay single nodes
    # named after the module, instead of being traced into their weight and bias attributes.
    custom = {
        type(m)
        for m in model.modules()
        if type(m).__module__.split(".")[0] != "torch"
        and any(
            base.__module__.startswith("torch.nn.modules") and base is not nn.Module for base in type(m).__mro__[1:]
        )
    }
    return {"leaf_modules": sorted(custom, key=lambda t: t.__name__)}


def _traceable_nodes(model: nn.Module) -> list[str] | None:
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        _, eval_nodes = get_graph_node_names(model, tracer_kwargs=_tracer_kwargs(model))
    except Exception:  # FX raises many types for untraceable control flow; hooks work for any model
        return None
    return eval_nodes[1:]  # the first node is the input placeholder


class FeatureExtractor:
    """Outputs of named layers for a batch: ``extractor(x) -> {name: tensor}``.

    Built once per model and list of layers (FX ``create_feature_extractor`` when the model
    traces, forward hooks on modules otherwise); call it on normalised batches (N, 3, H, W).
    """

    def __init__(self, model: nn.Module, layers: list[str]):
        self.model = model.eval()
        self.layers = list(layers)
        valid = layer_names(model)
        unknown = [name for name in self.layers if name not in valid]
        if unknown:
            raise LayerError(
                f"unknown layer {unknown[0]!r} for {type(model).__name__}; valid layers: {', '.join(valid)} "
                "(see cifarlens explain layers RUN)"
            )
        self._graph = None
        if _traceable_nodes(model) is None:
            check_hookable(model)
        else:
            from torchvision.models.feature_extraction import create_feature_extractor

            self._graph = create_feature_extractor(
                model, return_nodes={n: n for n in self.layers}, tracer_kwargs=_tracer_kwargs(model)
            )
            self._graph.eval()

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._graph is not None:
            return dict(self._graph(x))
        outputs: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = [
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
            for name in self.layers
        ]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        return outputs


def layer_names(model: nn.Module) -> list[str]:
    """Names features can be taken from, in execution order (FX nodes, else module names)."""
    nodes = _traceable_nodes(model)
    if nodes is not None:
        return nodes
    return [name for name, _ in model.named_modules() if name]


def list_layers(model: nn.Module, image_size: int = 32) -> list[LayerInfo]:
    """Every layer with a per-image output and its shape for a (3, image_size, image_size) input.

    Nodes without a batch dimension (parameters read by the forward, shapes) are left out.
    """
    names = layer_names(model)
    modules = {name: type(m).__name__ for name, m in model.named_modules() if name}
    x = torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device)
    with torch.no_grad():
        outputs = FeatureExtractor(model, names)(x)
    return [
        LayerInfo(name, tuple(out.shape[1:]), modules.get(name, ""))
        for name, out in outputs.items()
        if isinstance(out, torch.Tensor) and out.ndim >= 1 and out.shape[0] == 2
    ]


def pool_features(output: torch.Tensor, name: str, pool: str = "avg") -> torch.Tensor:
    """(N, C, H, W) -> (N, C) by global ``avg`` or ``max`` pooling; (N, D) is returned as is."""
    if not isinstance(output, torch.Tensor):
        raise LayerError(f"layer {name!r} does not output a tensor ({type(output).__name__}); pick another layer")
    if output.ndim == 2:
        return output
    if output.ndim == 4:
        return output.amax(dim=(2, 3)) if pool == "max" else output.mean(dim=(2, 3))
    raise LayerError(
        f"layer {name!r} outputs shape {tuple(output.shape)}, which cannot be pooled to one vector per image "
        "(need (N, C, H, W) or (N, D)); pick another layer"
    )


def default_stages(layers: list[LayerInfo]) -> list[str]:
    """The layers a depth-wise probe looks at: each resolution's stage output, then every Linear input.

    A stage output is the last layer at a spatial resolution, stepping back over trailing nodes
    that already belong to the next stage (a Conv2d, or a node whose channel count differs from
    the one before it: the widening conv placed before a pool). This finds stage boundaries of
    any conv net without per-model tables: airnet gives act, block1..3, ResNet-18 layer1..4.
    """
    stages: list[str] = []
    spatial = [info for info in layers if len(info.shape) == 3]
    groups: list[list[LayerInfo]] = []
    for info in spatial:
        if groups and groups[-1][-1].shape[1:] == info.shape[1:]:
            groups[-1].append(info)
        else:
            groups.append([info])
    for group in groups:
        if group[0].shape[1:] == (1, 1):
            continue  # a global pool: the flattened vector after it is the same stage
        end = len(group) - 1
        while end > 0 and (group[end].module_type == "Conv2d" or group[end].shape[0] != group[end - 1].shape[0]):
            end -= 1
        stages.append(group[end].name)
    for before, info in zip(layers, layers[1:]):
        if info.module_type == "Linear" and len(before.shape) == 1 and before.name not in stages:
            stages.append(before.name)
    return stages


def takes_hooks(model: nn.Module) -> bool:
    """False for TorchScript (PyTorch runs no forward hooks on a ScriptModule) and for a graph run outside
    PyTorch (a module saying ``takes_hooks = False``: an ONNX graph), or a model wrapping either."""
    return not any(
        isinstance(m, torch.jit.ScriptModule) or not getattr(m, "takes_hooks", True) for m in model.modules()
    )


def check_hookable(model: nn.Module) -> None:
    """A ``LayerError`` for a model whose layers cannot be read (``takes_hooks``)."""
    if not takes_hooks(model):
        raise LayerError(
            "this model is TorchScript or an ONNX graph, whose layers cannot be read (no forward hooks: CAMs, layer "
            "attributions, features, probes, rank's random reference); import it from its Python class or as a "
            "torch.export .pt2 instead"
        )


@dataclass
class ModuleCall:
    """One finished module call during a forward pass: its first input and its output."""

    name: str
    input: object
    output: object


def module_calls(model: nn.Module, image_size: int = 32) -> tuple[list[ModuleCall], dict[str, int]]:
    """Every module call of one forward pass on a zero image, in order of completion, and calls per module."""
    check_hookable(model)
    finished: list[ModuleCall] = []
    calls: dict[str, int] = {}

    def hook(name):
        def record(_m, inputs, out):
            calls[name] = calls.get(name, 0) + 1
            finished.append(ModuleCall(name, inputs[0] if inputs else None, out))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return finished, calls


CAM_MIN_SIDE = 7  # a CAM coarser than 7x7 on a 32x32 image is a blob that cannot point at an object


def default_target_layer(model: nn.Module, image_size: int = 32, min_side: int = CAM_MIN_SIDE) -> str:
    """The module a CAM looks at when a model declares none: the last module to finish whose output is
    spatial and at least ``min_side`` on its shorter side (else the last spatial one), called once per
    forward (ResNet's shared ReLU sees two outputs), widened to the outermost module returning that same
    tensor. timm's ResNet-18 at 32 px gives its layer1 output, a torchvision ResNet-18 ``layer3``.
    """
    finished, calls = module_calls(model, image_size)
    spatial = [
        c
        for c in finished
        if calls[c.name] == 1
        and isinstance(c.output, torch.Tensor)
        and c.output.ndim == 4
        and min(c.output.shape[2:]) > 1
    ]
    if not spatial:
        raise LayerError(f"{type(model).__name__} has no module with a spatial output to attach a CAM to")
    fine = [c for c in spatial if min(c.output.shape[2:]) >= min_side]
    chosen = (fine or spatial)[-1]
    same = [c.name for c in spatial if c.output is chosen.output]
    return min(same, key=lambda name: name.count("."))


def map_size(model: nn.Module, layer: str, image_size: int = 32) -> tuple[int, int]:
    """(H, W) of module ``layer``'s output for one (3, image_size, image_size) input: a CAM's resolution."""
    finished, _ = module_calls(model, image_size)
    out = next((c.output for c in finished if c.name == layer), None)
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise LayerError(
            f"module {layer!r} has no spatial output; pick a conv layer (see cifarlens explain layers RUN)"
        )
    return int(out.shape[2]), int(out.shape[3])


def module_feeding(model: nn.Module, consumer: str, image_size: int = 32) -> str | None:
    """The outermost module called once whose output is the input of module ``consumer`` (None if none is)."""
    finished, calls = module_calls(model, image_size)
    fed = next((c.input for c in finished if c.name == consumer), None)
    names = [c.name for c in finished if c.output is fed and calls[c.name] == 1 and c.name != consumer]
    return min(names, key=lambda n: n.count(".")) if names else None


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name lists the valid ones."""
    check_hookable(model)
    modules = dict(model.named_modules())
    if name not in modules or not name:
        valid = ", ".join(n for n in modules if n)
        raise LayerError(f"unknown module {name!r}; valid target layers: {valid}")
    return modules[name]


_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)


def gap_features(model: nn.Module, classifier: str, image_size: int = 32) -> str | None:
    """The module whose output is global-average-pooled (through flatten/dropout only) into the Linear
    ``classifier`` as the model's output, or None when the head is anything else (max pooling, several
    fc layers, scaled logits, an untraceable forward). Only ``guess_capabilities`` asks this."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # FX raises many types for untraceable control flow
        return None
    modules = dict(model.named_modules())

    def skip(node):
        while isinstance(node, torch.fx.Node) and (
            (node.op == "call_module" and isinstance(modules[node.target], _PASS_THROUGH))
            or (node.op == "call_function" and node.target is torch.flatten)
            or (node.op == "call_method" and node.target in ("flatten", "view", "reshape"))
        ):
            node = node.args[0]
        return node

    node = skip(next(n for n in graph.nodes if n.op == "output").args[0])
    if not (isinstance(node, torch.fx.Node) and node.op == "call_module" and node.target == classifier):
        return None
    pool = skip(node.args[0])
    is_gap = (
        isinstance(pool, torch.fx.Node)
        and pool.op == "call_module"
        and isinstance(modules[pool.target], nn.AdaptiveAvgPool2d)
        and modules[pool.target].output_size in (1, (1, 1))
    )
    return module_feeding(model, str(pool.target), image_size) if is_gap else None
