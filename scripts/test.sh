#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite, notebooks included, offline:
#   1. the library's tests, and every notebook executed and rendered in the toy world (smoke mode;
#      tests/test_render.py: a cell that raises fails the test, and each page must carry the figures
#      its cells draw);
#   2. every notebook under nbval in the Stable Diffusion stand-in, loaded in float16 as Colab's
#      CUDA would load it, with a release-format Smooth LoRA (scripts/make_sd_world.py).
# Each notebook runs once per world: an nbval pass in the toy world would only repeat what the
# rendering test already executes there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SMOOTHLIB_SMOKE=1 MPLBACKEND=Agg
# idle OpenMP threads sleep instead of spinning: on a small shared CPU spinning slows torch many times over
export OMP_WAIT_POLICY=PASSIVE
python -m pytest tests "$@"
echo "== the notebooks in the Stable Diffusion stand-in, float16 =="
python scripts/make_sd_world.py build/sd_world
SMOOTHLIB_WORLD="$PWD/build/sd_world/stable-diffusion-v1-5" SMOOTHLIB_DTYPE=fp16 \
SMOOTHLIB_SMOOTH_LORA="$PWD/build/sd_world/smooth-diffusion-lora" \
  python -m pytest --nbval-lax --nbval-current-env notebooks -p no:cacheprovider "$@"
