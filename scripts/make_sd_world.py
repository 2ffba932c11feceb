"""Write the tiny Stable Diffusion 1.5 stand-in that CI runs every notebook in (float16, offline).

    python scripts/make_sd_world.py build/sd_world
    SMOOTHLIB_WORLD=build/sd_world/stable-diffusion-v1-5 SMOOTHLIB_DTYPE=fp16 \
    SMOOTHLIB_SMOOTH_LORA=build/sd_world/smooth-diffusion-lora SMOOTHLIB_SMOKE=1 \
        python -m pytest --nbval-lax --nbval-current-env notebooks

The layout is the Hub's (see :func:`smoothlib.testing.save_tiny_sd15`); the weights are random.
"""
import argparse
import shutil
from pathlib import Path

from smoothlib.testing import save_tiny_sd15


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write (replaced if it holds an earlier stand-in)")
    a = p.parse_args()
    if a.out.exists():
        if not (a.out / "stable-diffusion-v1-5" / "model_index.json").is_file():
            raise SystemExit(f"{a.out} exists and is not a stand-in written by this script; pick another folder")
        shutil.rmtree(a.out)
    pipeline, lora = save_tiny_sd15(a.out)
    print(f"pipeline: {pipeline}\nSmooth LoRA: {lora}")


if __name__ == "__main__":
    main()
