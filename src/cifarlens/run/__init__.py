"""The run directory: the contract between ``train`` and every command that reads a run.

``RunDir`` (``cifarlens.run.directory``) owns the file names and formats; ``ModelSpec`` and the
weights helpers (``cifarlens.run.spec``) rebuild a model from its safetensors file alone;
``cifarlens.run.checkpoint`` writes and reads the resumable state; ``Predictor`` (``cifarlens.run.predictor``)
is the model's forward pass over a split, as every reader of a run calls it.
"""

from cifarlens.run.checkpoint import Checkpoint
from cifarlens.run.directory import METRIC_COLUMNS, RunDir, machine_provenance, write_json
from cifarlens.run.predictor import Predictor, tta_logits
from cifarlens.run.spec import ModelSpec, load_state_checked, load_weights, read_spec, save_weights

__all__ = [
    "METRIC_COLUMNS",
    "Checkpoint",
    "ModelSpec",
    "Predictor",
    "RunDir",
    "load_state_checked",
    "load_weights",
    "machine_provenance",
    "read_spec",
    "save_weights",
    "tta_logits",
    "write_json",
]
