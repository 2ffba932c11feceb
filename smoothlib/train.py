"""The Smooth LoRA trainer: one visible loop on accelerate, from a laptop CPU to many GPUs.

    smoothlib-train --world sd15 --data my_images/ --output-dir runs/smooth     # one process
    accelerate launch --num_processes 4 -m smoothlib.train --world sd15 ...    # four GPUs (DDP)

or, from Python / a notebook, ``train(TrainConfig(...))``.

Recipe of :func:`train`:
0. refuse what would lose data or train silently wrong, before anything is built or written:
   an output folder that holds another run than the one resumed (``--overwrite-output-dir``
   moves it aside, never deletes), a checkpoint whose settings differ from this run's (each
   listed old -> new; ``--resume-override`` names those that may change), a
   ``--max-train-steps`` at or below the checkpoint's step;
1. accelerator (device, processes, mixed precision), printed, with a warning for a multi-process launch
   that came up as one process; seed;
2. the world, frozen (a pixel-space world's image size must equal ``--resolution``);
   a fresh LoRA on its UNet, trainable, in fp32;
3. data, AdamW, learning-rate schedule, the regularizer (its running mean a is state), with
   ``--ema-decay`` an exponential moving average of the LoRA weights (diffusers' EMAModel);
4. resume from a checkpoint: LoRA, optimizer, schedule, a, EMA, step, data position, RNG; this
   run's learning rate, betas, epsilon and weight decay apply; ``history.jsonl`` is cut back
   to the checkpoint's step, so no step appears twice;
5. per micro-batch: encode images and captions, :func:`~smoothlib.train_step.training_step` at this
   step's lambda (:meth:`~smoothlib.config.TrainConfig.lambda_at`), stop on a non-finite loss, backward;
6. per optimizer step: average the LoRA gradients across processes, clip, step, update the EMA, log,
   checkpoint (after checking the LoRA weights, optimizer moments and a are finite: a
   non-finite one stops the run unwritten, so the newest checkpoint stays the resume point),
   validation images;
7. the final LoRA in output_dir/final/, one file per format of ``--lora-formats`` (default diffusers');
   with an EMA, final/ holds the averaged weights (as diffusers' ``--use_ema`` scripts save), final-raw/
   the last ones, and the UNet is left holding the average.

The UNet is not wrapped in DistributedDataParallel: its gradients are LoRA-sized
and are averaged by one all-reduce per optimizer step, which stays correct with
the double backward, the sub-batch's second forward and gradient accumulation.
Gradient checkpointing works with ``estimator="finite_difference"`` and with
lambda_reg = 0; the exact estimator's double backward refuses it.
All randomness of a micro-batch (t, eps, y, caption dropout) comes from a
generator seeded by (seed, micro-batch, process), so a resumed run continues
exactly as an uninterrupted one would; so does the VAE posterior's draw of a latent-space
world's x_0 (``--vae-latents sample``, as the release).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig, add_arguments, from_args
from .ddim import ddim_sample
from .lora import attach_lora, save_lora
from .regularizer import StepVariationRegularizer
from .run_dir import check_output_path, in_the_way, move_aside, resume_point, start_history
from .train_state import on_every_process, open_checkpoint, resume_state, save_state
from .train_step import training_step
from .viz import save_grid


@dataclass
class TrainResult:
    output_dir: Path
    lora_path: Path | None
    global_step: int
    history: list[dict] = field(default_factory=list)
    skipped: list = field(default_factory=list)
    seconds: float = 0.0
    lora_files: dict[str, Path] = field(default_factory=dict)
    """The final LoRA's file per format (``--lora-formats``); ``lora_path`` is the first."""


