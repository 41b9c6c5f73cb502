"""``cifarlens import``: models trained elsewhere (Python code, TorchScript, torch.export, weights for a known
architecture) written as ordinary run directories.

The package exports the config and the diagnosis; ``import_model`` is in ``cifarlens.importing.importer``,
which scores the import through ``cifarlens.evaluation`` (matplotlib, scikit-learn), so that the command line
loads those only when the command runs.
"""

from cifarlens.importing.check import Diagnosis, diagnose
from cifarlens.importing.config import ImportConfig

__all__ = ["Diagnosis", "ImportConfig", "diagnose"]
