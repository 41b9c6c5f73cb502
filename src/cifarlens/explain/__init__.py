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
    "FourierImage": "activation_max",
    "CamExplainer": "cam",
    "gap_linear_head": "cam",
    "CurveResult": "faithfulness",
    "DeletionInsertion": "faithfulness",
    "ActivationPooler": "features",
    "Features": "features",
    "extract_features": "features",
    "FeatureExtractor": "layers",
    "LayerError": "layers",
    "LayerInfo": "layers",
    "default_stages": "layers",
    "default_target_layer": "layers",
    "list_layers": "layers",
    "pool_features": "layers",
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
    return getattr(importlib.import_module(f"cifarlens.explain.{_WHERE[name]}"), name)
