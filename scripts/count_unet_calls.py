"""Count each notebook's UNet evaluations in the Stable Diffusion world's course mode; estimate T4 time.

Runs every notebook top to bottom (course mode, not smoke) in the tiny Stable Diffusion
stand-in (scripts/make_sd_world.py): it has SD 1.5's layout and calls, so the notebooks
take exactly the code paths, steps, walks and frames they take with SD 1.5 on Colab, but
each evaluation costs milliseconds. A cell injected after the parameter cell hooks every
UNet that ``sl.load_world`` returns (:class:`smoothlib.cost.UNetEvaluationCounter`); the
counts, weighted by kind and latent size, give the estimated T4 time
(:func:`smoothlib.cost.t4_seconds`, whose figures and sources its docstring states).

    python scripts/count_unet_calls.py                 # all notebooks, a Markdown table
    python scripts/count_unet_calls.py 04_ 05_ --paper # the paper's scale

The stand-in runs in float32 here (faster on a CPU); what a float16 world would upcast is
counted as float32 all the same. Null-text inversion stops its inner loop early on a loss
threshold; this random stand-in never reaches it, so its null-text counts are the bound with
every inner step taken (a trained model stops some steps early).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render_course import notebooks  # noqa: E402  (scripts/render_course.py, beside this script)

HOOK = """
import json as _json
import smoothlib as _sl
from smoothlib.cost import UNetEvaluationCounter as _Counter
_counter, _load = _Counter(), _sl.load_world
def _counted_load(*args, **kwargs):
    world = _load(*args, **kwargs)
    _counter.attach(world.unet)
    return world
_sl.load_world = _counted_load
"""
REPORT = """
_area = world.latent_shape[1] * world.latent_shape[2] if "world" in globals() else 1
_extra = {}
if "S" in globals():
    _extra = dict(explorer_frames=S.explorer_frames, explorer_steps=S.explorer_steps)
print("COUNTS " + _json.dumps({"by_kind": _counter.by_kind(_area), **_extra}))
"""


def count(path: Path, env: dict) -> dict:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell(HOOK))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        # allow_errors: a claim that only a trained model can meet may fail in the random stand-in;
        # the cells after it still run, so the count is complete
        NotebookClient(nb, timeout=3600, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    failed = [f"{o['ename']} in cell {i - 1}" for i, c in enumerate(nb.cells) for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    if failed:
        print(f"({path.stem}: {'; '.join(failed)}, counted on)", file=sys.stderr)
    return json.loads(text.split("COUNTS ", 1)[1])


def main() -> None:
    from smoothlib.cost import t4_seconds
    from smoothlib.testing import save_tiny_sd15

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("select", nargs="*")
    p.add_argument("--paper", action="store_true", help="the paper's scale (SMOOTHLIB_PAPER=1)")
    a = p.parse_args()
    folder, lora = save_tiny_sd15(tempfile.mkdtemp(prefix="sd-stand-in-"))
    env = {"SMOOTHLIB_WORLD": str(folder), "SMOOTHLIB_DTYPE": "fp32", "SMOOTHLIB_SMOOTH_LORA": str(lora),
           "SMOOTHLIB_SMOKE": "0", "SMOOTHLIB_PAPER": "1" if a.paper else "0", "HF_HUB_OFFLINE": "1",
           "MPLBACKEND": "Agg"}
    print("| notebook | sample evaluations: fp16 / fp32 / fp32 with gradient / training | estimated T4 minutes |")
    print("|---|---|---|")
    for path in notebooks(select=a.select):
        c = count(path, env)
        k = c["by_kind"]
        minutes = t4_seconds(k) / 60
        print(f"| {path.stem} | {k['fp16']:.0f} / {k['fp32']:.0f} / {k['fp32+grad']:.0f} / {k['train']:.0f} "
              f"| {minutes:.1f} |", flush=True)
        if path.stem.startswith("07") and "explorer_frames" in c:
            walk = {"fp16": c["explorer_frames"] * 2 * c["explorer_steps"] * 2}
            one = {"fp16": 1 * c["explorer_steps"] * 2}
            print(f"| 07, per button press | 'compute walk': {walk['fp16']} fp16; 'sample': {one['fp16']} fp16 "
                  f"| {t4_seconds(walk):.0f} s; {t4_seconds(one):.0f} s |", flush=True)


if __name__ == "__main__":
    main()
