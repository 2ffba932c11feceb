"""A training run's state in a checkpoint: what is saved, checked and restored, and how.

The state is the LoRA's weights (and their EMA's, ``ema.<name>``, with ``--ema-decay``), the optimizer's moments, the learning-rate schedule,
the regularizer's ``state_dict()`` (its running mean a and step counter; one row per
process, since with ``sync_running_mean`` off every process keeps its own a), the
data position and the RNG. :func:`save_state` refuses a non-finite tensor on any
process before anything is written; :func:`resume_state` loads a checkpoint read by
:func:`open_checkpoint` and also reads the layout written before the regularizer's
state went through ``state_dict()`` (``regularizer.a_per_process``, ``regularizer.seen``).
The files themselves: :mod:`smoothlib.checkpoint`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import flatten_optimizer, latest_checkpoint, load_checkpoint, save_checkpoint, unflatten_optimizer
from .config import ConfigError, TrainConfig
from .run_dir import resume_point


def open_checkpoint(accelerator, cfg: TrainConfig) -> tuple[Path | None, tuple | None]:
    """The checkpoint to resume, read and verified: (path, (tensors, meta)); (None, None) for a fresh run.

    Raises :class:`ConfigError` if its settings differ from ``cfg``'s (see
    :meth:`TrainConfig.resume_changes`) or ``cfg.max_train_steps`` is not above its step.
    """
    if not cfg.resume:
        return None, None
    path = latest_checkpoint(cfg.output_dir) if cfg.resume == "latest" else Path(cfg.resume)
    if path is None:
        accelerator.print(f"resume='latest': no intact checkpoint in {cfg.output_dir}, starting from scratch")
        return None, None
    tensors, meta = load_checkpoint(path)
    saved = meta.get("config", {})
    for line in cfg.resume_changes(saved, path):
        accelerator.print(f"resume override: {line}")
    if cfg.max_train_steps <= meta["step"]:
        raise ConfigError(f"--max-train-steps {cfg.max_train_steps} is at or below the step of {path} "
                          f"({meta['step']}): there is nothing to train; set --max-train-steps above {meta['step']}")
    if cfg.lr_scheduler not in ("constant", "constant_with_warmup") and saved.get("max_train_steps") not in (
            None, cfg.max_train_steps):
        accelerator.print(f"note: the {cfg.lr_scheduler} learning-rate schedule now ends at step "
                          f"{cfg.max_train_steps} instead of {saved['max_train_steps']}")
    return path, (tensors, meta)


def lora_named(unet) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


def on_every_process(accelerator, ok: bool) -> bool:
    """True when ``ok`` holds on every process: the count of processes where it holds, summed
    across them, is the number of processes (accelerate's ``reduce`` has no "min")."""
    count = torch.tensor([1.0 if ok else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, "sum")
    return count.item() == accelerator.num_processes


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    return next((n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def regularizer_rows(accelerator, regularizer) -> dict[str, torch.Tensor]:
    """``regularizer.<key>`` -> that state_dict entry of every process, one row each ([processes, numel], float64)."""
    return {f"regularizer.{key}": accelerator.gather(value.detach().reshape(1, -1).double())
            for key, value in regularizer.state_dict().items()}


def save_state(accelerator, cfg, unet, optimizer, lr_sched, regularizer, step, micro_step, history_len, ema=None):
    """Write checkpoint-<step>, after checking on every process that its tensors are finite.

    A non-finite LoRA weight, EMA weight, optimizer moment or running mean raises FloatingPointError
    and nothing is written: the newest checkpoint on disk stays the one to resume.
    """
    tensors = {f"lora.{n}": p for n, p in lora_named(unet).items()}
    if ema is not None:
        tensors.update({f"ema.{n}": s for n, s in zip(lora_named(unet), ema.shadow_params)})
    opt_tensors, opt_rest = flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors.update(regularizer_rows(accelerator, regularizer))
    tensors["rng.torch"] = torch.get_rng_state()
    bad = first_nonfinite(tensors)
    if not on_every_process(accelerator, not bad):
        raise FloatingPointError(
            f"{bad or 'a tensor of another process'} is not finite after step {step}: checkpoint-{step:08d} "
            f"was not written and training stopped; {resume_point(cfg)}. Try a lower --learning-rate or "
            "--max-grad-norm, a larger --adam-epsilon, or --mixed-precision no.")
    if accelerator.is_main_process:
        meta = {"micro_step": micro_step, "num_processes": accelerator.num_processes,
                "optimizer": opt_rest, "lr_scheduler": lr_sched.state_dict(), "history_len": history_len,
                "config": dataclasses.asdict(cfg), "ema_step": ema.optimization_step if ema is not None else None}
        path = save_checkpoint(cfg.output_dir, step, tensors, meta, keep=cfg.checkpoints_total_limit)
        tqdm.write(f"checkpoint written: {path}")
    accelerator.wait_for_everyone()


def upgrade_layout(tensors: dict[str, torch.Tensor], processes: int) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors in today's layout. Before the regularizer's state went through
    ``state_dict()``, checkpoints held ``regularizer.a_per_process`` [P, K], one ``regularizer.step``
    and one ``regularizer.seen`` [K]: renamed and repeated per process here, nothing else changes."""
    if "regularizer.a_per_process" not in tensors:
        return tensors
    tensors = dict(tensors)
    tensors["regularizer.running_mean.a"] = tensors.pop("regularizer.a_per_process")
    tensors["regularizer.step"] = tensors["regularizer.step"].reshape(1, 1).expand(processes, 1)
    if "regularizer.seen" in tensors:
        tensors["regularizer.running_mean.seen"] = tensors.pop("regularizer.seen").reshape(1, -1).expand(processes, -1)
    return tensors


def _regularizer_state(accelerator, path, tensors, processes: int, regularizer) -> dict[str, torch.Tensor]:
    """This process's row of each saved regularizer entry; with another process count, their mean
    (the running mean a) or largest value (the step counter, the ranges seen)."""
    state = {}
    for key, value in regularizer.state_dict().items():
        rows = tensors[f"regularizer.{key}"].reshape(processes, -1)
        if rows.shape[1] != value.numel():
            raise ConfigError(f"{path} holds {rows.shape[1]} value(s) of regularizer.{key} per process but this "
                              f"regularizer has {value.numel()}: resume with the reg_t_buckets the run started with")
        if processes == accelerator.num_processes:
            row = rows[accelerator.process_index]
        else:
            row = rows.double().mean(0) if value.is_floating_point() else rows.amax(0)
        state[key] = row.to(value.dtype).reshape(value.shape)
    return state


def resume_state(accelerator, cfg, path, checkpoint, unet, optimizer, lr_sched, regularizer, ema=None
                 ) -> tuple[int, int]:
    """Load a checkpoint read by :func:`open_checkpoint` into the run's state: (step, micro_step).

    An EMA resumes from the checkpoint's ``ema.*`` tensors; one that the checkpoint lacks (``--ema-decay``
    named in ``--resume-override``) starts from the resumed weights, and says so."""
    tensors, meta = checkpoint
    tensors = upgrade_layout(tensors, meta["num_processes"])
    named = lora_named(unet)
    wrong = [n for n, p in named.items() if f"lora.{n}" not in tensors or tensors[f"lora.{n}"].shape != p.shape]
    if wrong:
        raise ConfigError(f"{path} does not match this LoRA ({len(wrong)} of {len(named)} tensors missing or "
                          f"shaped differently, e.g. {wrong[0]}): resume with the rank and target modules the "
                          "run started with")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(tensors[f"lora.{n}"])
    if ema is not None:
        _resume_ema(accelerator, path, tensors, meta, named, ema)
    unflatten_optimizer(optimizer, tensors, meta["optimizer"])
    lr_sched.load_state_dict(meta["lr_scheduler"])
    apply_hyperparameters(cfg, optimizer, lr_sched)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if meta["num_processes"] != accelerator.num_processes:
        accelerator.print(f"resuming {meta['num_processes']} processes' state on {accelerator.num_processes}: "
                          "the running mean a is averaged and the data order changes")
    regularizer.load_state_dict(_regularizer_state(accelerator, path, tensors, meta["num_processes"], regularizer))
    accelerator.print(f"resumed from {path} at step {meta['step']} (a = {regularizer.a.mean().item():.4g})")
    return meta["step"], meta["micro_step"]


def apply_hyperparameters(cfg, optimizer, lr_sched) -> None:
    """After loading a checkpoint: this config's learning rate (at the schedule's step), betas, eps, weight decay."""
    for group in optimizer.param_groups:
        group.update(initial_lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                     weight_decay=cfg.weight_decay)
    lr_sched.base_lrs = [cfg.learning_rate] * len(optimizer.param_groups)
    lrs = [base * scale(lr_sched.last_epoch) for base, scale in zip(lr_sched.base_lrs, lr_sched.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    lr_sched._last_lr = lrs


def _resume_ema(accelerator, path, tensors, meta, named, ema) -> None:
    """The EMA's weights and update count from the checkpoint, or a fresh EMA of the resumed weights."""
    with torch.no_grad():
        if all(f"ema.{n}" in tensors for n in named):
            for shadow, n in zip(ema.shadow_params, named):
                shadow.copy_(tensors[f"ema.{n}"])
            ema.optimization_step = meta.get("ema_step") or meta["step"]
        else:
            for shadow, p in zip(ema.shadow_params, named.values()):
                shadow.copy_(p)
            accelerator.print(f"{path} holds no EMA of the LoRA weights: the EMA starts from the resumed weights")
