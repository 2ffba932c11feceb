#!/usr/bin/env bash
# Set up (scripts/setup.sh), then execute the whole course on the bundled CPU
# world and render it to build/course/ (one HTML page per notebook).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# no MPLBACKEND here: set in a kernel's environment it stops ipykernel's inline backend (no figures)
unset MPLBACKEND
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
python scripts/render_course.py --out build/course "$@"
