#!/usr/bin/env bash
# benchmarks/gpu_check.sh --dry-run under the GPU machine's software, not the project's pins: Python 3.12 with
# torch 2.11 and torchvision 0.26 and the other versions /work/.library/device/KINDS.md lists for that machine,
# in a venv of its own. It keeps the lent GPU's first run from failing on a version the dev venv never sees.
# Not in CI: the torch wheel alone is half a gigabyte. Run it before resolving a change to the GPU path:
#
#   CIFARLENS_DATA_DIR=../shared/data/cifar10 bash benchmarks/gpu_check_versions.sh
#
# VENV (default /tmp/cifarlens-gpu-versions) is reused when it already has these versions. PYTHON312 names the
# interpreter (default: python3.12, or pyenv's 3.12). OUT as for gpu_check.sh (default: a scratch folder);
# the JSON is copied to RESULT (default benchmarks/results/gpu_check_dry_run_torch211.json). torch is PyPI's CUDA build,
# installed without its nvidia-* libraries (gigabytes more): with no GPU here it runs on the CPU, as the dry run does.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=(torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2
          safetensors==0.8.0)
# Unpinned: the GPU machine has them in some version (KINDS.md lists names only).
OTHERS=(pillow pyyaml rich typer matplotlib scikit-learn pytest timm)
VENV=${VENV:-/tmp/cifarlens-gpu-versions}
if [ -z "${CIFARLENS_DATA_DIR:-}" ]; then
  echo "error: CIFARLENS_DATA_DIR is not set; point it at the CIFAR-10 folder, e.g. CIFARLENS_DATA_DIR=../shared/data/cifar10" >&2
  exit 2
fi
# pyenv's own 3.12 before PATH's: a pyenv shim is on PATH even where 3.12 is not the selected version.
py=${PYTHON312:-$(ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | head -1 || true)}
py=${py:-$(command -v python3.12 || true)}
if [ -z "$py" ] || ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "error: no Python 3.12 found (the GPU machine's); install one or name it with PYTHON312=/path/to/python3.12" >&2
  exit 2
fi
if ! "$VENV/bin/python" -c 'import torch, torchvision; assert torch.__version__.startswith("2.11.0"), torch.__version__' 2>/dev/null; then
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps "${VERSIONS[@]}"
  # Their own dependencies except torch's nvidia-* libraries and triton (GPU only).
  "$VENV/bin/pip" install -q filelock typing-extensions sympy networkx jinja2 fsspec protobuf ml_dtypes onnx_ir \
    packaging "${OTHERS[@]}" "${VERSIONS[@]:2}"
fi
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
print("versions:", ", ".join(f"{n} {m.version(n)}" for n in ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript", "safetensors")))
EOF
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_versions.XXXXXX")}
OUT="$OUT" PYTHON="$VENV/bin/python" bash benchmarks/gpu_check.sh --dry-run
# Kept as the record that the dry run passes on these versions (its seconds and accuracies mean nothing).
RESULT=${RESULT:-benchmarks/results/gpu_check_dry_run_torch211.json}
cp "$OUT/gpu_check.json" "$RESULT"
echo "wrote $RESULT"
