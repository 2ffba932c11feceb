#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite, notebooks included, offline:
#   1. the library's tests, and every notebook executed and rendered in the toy world (smoke mode;
#      tests/test_render.py: a cell that raises fails the test, and each page must carry the figures
#      its cells draw);
#   2. every notebook under nbval in the Stable Diffusion stand-in, loaded in float16 as Colab's
#      CUDA would load it, with a release-format Smooth LoRA (scripts/make_sd_world.py).
# Each notebook runs once per world: an nbval pass in the toy world would only repeat what the
# rendering test already executes there. Both runs spread over every core (pytest-xdist), one
# torch thread per worker. The library's tests are shared out as workers free up (a module's fixtures
# are built at most once per worker); a notebook's cells stay on one worker under nbval (they share
# a kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SMOOTHLIB_SMOKE=1 MPLBACKEND=Agg
# idle OpenMP threads sleep instead of spinning: on a small shared CPU spinning slows torch many times over
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
WORKERS=(-n auto --maxprocesses 8)
python -m pytest tests "${WORKERS[@]}" --dist worksteal "$@"
echo "== the notebooks in the Stable Diffusion stand-in, float16 =="
python scripts/make_sd_world.py build/sd_world
SMOOTHLIB_WORLD="$PWD/build/sd_world/stable-diffusion-v1-5" SMOOTHLIB_DTYPE=fp16 \
SMOOTHLIB_SMOOTH_LORA="$PWD/build/sd_world/smooth-diffusion-lora" \
  python -m pytest --nbval-lax --nbval-current-env notebooks "${WORKERS[@]}" --dist loadscope -p no:cacheprovider "$@"
