"""r over t for the toy base and its LoRAs: mean r and its spread among samples at fixed timesteps.

    python scripts/toy_r_over_t.py base control-s0 smooth-s0 smooth-tb10-s0

Each model: 64 held-out digits with their prompts, one fresh noise and direction per
sample (seed 0), r measured exactly (:func:`smoothlib.regularizer.variation_at`) at
t = 50, 250, 500, 750, 900, 990. Prints mean r and, in brackets, its coefficient of
variation (std / mean) among the 64 samples. Names are folders of ``data/toy_lora/``
or run folders under ``runs/toy_lora/``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

TIMESTEPS = (50, 250, 500, 750, 900, 990)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--samples", type=int, default=64)
    a = p.parse_args(argv)

    from smoothlib.regularizer import variation_at
    from smoothlib.toy import data_dir, digit_prompt, load_heldout_digits, load_toy_world

    images, labels = load_heldout_digits()
    x_0 = images[:a.samples] * 2 - 1
    print("| model | " + " | ".join(f"t = {t}" for t in TIMESTEPS) + " |")
    print("| --- |" + " --- |" * len(TIMESTEPS))
    for name in a.models:
        lora = None
        if name != "base":
            run = Path("runs/toy_lora") / name / "pytorch_lora_weights.safetensors"
            shipped = (data_dir() / "toy_lora" / name).exists() or not run.exists()
            lora = name if shipped else run  # a name: what is shipped (an unknown one lists it); a path: the run
        world = load_toy_world(lora)
        cond = world.encode_prompt([digit_prompt(int(d)) for d in labels[:a.samples]])
        g = torch.Generator().manual_seed(0)
        cells = []
        for t in TIMESTEPS:
            r = variation_at(world.unet, world.scheduler, x_0, cond, torch.full((len(x_0),), t), g)
            cells.append(f"{r.mean():.3f} ({r.std() / r.mean():.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
