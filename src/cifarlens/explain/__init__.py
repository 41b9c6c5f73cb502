"""What a trained CNN learned: layer features, probes, 2-D maps, filters, activation maximisation, CAMs.

Small objects built once and called on batches (``FeatureExtractor``, ``ActivationPooler``,
``Projector``, ``CamExplainer``, ``DeletionInsertion``, ``ActivationMaximiser``); the
``cifarlens explain`` commands (``cifarlens.explain.commands``) wire them to run directories.
Names are imported on first use; grad-cam, openTSNE and umap-learn only inside the calls that need them.
"""

import importlib

# Loaded on first use, so that ``cifarlens --help`` (which imports the commands module) stays fast.
_WHERE = {
    "ActivationMaximiser": "activation_max",
    "attribute": "attribution",
    "attribute_maps": "attribution",
    "METHODS": "attribution",
    "FourierImage": "activation_max",
    "CamExplainer": "cam",
    "classic_cam_layers": "cam",
    "CurveResult": "faithfulness",
    "DeletionInsertion": "faithfulness",
    "ActivationPooler": "features",
    "Features": "features",
    "extract_features": "features",
    "FeatureExtractor": "cifarlens.models.layers",
    "LayerError": "cifarlens.models.layers",
    "LayerInfo": "cifarlens.models.layers",
    "default_stages": "cifarlens.models.layers",
    "default_target_layer": "cifarlens.models.layers",
    "list_layers": "cifarlens.models.layers",
    "pool_features": "cifarlens.models.layers",
    "ProbeResult": "probe",
    "fit_knn_probe": "probe",
    "fit_linear_probe": "probe",
    "Projection": "projection",
    "Projector": "projection",
    "knn_accuracy": "projection",
    "map_quality": "projection",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'cifarlens.explain' has no attribute {name!r}")
    where = _WHERE[name]
    return getattr(importlib.import_module(where if "." in where else f"cifarlens.explain.{where}"), name)
