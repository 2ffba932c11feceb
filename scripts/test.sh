#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite, notebooks included, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SMOOTHLIB_SMOKE=1 MPLBACKEND=Agg
# idle OpenMP threads sleep instead of spinning: on a small shared CPU spinning slows torch many times over
export OMP_WAIT_POLICY=PASSIVE
python -m pytest tests --nbval-lax --nbval-current-env notebooks "$@"
