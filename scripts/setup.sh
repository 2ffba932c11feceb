#!/usr/bin/env bash
# Create .venv and install smoothlib with its development extra.
#
# torch is installed first, on its own, so that a CPU-only machine gets the
# CPU build (about 200 MB) rather than PyPI's default CUDA build (several GB):
#   1. a torch that already imports in .venv is kept;
#   2. SMOOTHLIB_TORCH, if set, is passed to pip as is (e.g. "torch==2.13.0");
#   3. with an NVIDIA GPU: PyPI's torch (CUDA);
#   4. without one: torch 2.13.0+cpu from a local wheel or the configured
#      indexes, else from the PyTorch CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true

if python -c "import torch" 2>/dev/null; then
  :
elif [ -n "${SMOOTHLIB_TORCH:-}" ]; then
  pip install -q $SMOOTHLIB_TORCH
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install -q "torch>=2.4,<2.15"
else
  pip install -q "torch==2.13.0+cpu" 2>/dev/null \
    || pip install -q "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
fi
pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
python -c "import smoothlib, torch; print(f'smoothlib {smoothlib.__version__}, torch {torch.__version__}, device {smoothlib.default_device()}')"
