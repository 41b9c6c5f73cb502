"""What a trained CNN learned: layer features, probes, 2-D maps, filters, activation maximisation, CAMs.

Small objects built once and called on batches (``FeatureExtractor``, ``ActivationPooler``,
``Projector``, ``CamExplainer``, ``DeletionInsertion``, ``ActivationMaximiser``), and one function per
``cifarlens explain`` command that takes a run directory and returns a result whose ``write(folder)`` writes
the command's files (``layers_run``, ``features_run``, ``projection_run``, ``probe_run``, ``filters_run``,
``feature_maps_run``, ``activation_max_run``, ``top_images``, ``cam_run``, ``attribute``, ``rank``). The commands
(``cifarlens.cli.explain``) only parse options, call them, print and write.
Names are imported on first use; grad-cam, openTSNE and umap-learn only inside the calls that need them.
"""

import importlib

# Loaded on first use, so that ``cifarlens --help`` (which imports the commands module) stays fast.
_WHERE = {
    "ActivationMaximiser": "activation_max",
    "ActivationMaxResult": "activation_max",
    "activation_max_run": "activation_max",
    "attribute": "attribution",
    "rank": "ranking",
    "rank_maps": "ranking",
    "RankResult": "ranking",
    "RankSettings": "ranking",
    "attribute_maps": "attribution",
    "METHODS": "attribution",
    "FourierImage": "activation_max",
    "CamExplainer": "cam",
    "CamResult": "cam",
    "cam_run": "cam",
    "classic_cam_layers": "cam",
    "CurveResult": "faithfulness",
    "DeletionInsertion": "faithfulness",
    "ActivationPooler": "features",
    "Features": "features",
    "extract_features": "features",
    "FeaturesResult": "features",
    "features_run": "features",
    "FeatureMapsResult": "filters",
    "feature_maps_run": "filters",
    "FiltersResult": "filters",
    "filters_run": "filters",
    "LayersResult": "layers",
    "layers_run": "layers",
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
    "ProbesResult": "probe",
    "probe_run": "probe",
    "Projection": "projection",
    "Projector": "projection",
    "knn_accuracy": "projection",
    "map_quality": "projection",
    "ProjectionResult": "projection",
    "projection_run": "projection",
    "TopImagesResult": "dataset_examples",
    "top_activations": "dataset_examples",
    "top_images": "dataset_examples",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'cifarlens.explain' has no attribute {name!r}")
    where = _WHERE[name]
    return getattr(importlib.import_module(where if "." in where else f"cifarlens.explain.{where}"), name)
