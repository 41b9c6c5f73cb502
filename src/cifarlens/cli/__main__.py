"""``python -m cifarlens.cli`` (what ``torchrun ... -m cifarlens.cli train --distributed`` starts)."""

import sys

from cifarlens.cli.main import app

sys.exit(app())
