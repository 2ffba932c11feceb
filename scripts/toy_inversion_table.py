"""The toy world's miniature Table 2: DDIM and null-text inversion of held-out digits, base vs Smooth LoRA.

    python scripts/toy_inversion_table.py                       # base, control and the Smooth LoRAs shipped in data/
    python scripts/toy_inversion_table.py --digits 20 --steps 20   # a quick look

Protocol (:func:`smoothlib.inversion.reconstruction_protocol`): every fifth of the
500 held-out digits (100, ten of each), captioned "a handwritten <digit>"; DDIM
inversion (prompt, guidance 1) and null-text inversion (fitted for guidance 4),
each sampled back with guidance 4 and ``--steps`` DDIM steps; MSE on [-1, 1],
PSNR and SSIM against the input, mean over digits, with the seconds per image.
Scores are cached in ``runs/toy_inversion/<model>_<N>digits_<S>steps.json``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

MODELS = {"base": None, "control": "control", "smooth": "smooth", "smooth-s0": "smooth-s0"}
"""Row label -> shipped LoRA name: "smooth" is the default Smooth LoRA, "smooth-s0" the release's formula."""


def measure(model: str, digits: int, steps: int, progress: bool) -> dict:
    from smoothlib.inversion import reconstruction_protocol
    from smoothlib.toy import TOY_GUIDANCE, digit_prompt, load_heldout_digits, load_toy_world

    world = load_toy_world(MODELS[model])
    images, labels = load_heldout_digits()
    idx = torch.arange(0, len(labels), len(labels) // digits)[:digits]
    prompts = [digit_prompt(int(d)) for d in labels[idx]]
    record = {"model": model, "digits": len(idx), "steps": steps, "guidance": TOY_GUIDANCE}
    for method in ("ddim", "nti"):
        start = time.perf_counter()
        report = reconstruction_protocol(world, images[idx], prompts, methods=(method,), guidance_scale=TOY_GUIDANCE,
                                         num_steps=steps, batch_size=25, progress=progress)
        record[method] = {**report.means()[method], "seconds_per_image": (time.perf_counter() - start) / len(idx)}
        print(model, method, record[method], flush=True)
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--digits", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/toy_inversion")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for model in a.models:
        cache = Path(a.out) / f"{model}_{a.digits}digits_{a.steps}steps.json"
        if cache.exists():
            record = json.loads(cache.read_text())
        else:
            record = measure(model, a.digits, a.steps, a.progress)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(record, indent=1))
        rows.append(record)
    print(f"\nToy world, {a.digits} held-out digits, {a.steps} DDIM steps, guidance 4 "
          f"({a.threads} CPU thread(s))\n")
    print("| model | inversion | MSE | PSNR (dB) | SSIM | s / image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for method, name in (("ddim", "DDIM"), ("nti", "null-text")):
            m = r[method]
            print(f"| {r['model']} | {name} | {m['mse']:.4f} | {m['psnr']:.2f} | {m['ssim']:.4f} | "
                  f"{m['seconds_per_image']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