def _dataset(cfg: TrainConfig, world):
    """An image folder with captions, or one of the training sets the world bundles (``world.datasets``)."""
    bundled = sorted(getattr(world, "datasets", {}))
    if cfg.data is None:
        raise ConfigError("no training data: set --data to an image folder with captions"
                          + "".join(f" or {name!r}" for name in bundled)
                          + (f" (bundled with the world {world.name!r})" if bundled else ""))
    if cfg.data in bundled:
        return world.datasets[cfg.data](seed=cfg.seed)
    from .data import CaptionedImageFolder
    return CaptionedImageFolder(cfg.data, cfg.resolution, cfg.captions, seed=cfg.seed)


def _check_resolution(cfg: TrainConfig, world) -> None:
    """A pixel-space world (no VAE: the toy one) trains at its one image size only."""
    if world.vae is None and tuple(world.image_size) != (cfg.resolution, cfg.resolution):
        height, width = world.image_size
        raise ConfigError(f"--resolution {cfg.resolution} does not match the image size of the world "
                          f"{world.name!r}, {height}x{width}: a pixel-space world works at that size only; "
                          f"use --resolution {height}")


def _launch_warning(num_processes: int, env=os.environ) -> str | None:
    """A multi-process launch that came up as one process, or None.

    torchrun (``accelerate launch --multi_gpu``) sets WORLD_SIZE in every process; accelerate's simple
    launcher sets MASTER_ADDR/MASTER_PORT when asked for more than one process, and ACCELERATE_MIXED_PRECISION
    always, and starts a single process for ``--cpu --num_processes 2`` unless MPI is set up.
    """
    if num_processes > 1:
        return None
    world_size = int(env.get("WORLD_SIZE") or 1)
    simple = "ACCELERATE_MIXED_PRECISION" in env and "MASTER_PORT" in env and "WORLD_SIZE" not in env
    if world_size <= 1 and not simple:
        return None
    asked = f"WORLD_SIZE={world_size}" if world_size > 1 else "accelerate launch --num_processes > 1"
    return (f"{asked}, but this run has 1 process. accelerate launch starts "
            "one process for --cpu --num_processes N (unless MPI is set up); for N CPU "
            "processes run ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N -m smoothlib.train ...")


def _collate(items):
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "caption": [i["caption"] for i in items]}


def _micro_generator(cfg: TrainConfig, micro_step: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + micro_step * 8_191 + process) % 2**63)


def _to_world_images(pixels: torch.Tensor, world) -> torch.Tensor:
    """Dataset pixels in [-1, 1] -> [0, 1] with the channel count the world expects."""
    images = (pixels + 1) / 2
    want = 3 if world.vae is not None else world.unet.config.in_channels
    if images.shape[1] == 3 and want == 1:
        images = images.mean(1, keepdim=True)
    return images.clamp(0, 1)


