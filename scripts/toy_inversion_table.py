"""The toy world's miniature Table 2: DDIM and null-text inversion of held-out digits, base vs Smooth LoRA.

    python scripts/toy_inversion_table.py                       # base, control and the Smooth LoRAs shipped in data/
    python scripts/toy_inversion_table.py --digits 20 --steps 20   # a quick look

A thin call of ``smoothlib-eval reconstruction`` (docs/evaluation.md); the same as

    smoothlib-eval reconstruction --world toy --control control --lora smooth=smooth --lora smooth-s0=smooth-s0 \\
        --count 100 --steps 50 --threads 1 --out runs/toy_inversion

Protocol (:func:`smoothlib.inversion.reconstruction_protocol`): every fifth of the
500 held-out digits (100, ten of each), captioned "a handwritten <digit>"; DDIM
inversion (prompt, guidance 1) and null-text inversion (fitted for guidance 4),
each sampled back with guidance 4 and ``--steps`` DDIM steps; MSE on [-1, 1],
PSNR and SSIM against the input, mean over digits, with the seconds per image.
Scores are cached in ``<out>/cache/``; the table is ``<out>/report.md``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402

MODELS = ("base", "control", "smooth", "smooth-s0")
"""Row labels, each a shipped LoRA name but the base: "smooth" is the default Smooth LoRA, "smooth-s0" the release's formula."""


def command(models, digits: int, steps: int, threads: int, out: str, progress: bool) -> list[str]:
    """The smoothlib-eval arguments for these models (the base is always measured)."""
    argv = ["reconstruction", "--world", "toy", "--count", str(digits), "--steps", str(steps),
            "--threads", str(threads), "--out", out, "--progress" if progress else "--no-progress"]
    for m in models:
        if m == "control":
            argv += ["--control", "control"]
        elif m != "base":
            argv += ["--lora", f"{m}={m}"]
    return argv


def main(argv=None) -> int:
    from smoothlib.evaluate.cli import main as evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--digits", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/toy_inversion")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args(argv)
    return evaluate(command(a.models, a.digits, a.steps, a.threads, a.out, a.progress))


if __name__ == "__main__":
    raise SystemExit(main())
