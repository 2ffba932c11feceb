"""The toy world's training code: the base model and the digit classifier from scratch (``scripts/make_toy_world.py``).

Nothing at run time needs it: the course and the library load the shipped weights.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .classifier import DigitClassifier
from .data import TEMPLATES, digit_prompt
from .model import build_toy_text_encoder, build_toy_unet, toy_scheduler, toy_tokenizer


class EMA:
    """Exponential moving average of a module's parameters, decay warming up as (1 + n) / (10 + n)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p, 1 - d)


def caption_ids(tokenizer) -> torch.Tensor:
    """Token ids of every caption: [10 digits, len(TEMPLATES) + 1, L]; the last template is ""."""
    prompts = [digit_prompt(d, k) for d in range(10) for k in range(len(TEMPLATES))]
    ids = tokenizer(prompts + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    per_digit = ids[:-1].reshape(10, len(TEMPLATES), -1)
    return torch.cat([per_digit, ids[-1:].expand(10, 1, -1)], dim=1)


def train_toy_base(images: torch.Tensor, labels: torch.Tensor, steps: int = 3000, batch_size: int = 64,
                   lr: float = 1e-3, warmup: int = 200, caption_dropout: float = 0.1,
                   ema_decay: float = 0.999, seed: int = 0,
                   callback: Callable[[int, dict], None] | None = None, every: int = 500,
                   progress: bool = True) -> dict:
    """Train the toy UNet and text encoder jointly from scratch; return their EMA copies.

    ``images``: uint8 [N, 1, 16, 16]; ``labels``: [N]. Each step draws a batch
    with replacement-free shuffling, a random caption template per image,
    ``caption_dropout`` empty captions, t uniform in [0, 1000), and minimises
    the epsilon MSE. AdamW (weight decay 1e-2), linear warm-up then cosine decay
    to 10 % of ``lr``, gradient-norm clip 1. ``callback(step, components)`` runs
    every ``every`` steps with the EMA components (for adherence checks).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer, scheduler = toy_tokenizer(), toy_scheduler()
    unet, text_encoder = build_toy_unet(seed).train(), build_toy_text_encoder(seed).train()
    ema_unet, ema_text = EMA(unet, ema_decay), EMA(text_encoder, ema_decay)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    ids_table = caption_ids(tokenizer)
    abar = scheduler.alphas_cumprod.float()
    x_all = images.float() / 127.5 - 1
    order, pos, losses = torch.randperm(len(x_all), generator=gen), 0, []
    bar = tqdm(range(1, steps + 1), desc="toy base", disable=not progress)
    for step in bar:
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(x_all), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x0, y = x_all[idx], labels[idx]
        template = torch.randint(0, len(TEMPLATES), (len(idx),), generator=gen)
        template[torch.rand(len(idx), generator=gen) < caption_dropout] = len(TEMPLATES)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        cond = text_encoder(ids_table[y, template])[0]
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if callback is not None and (step % every == 0 or step == steps):
            callback(step, {"unet": ema_unet.module, "text_encoder": ema_text.module,
                            "tokenizer": tokenizer, "scheduler": scheduler})
    return {"unet": ema_unet.module, "text_encoder": ema_text.module, "tokenizer": tokenizer,
            "scheduler": scheduler, "losses": losses}


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 12, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, progress: bool = True) -> DigitClassifier:
    """Train :class:`DigitClassifier` on uint8 images [N, 1, 16, 16] with random shifts of up to 1 pixel.

    Adam, cosine-decayed learning rate, cross-entropy; returns the model in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    x_all, n = images.float() / 255, len(images)
    steps = epochs * (n // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(total=steps, desc="classifier", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(n // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            dy, dx = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(F.pad(x_all[idx], (1, 1, 1, 1)), (dy, dx), dims=(2, 3))[:, :, 1:-1, 1:-1]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval().requires_grad_(False)
