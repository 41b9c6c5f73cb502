"""Whether code from a user's file may run: ``--trust-code`` at import or training, ``CIFARLENS_TRUST_CODE=1``
for every later command that rebuilds such a model (Keras Lambda layers, an imported ``.py`` factory)."""

from __future__ import annotations

import os

TRUST_ENV = "CIFARLENS_TRUST_CODE"


def trusted() -> bool:
    """True when ``CIFARLENS_TRUST_CODE`` is set to 1, true, yes or on."""
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes", "on")