@torch.no_grad()
def _validate(accelerator, cfg, world, step):
    if not (cfg.validation_prompts and accelerator.is_main_process):
        return
    g = torch.Generator().manual_seed(cfg.seed)
    x_T = torch.randn(len(cfg.validation_prompts), *world.latent_shape, generator=g)
    cond = world.encode_prompt(cfg.validation_prompts)
    uncond = world.uncond_embedding(len(cfg.validation_prompts))
    with accelerator.autocast():
        x_0 = ddim_sample(world.unet, world.scheduler, x_T, cond, uncond, cfg.validation_guidance,
                          cfg.validation_num_steps, progress=False)
    images = world.decode(x_0)
    save_grid(images, Path(cfg.output_dir) / "validation" / f"step-{step:08d}.png",
               nrow=len(cfg.validation_prompts), scale=max(1, 128 // images.shape[-1]))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step)


def train(cfg: TrainConfig, world=None, dataset=None) -> TrainResult:
    """Train a Smooth LoRA as configured; see the module docstring for the recipe.

    Refusals (a bad output folder, resolution or resume) raise :class:`~smoothlib.config.ConfigError`;
    a damaged checkpoint :class:`~smoothlib.checkpoint.CheckpointError`; a non-finite loss or
    weight FloatingPointError, leaving the newest checkpoint on disk as the one to resume.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    start = time.perf_counter()
    # 0. and 1. the output folder and the checkpoint to resume, checked; accelerator and seed
    check_output_path(cfg)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.report_to,
                              project_dir=str(Path(cfg.output_dir) / "logs"),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    accelerator.print(f"smoothlib-train: {accelerator.num_processes} process(es) on {accelerator.device.type} "
                      f"({accelerator.distributed_type.value})")
    if (launch := _launch_warning(accelerator.num_processes)) is not None:
        warnings.warn(launch, RuntimeWarning, stacklevel=2)
    resume_from, checkpoint = open_checkpoint(accelerator, cfg)
    blocking = in_the_way(cfg, resume_from, checkpoint[1]["step"] if checkpoint else 0)
    set_seed(cfg.seed)

    # 2. frozen world, trainable fp32 LoRA
    if world is None:
        from .worlds import load_world
        weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
        world = load_world(cfg.world, device=accelerator.device, dtype=weight_dtype)
    _check_resolution(cfg, world)
    for module in (world.unet, world.text_encoder, world.vae):
        if module is not None:
            module.requires_grad_(False)
    unet = world.unet
    params = attach_lora(unet, rank=cfg.rank, alpha=cfg.lora_alpha, target_modules=cfg.lora_targets())
    for p in params:
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        if cfg.lambda_reg > 0 and cfg.estimator == "exact":
            raise ConfigError("gradient checkpointing cannot be used with the exact regularizer: its recomputation "
                              "does not reproduce the double backward's graph (torch.utils.checkpoint raises "
                              "CheckpointError). Use --estimator finite_difference (first order, checkpointing "
                              "works), save memory with --reg-sub-batch instead, or set --no-gradient-checkpointing.")
        unet.enable_gradient_checkpointing()
    unet.train()

    # 3. data, optimizer, schedule, regularizer
    dataset = dataset if dataset is not None else _dataset(cfg, world)
    if len(dataset) < cfg.train_batch_size * accelerator.num_processes:
        raise ConfigError(f"{len(dataset)} images cannot fill one batch of {cfg.train_batch_size} "
                          f"on {accelerator.num_processes} process(es)")
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train_batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.dataloader_num_workers, collate_fn=_collate,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                             num_training_steps=cfg.max_train_steps)
    optimizer, loader = accelerator.prepare(optimizer, loader)
    regularizer = StepVariationRegularizer(**cfg.regularizer_settings(),
                                           num_train_timesteps=world.scheduler.config.num_train_timesteps,
                                           ).to(accelerator.device)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None

    # 4. resume; from here on the run writes into output_dir
    step, micro_step = (0, 0)
    if checkpoint is not None:
        step, micro_step = resume_state(accelerator, cfg, resume_from, checkpoint, unet, optimizer, lr_sched, regularizer,
                                        ema)
        del checkpoint  # its tensors are in the run now
    move_aside(accelerator, blocking, resumed=resume_from is not None)
    if cfg.report_to:
        accelerator.init_trackers("smooth-lora", config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})

    history: list[dict] = []
    history_file = Path(cfg.output_dir) / "history.jsonl"
    if accelerator.is_main_process:
        start_history(history_file, step, accelerator)
    bar = tqdm(total=cfg.max_train_steps, initial=step, desc="Smooth LoRA", disable=not (cfg.progress and accelerator.is_local_main_process))
    accum = cfg.gradient_accumulation_steps
    logs = {"mse": 0.0, "reg": 0.0, "r": [], }
    while step < cfg.max_train_steps:
        epoch, skip = divmod(micro_step, len(loader))
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in batches:
            # 5. one micro-batch
            g = _micro_generator(cfg, micro_step, accelerator.process_index)
            captions = list(batch["caption"])
            if cfg.caption_dropout:
                drop = torch.rand(len(captions), generator=g) < cfg.caption_dropout
                captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            with torch.no_grad():
                x_0 = world.encode(_to_world_images(batch["pixel_values"], world),
                                   sample=cfg.vae_latents == "sample", generator=g).float()
                emb = world.encode_prompt(captions).float()
            with accelerator.autocast():
                out = training_step(unet, x_0, emb, world.scheduler, regularizer if cfg.lambda_reg > 0 else None,
                                    cfg.lambda_at(step + 1), generator=g, noise_offset=cfg.noise_offset)
            if not on_every_process(accelerator, bool(torch.isfinite(out.loss.detach()))):
                raise FloatingPointError(
                    f"the loss is not finite at step {step + 1} (micro-batch {micro_step}): L_mse = {out.mse.item():.4g}, "
                    f"L_reg = {out.reg.item():.4g} on process {accelerator.process_index}. Training stopped before "
                    f"any weight was updated with it; {resume_point(cfg)}. "
                    "Try a lower learning_rate or lambda_reg, or mixed_precision='no'"
                    + (", or estimator='finite_difference' (no double backward in half precision)."
                       if cfg.mixed_precision != "no" and cfg.estimator == "exact" and cfg.lambda_reg > 0 else "."))
            accelerator.backward(out.loss / accum)
            micro_step += 1
            logs["mse"] += out.mse.item() / accum
            logs["reg"] += out.reg.item() / accum
            if out.r is not None:
                logs["r"].append(out.r.float().mean().item())
            if micro_step % accum:
                continue

            # 6. one optimizer step
            if accelerator.num_processes > 1:
                for p in params:
                    p.grad = accelerator.reduce(p.grad, "mean")
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            step += 1
            record = {"step": step, "mse": logs["mse"], "reg": logs["reg"],
                      "r": sum(logs["r"]) / len(logs["r"]) if logs["r"] else None,
                      "a": regularizer.a.tolist(), "lr": lr_sched.get_last_lr()[0]}
            if cfg.lambda_warmup_steps:
                record["lambda"] = cfg.lambda_at(step)
            logs = {"mse": 0.0, "reg": 0.0, "r": []}
            history.append(record)
            if accelerator.is_main_process:
                with open(history_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
            accelerator.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step)
            bar.update(1)
            bar.set_postfix(mse=f"{record['mse']:.4f}", reg=f"{record['reg']:.3g}",
                            r=f"{record['r']:.3g}" if record["r"] is not None else "-", a=f"{regularizer.a.mean().item():.3g}")
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                save_state(accelerator, cfg, unet, optimizer, lr_sched, regularizer, step, micro_step, len(history),
                           ema)
            if step % cfg.validation_steps == 0 or step == cfg.max_train_steps:
                _validate(accelerator, cfg, world, step)
            if step >= cfg.max_train_steps:
                break
    bar.close()

    # 7. the final LoRA
    accelerator.wait_for_everyone()
    lora_files = {}
    if accelerator.is_main_process and ema is not None:
        for fmt in cfg.lora_formats:
            save_lora(unet, Path(cfg.output_dir) / "final-raw", format=fmt)
    if ema is not None:
        ema.copy_to(params)
    if accelerator.is_main_process:
        lora_files = {fmt: save_lora(unet, Path(cfg.output_dir) / "final", format=fmt) for fmt in cfg.lora_formats}
    skipped = list(getattr(dataset, "skipped", []))
    if skipped:
        accelerator.print(f"{len(skipped)} file(s) skipped as unreadable: " + ", ".join(p for p, _ in skipped[:5])
                          + (" ..." if len(skipped) > 5 else ""))
    accelerator.end_training()
    return TrainResult(Path(cfg.output_dir), next(iter(lora_files.values()), None), step, history, skipped,
                       time.perf_counter() - start, lora_files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoothlib-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        cfg = from_args(parser.parse_args(argv))
    except ConfigError as e:
        parser.error(str(e))
    try:
        result = train(cfg)
    except (ConfigError, CheckpointError, FloatingPointError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if result.lora_path is not None:
        print(f"trained {result.global_step} steps in {result.seconds:.0f} s; LoRA: "
              + ", ".join(str(path) for path in result.lora_files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
