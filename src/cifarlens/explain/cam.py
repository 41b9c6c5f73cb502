"""Class activation maps through the grad-cam package (pytorch-grad-cam).

``CamExplainer(model, method="gradcam")(x, targets) -> (N, H, W)`` heat maps in [0, 1] over
normalised input batches x (N, 3, H, W). The original CAM (Zhou et al. 2016), which grad-cam
does not ship, is added as a grad-cam ``BaseCAM`` whose channel weights are the linear head's
row for the class; it is offered only for models whose head is global-average-pool + linear.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn

from cifarlens.errors import CifarlensError
from cifarlens.explain.layers import default_target_layer, get_module, module_feeding

METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam", "cam")
# Reference for faithfulness scores: random channel weights on the same target layer (grad-cam's
# RandomCAM), so the map has the same blocky resolution as the real ones. A pixel-wise random map
# would be an unfair reference: scattered deletions destroy an image faster than any region does.
RANDOM = "random"
_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)


def _grad_cam_class(method: str):
    import pytorch_grad_cam as pgc

    return {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "scorecam": pgc.ScoreCAM,
        "eigencam": pgc.EigenCAM,
        "layercam": pgc.LayerCAM,
        RANDOM: pgc.RandomCAM,
    }[method]


def gap_linear_head(model: nn.Module, image_size: int = 32) -> tuple[str, nn.Linear]:
    """For a model ending in global-average-pool (+ flatten/dropout) + linear: the pooled module's name and the linear.

    Raises ``CifarlensError`` for any other head (max pooling, several fc layers, scaled logits).
    """
    import torch.fx

    name = type(model).__name__
    refuse = CifarlensError(
        f"the original CAM needs a global-average-pool + linear head, which {name} does not have; "
        "use --method gradcam (or gradcam++, scorecam, eigencam, layercam)"
    )
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        raise refuse from None
    modules = dict(model.named_modules())
    out = next(n for n in graph.nodes if n.op == "output")
    node = out.args[0]

    def skip(node):
        while isinstance(node, torch.fx.Node) and (
            (node.op == "call_module" and isinstance(modules[node.target], _PASS_THROUGH))
            or (node.op == "call_function" and node.target is torch.flatten)
            or (node.op == "call_method" and node.target in ("flatten", "view", "reshape"))
        ):
            node = node.args[0]
        return node

    node = skip(node)
    if not (isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(modules[node.target], nn.Linear)):
        raise refuse
    linear = modules[node.target]
    pool = skip(node.args[0])
    is_gap = (
        isinstance(pool, torch.fx.Node)
        and pool.op == "call_module"
        and isinstance(modules[pool.target], nn.AdaptiveAvgPool2d)
        and modules[pool.target].output_size in (1, (1, 1))
    )
    feature_module = module_feeding(model, str(pool.target), image_size) if is_gap else None
    if feature_module is None:
        raise refuse
    return feature_module, linear


def _classic_cam(model: nn.Module, target_layers: list[nn.Module], weight: torch.Tensor):
    from pytorch_grad_cam.base_cam import BaseCAM

    class ClassicCAM(BaseCAM):
        """CAM_k = sum_c w[k, c] A_c: the head's weights for class k applied to the last feature maps."""

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            categories = [int(t.category) for t in targets]
            return weight[categories].detach().cpu().numpy()

    return ClassicCAM(model=model, target_layers=target_layers, uses_gradients=False)


@contextlib.contextmanager
def _quiet_score_cam():
    """Silence the tqdm bar ScoreCAM draws for every batch (it has no option for it)."""
    import types
    from unittest import mock

    from pytorch_grad_cam import score_cam

    with mock.patch.object(score_cam, "tqdm", types.SimpleNamespace(tqdm=lambda iterable, **_: iterable)):
        yield


class CamExplainer:
    """Heat maps of one CAM method for batches: ``explainer(x, targets=None) -> (N, H, W)`` float32 in [0, 1].

    x: normalised (N, 3, H, W). ``targets``: class per image, or None for the predicted class.
    ``target_layer`` is a module name (default: ``default_target_layer``; for ``cam`` the
    module before the global average pool).
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", *, target_layer: str | None = None,
                 image_size: int = 32, batch_size: int = 64, seed: int = 0):  # fmt: skip
        if method not in (*METHODS, RANDOM):
            raise CifarlensError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
        self.model, self.method, self.seed = model.eval(), method, seed
        if method == "cam":
            layer, linear = gap_linear_head(model, image_size)
            if target_layer and target_layer != layer:
                raise CifarlensError(f"the original CAM is defined on {layer!r} (before the pool); drop --target-layer")
            self.target_layer = layer
            self._cam = _classic_cam(model, [get_module(model, layer)], linear.weight)
        else:
            self.target_layer = target_layer or default_target_layer(model, image_size)
            self._cam = _grad_cam_class(method)(model=model, target_layers=[get_module(model, self.target_layer)])
            if method == "scorecam":
                self._cam.batch_size = batch_size  # masked copies per forward pass
        self.time_per_image = 0.0

    def __call__(self, x: torch.Tensor, targets: list[int] | None = None) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if targets is None:
            with torch.no_grad():
                targets = self.model(x).argmax(1).tolist()
        t0 = time.perf_counter()
        state = np.random.get_state()
        np.random.seed(self.seed)  # RandomCAM draws from numpy's global generator
        try:
            with _quiet_score_cam():
                maps = self._cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        finally:
            np.random.set_state(state)
        self.time_per_image = (time.perf_counter() - t0) / max(len(x), 1)
        return np.asarray(maps, dtype=np.float32)
