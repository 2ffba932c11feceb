#!/usr/bin/env bash
# Install the lowest version of every declared dependency into a fresh environment and run a quick subset
# of the tests there: LoRA files in every format (saving, loading, diffusers' loader, the metadata with
# the oldest peft), worlds, one training step and the trainer's flags.
#
#   bash scripts/check_lower_bounds.sh            # build/lower-bounds/, made anew each time
#
# 1. the lowest versions are read from pyproject.toml (each requirement's ">=" bound; the runtime
#    dependencies and the test tools the subset needs);
# 2. torch: the lowest declared torch is not installable as a CPU build from a local wheel, so torch is
#    the CPU build scripts/setup.sh installs (SMOOTHLIB_TORCH overrides, e.g. "torch==2.4.1+cpu
#    --index-url https://download.pytorch.org/whl/cpu");
# 3. smoothlib itself without dependencies, then the subset, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
ENV=build/lower-bounds
rm -rf "$ENV"
"$PYTHON" -m venv "$ENV"
# shellcheck disable=SC1091
. "$ENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python - > "$ENV/lowest.txt" <<'PY'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
tools = ("pytest", "hypothesis", "pyyaml", "imageio", "imageio-ffmpeg")
dev = [r for r in project["optional-dependencies"]["dev"] if re.split(r"[<>=!~ ]", r)[0] in tools]
for requirement in project["dependencies"] + dev:
    name, low = re.match(r"^([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)", requirement).groups()
    if name != "torch":
        print(f"{name}=={low}")
PY
echo "lowest declared versions:"; sed 's/^/  /' "$ENV/lowest.txt"
pip install -q ${SMOOTHLIB_TORCH:-"torch==2.13.0+cpu"} 2>&1 | grep -v "is ignored" || true
pip install -q -r "$ENV/lowest.txt" 2>&1 | grep -v "is ignored" || true
pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
python -c "import torch, diffusers, peft, transformers, accelerate; print('installed: torch', torch.__version__, \
'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, \
'accelerate', accelerate.__version__)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE
python -m pytest -q -p no:cacheprovider -m "not slow" tests/test_lora.py tests/test_lora_clients.py \
  tests/test_worlds.py tests/test_train_step.py tests/test_train_flags.py tests/test_export.py "$@"
