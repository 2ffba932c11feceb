"""Optimizer steps per second of the whole trainer on a tiny world, with and without the regularizer.

    python benchmarks/trainer_speed.py --steps 20

The tiny world: Stable Diffusion's component classes at toy size (smoothlib.testing),
32x32 images -> 4x16x16 latents, batch 4, no gradient accumulation, rank-8 LoRA.
Everything the trainer does per step is included (VAE and text encoding, the
training step, AdamW, history); checkpoints and validation are switched off.
Plain and regularized runs alternate, and the ratio is taken pair by pair.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_data(root: Path, n: int = 32, size: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a picture number {i}"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def run(data: Path, out: Path, steps: int, lambda_reg: float) -> float:
    """Wall seconds of a whole train() call of ``steps`` optimizer steps (set-up included)."""
    from smoothlib.config import TrainConfig
    from smoothlib.testing import tiny_world
    from smoothlib.train import train

    world = tiny_world(sample_size=16, vae=True)
    cfg = TrainConfig(world="tiny", data=str(data), resolution=32, output_dir=str(out), train_batch_size=4,
                      gradient_accumulation_steps=1, max_train_steps=steps, checkpointing_steps=10**9,
                      validation_steps=10**9, lambda_reg=lambda_reg, progress=False)
    return train(cfg, world=world).seconds


def steps_per_second(data: Path, out: Path, steps: int, lambda_reg: float) -> float:
    """Steps per second with set-up and the first steps removed: (T(2 + steps) - T(2)) / steps."""
    short = run(data, out / "short", 2, lambda_reg)
    long = run(data, out / "long", 2 + steps, lambda_reg)
    return steps / (long - short)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data")
        plain, reg, ratios = [], [], []
        for i in range(a.repeats):
            plain.append(steps_per_second(data, Path(tmp) / f"plain{i}", a.steps, 0.0))
            reg.append(steps_per_second(data, Path(tmp) / f"reg{i}", a.steps, 1.0))
            ratios.append(plain[-1] / reg[-1])
    med = statistics.median
    print(f"plain LoRA:  {med(plain):.2f} steps/s (runs: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"regularized: {med(reg):.2f} steps/s (runs: {', '.join(f'{x:.2f}' for x in reg)})")
    print(f"a regularized step costs {med(ratios):.2f}x a plain one (median of pairwise ratios)")


if __name__ == "__main__":
    main()
