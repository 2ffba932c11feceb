"""Counting UNet evaluations, and what they would cost on a Colab T4.

A diffusion notebook's time is almost all UNet evaluations. :class:`UNetEvaluationCounter`
hooks a UNet and counts *sample evaluations* (a call on a batch of B latents counts B),
split by what a float16 Stable Diffusion world would run them in:

- ``fp16``: sampling, DDIM inversion (no gradient);
- ``fp32``: null-text inversion and its sampling, r over t (:func:`smoothlib.device.in_float32`);
- ``fp32+grad``: the same with a gradient (a backward pass follows);
- ``train``: a training step of the exact regularizer (train mode, with gradient).

:func:`t4_seconds` turns a count into seconds with published T4 figures for SD 1.5 at 512 px:

- float16: 6.9 iterations/s at batch 1 with classifier-free guidance (a UNet call on 2 latents),
  torch 2.0 SDPA, diffusers' "Torch 2.0" benchmark
  (https://huggingface.co/docs/diffusers/main/en/optimization/torch2.0): 1 / 13.8 = 0.0725 s
  per sample evaluation;
- float32: 2.9 times slower, from the same benchmark's T4 batch-4 runs (85.78 s against 29.74 s
  with SDPA; https://huggingface.co/diffusers/tools/blob/main/plot_bench.py), consistent with
  AUTOMATIC1111's Colab T4 figures (2.00 against 5.73 it/s,
  https://github.com/AUTOMATIC1111/stable-diffusion-webui/pull/3754): 0.21 s;
- a backward pass costs two forward passes (the usual rule), so ``fp32+grad`` weighs 3;
- a training step of the exact regularizer weighs 3 x 3.14: 3.14 is the step-time ratio of the
  exact regularizer to a plain step measured on the shipped toy UNet
  (``benchmarks/regularizer_cost.py``, docs/regularizer.md).

These are estimates for planning (a T4 was not available to measure), not measurements.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch

from .device import inside_float32_block

T4_SECONDS_PER_SAMPLE_FP16 = 1 / (6.9 * 2)
T4_FP32_SLOWDOWN = 2.9
BACKWARD_WEIGHT = 3.0
EXACT_REGULARIZER_STEP_RATIO = 3.14
KINDS = ("fp16", "fp32", "fp32+grad", "train")


def _kind(unet) -> str:
    if unet.training and torch.is_grad_enabled():
        return "train"
    upcast = inside_float32_block(unet) or unet.training
    if not upcast:
        return "fp16"
    return "fp32+grad" if torch.is_grad_enabled() else "fp32"


class UNetEvaluationCounter:
    """Counts sample evaluations of every UNet it is attached to, by kind and by latent area.

    ``counts[(kind, area)]``: sample evaluations of that kind at latents of ``area`` = h x w pixels.
    """

    def __init__(self):
        self.counts: Counter = Counter()
        self._handles = []

    def attach(self, unet) -> None:
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["sample"]
            self.counts[(_kind(module), x.shape[-2] * x.shape[-1])] += x.shape[0]
        self._handles.append(unet.register_forward_pre_hook(hook, with_kwargs=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def by_kind(self, full_area: int) -> dict[str, float]:
        """Sample evaluations by kind, in units of one evaluation at ``full_area`` (smaller latents count less)."""
        out = {k: 0.0 for k in KINDS}
        for (kind, area), n in self.counts.items():
            out[kind] += n * area / full_area
        return out


@contextmanager
def count_unet_evaluations(unet):
    """``with count_unet_evaluations(world.unet) as counter:`` ... ``counter.counts``."""
    counter = UNetEvaluationCounter()
    counter.attach(unet)
    try:
        yield counter
    finally:
        counter.detach()


def t4_seconds(by_kind: dict[str, float]) -> float:
    """Estimated seconds on a Colab T4 for counts from :meth:`UNetEvaluationCounter.by_kind` (SD 1.5, 512 px)."""
    fp16 = T4_SECONDS_PER_SAMPLE_FP16
    fp32 = fp16 * T4_FP32_SLOWDOWN
    return (by_kind.get("fp16", 0) * fp16 + by_kind.get("fp32", 0) * fp32
            + by_kind.get("fp32+grad", 0) * BACKWARD_WEIGHT * fp32
            + by_kind.get("train", 0) * BACKWARD_WEIGHT * EXACT_REGULARIZER_STEP_RATIO * fp32)
