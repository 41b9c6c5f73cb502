#!/usr/bin/env bash
# The whole GPU validation of issue 24 in one command, on a machine whose python3 has PyTorch and no
# package registry (README, "The GPU path"): the tests marked cuda, then benchmarks/gpu_check.py (fast x 5
# seeds and airbench94 x 2 on the packed subset, full-size epochs timed, cifarlens bench), one JSON and one
# markdown table into $OUT (default ./gpu_check_out), rewritten after every step.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the checkout root, gpu_data/ carried along
#   bash benchmarks/gpu_check.sh --dry-run  # the same steps on the CPU, on a tiny subset packed from $CIFARLENS_DATA_DIR
#
# The project runs from src/ through PYTHONPATH, not installed. Pure-Python wheels it needs and python3 lacks
# go in .whl/ (git-ignored) and are installed to a scratch folder first.
set -euo pipefail
started=$(date +%s)
cd "$(dirname "$0")/.."
dry=()
case "${1:-}" in
  "") ;;
  --dry-run) dry=(--dry-run) ;;
  *) echo "error: unknown argument ${1}; usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
for limit in BUDGET_S TESTS_TIMEOUT_S; do  # checked before the tests spend minutes of a lent GPU
  if ! [[ "${!limit:-0}" =~ ^[0-9]+$ ]]; then
    echo "error: $limit=${!limit} is not a whole number of seconds; unset it or give one, e.g. $limit=300" >&2; exit 2
  fi
done
PY=${PYTHON:-python3}
if [ ${#dry[@]} -eq 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "error: $PY's torch sees no CUDA GPU; run this on the GPU machine, or use --dry-run on a CPU" >&2; exit 2
fi
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$work"' EXIT
exec > >(tee "$OUT/gpu_check.log") 2>&1

path="$PWD/src"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl
  path="$path:$work/site"
fi
if [ ${#dry[@]} -gt 0 ]; then
  # The dependencies of cifarlens that the GPU machine's python3 does not have (/work/.library/device/KINDS.md).
  export CIFARLENS_HIDE_PACKAGES=torchinfo,optuna,fastapi,uvicorn,multipart,python_multipart,pytorch_grad_cam,captum,openTSNE,umap,plotly,keras
  path="$PWD/benchmarks/device_env:$path"
  # Inductor's CPU compile takes minutes on 2 cores and is not the GPU's: the compile steps run eagerly here
  # (the compiled GPU path has its own test marked cuda).
  export TORCHDYNAMO_DISABLE=1
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

echo "== tests marked cuda"
set +e
# Capped, so that a hung test cannot eat the runs' time (124: killed; recorded as a failure).
timeout "${TESTS_TIMEOUT_S:-180}" "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$work/pytest.txt"
tests=${PIPESTATUS[0]}
set -e
# 5 (every test deselected) passes only in a dry run: on the GPU, cuda tests that did not run are a failure
# (gpu_check.py also fails the check when none passed, since pytest exits 0 when all are skipped).
if [ "$tests" -eq 5 ] && [ ${#dry[@]} -gt 0 ]; then tests=0; fi
if [ "$tests" -ne 0 ]; then
  echo "error: the cuda tests failed or none ran (exit $tests); the runs go on, gpu_check.json records the counts" >&2
fi
echo "== runs, timing, bench"
# A step that would not end within BUDGET_S seconds of the start (estimated from the steps done) is skipped
# and recorded, so the results come back before the device run's limit; every finished step is in $OUT already.
"$PY" benchmarks/gpu_check.py --work "$work" --out "$OUT" --pytest-log "$work/pytest.txt" \
  --started "$started" --budget-s "${BUDGET_S:-450}" "${dry[@]}"
exit "$([ "$tests" -eq 0 ] && echo 0 || echo 1)"
