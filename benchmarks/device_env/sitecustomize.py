"""Start-up hook of the ``gpu_check.sh --dry-run`` processes: the packages the GPU machine lacks cannot be imported.

The GPU machine's python3 has PyTorch and a fixed set of packages and no registry to install more from
(README, "The GPU path"). The dry run puts this folder first on PYTHONPATH and names those packages in
``CIFARLENS_HIDE_PACKAGES``, so a training or bench path that imports one fails here as it would there.
"""

import os
import sys
from importlib.abc import MetaPathFinder

_HIDDEN = frozenset(filter(None, os.environ.get("CIFARLENS_HIDE_PACKAGES", "").split(",")))


class _Hidden(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not on the GPU machine)", name=fullname)


if _HIDDEN:
    sys.meta_path.insert(0, _Hidden())
