"""What a trained CNN learned: layer features, probes, 2-D maps, filters, activation maximisation, CAMs.

Small objects built once and called on batches (``FeatureExtractor``, ``ActivationPooler``,
``Projector``, ``CamExplainer``, ``DeletionInsertion``, ``ActivationMaximiser``), and one function per
``cifarlens explain`` command that takes a run directory and returns a result whose ``write(folder)`` writes
the command's files (``layers_run``, ``features_run``, ``projection_run``, ``probe_run``, ``filters_run``,
``feature_maps_run``, ``activation_max_run``, ``top_images``, ``cam_run``, ``attribute``, ``rank``). The commands
(``cifarlens.cli.explain``) only parse options, call them, print and write.
grad-cam, Captum, openTSNE and umap-learn are imported inside the calls that need them.
"""

from cifarlens.explain.activation_max import ActivationMaximiser, ActivationMaxResult, FourierImage, activation_max_run
from cifarlens.explain.attribution import METHODS, attribute, attribute_maps
from cifarlens.explain.cam import CamExplainer, CamResult, cam_run, classic_cam_layers
from cifarlens.explain.dataset_examples import TopImagesResult, top_activations, top_images
from cifarlens.explain.faithfulness import CurveResult, DeletionInsertion
from cifarlens.explain.features import ActivationPooler, Features, FeaturesResult, extract_features, features_run
from cifarlens.explain.filters import FeatureMapsResult, FiltersResult, feature_maps_run, filters_run
from cifarlens.explain.layers import LayersResult, layers_run
from cifarlens.explain.probe import ProbeResult, ProbesResult, fit_knn_probe, fit_linear_probe, probe_run
from cifarlens.explain.projection import (
    Projection,
    ProjectionResult,
    Projector,
    knn_accuracy,
    map_quality,
    projection_run,
)
from cifarlens.explain.ranking import RankResult, RankSettings, rank, rank_maps
from cifarlens.models.layers import (
    FeatureExtractor,
    LayerError,
    LayerInfo,
    default_stages,
    default_target_layer,
    list_layers,
    pool_features,
)

__all__ = [
    "ActivationMaxResult",
    "ActivationMaximiser",
    "ActivationPooler",
    "CamExplainer",
    "CamResult",
    "CurveResult",
    "DeletionInsertion",
    "FeatureExtractor",
    "FeatureMapsResult",
    "Features",
    "FeaturesResult",
    "FiltersResult",
    "FourierImage",
    "LayerError",
    "LayerInfo",
    "LayersResult",
    "METHODS",
    "ProbeResult",
    "ProbesResult",
    "Projection",
    "ProjectionResult",
    "Projector",
    "RankResult",
    "RankSettings",
    "TopImagesResult",
    "activation_max_run",
    "attribute",
    "attribute_maps",
    "cam_run",
    "classic_cam_layers",
    "default_stages",
    "default_target_layer",
    "extract_features",
    "feature_maps_run",
    "features_run",
    "filters_run",
    "fit_knn_probe",
    "fit_linear_probe",
    "knn_accuracy",
    "layers_run",
    "list_layers",
    "map_quality",
    "pool_features",
    "probe_run",
    "projection_run",
    "rank",
    "rank_maps",
    "top_activations",
    "top_images",
]
