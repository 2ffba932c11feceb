"""Worlds by name: the one place that picks a world, from ``"toy"``, ``"auto"``, ``"sd15"``, a Hub repo id or a folder.

:func:`load_world` hands ``"toy"`` to :func:`smoothlib.toy.toy_world` and everything else
to :func:`smoothlib.sd.load_sd_world`; ``"auto"`` takes Stable Diffusion 1.5 where a GPU
and the Hub are at hand, the toy world otherwise. What a world is: :mod:`smoothlib.world`.
"""
from __future__ import annotations

import logging
import os

import torch

from .device import resolve
from .hub import HubAccessError, hub_errors
from .lora import SMOOTH_LORA_REPO
from .sd import SHORT_NAMES, load_sd_world
from .world import World

__all__ = ["SHORT_NAMES", "SMOOTH_LORA_REPO", "HubAccessError", "World", "hub_errors", "load_world"]

logger = logging.getLogger(__name__)


def load_world(name: str | os.PathLike = "sd15", *, device=None, dtype=None,
               revision: str | None = None, variant: str | None = None,
               token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
               local_files_only: bool = False, smooth_lora: str | os.PathLike | None = None) -> World:
    """Load a world with a DDIM scheduler, frozen and in eval mode.

    ``name``: ``"toy"`` (the bundled CPU digit model, read offline), ``"auto"`` (``"sd15"``
    on a GPU with the Hub at hand, else ``"toy"``), ``"sd15"`` (Stable Diffusion 1.5 from the
    Hub mirror), a diffusers SD 1.x repository id (``"prompthero/openjourney-v4"``), or a local
    folder written by ``StableDiffusionPipeline.save_pretrained``. ``device``/``dtype`` default to
    :func:`smoothlib.device.resolve` (float16 on CUDA, float32 elsewhere; CPU and float32 for "toy").
    ``revision`` pins a Hub branch, tag or commit; ``variant="fp16"`` downloads
    the half-size weight files where a repository has them.

    Only the UNet, VAE, text encoder, tokenizer and scheduler are read (no safety
    checker), from safetensors files only. The scheduler is ``DDIMScheduler`` built
    from the model's own scheduler config with Stable Diffusion's settings
    (``clip_sample=False, set_alpha_to_one=False, steps_offset=1``).

    ``smooth_lora`` replaces the world's default Smooth LoRA source (what
    :meth:`World.load_smooth_lora` applies): a local file, a folder or a Hub repo id. The
    defaults are the release's repository for Stable Diffusion and the shipped LoRA for "toy".
    """
    world = _pick(str(name), device=device, dtype=dtype, revision=revision, variant=variant, token=token,
                  cache_dir=cache_dir, local_files_only=local_files_only)
    if smooth_lora is not None:
        world.smooth_lora = str(smooth_lora)
    return world


def _pick(key: str, *, device, dtype, revision, variant, token, cache_dir, local_files_only) -> World:
    if key == "auto":
        key = "sd15" if torch.cuda.is_available() and not os.environ.get("HF_HUB_OFFLINE") else "toy"
        if key == "sd15":
            try:
                return load_world("sd15", device=device, dtype=dtype, revision=revision, token=token,
                                  cache_dir=cache_dir, local_files_only=local_files_only)
            except HubAccessError as err:
                logger.warning("auto: Stable Diffusion 1.5 is out of reach (%s); using the bundled toy world",
                               str(err).splitlines()[0])
                key = "toy"
    if key == "toy":
        from .toy import toy_world
        return toy_world(*resolve(device or "cpu", dtype or torch.float32))
    return load_sd_world(key, device=device, dtype=dtype, revision=revision, variant=variant, token=token,
                         cache_dir=cache_dir, local_files_only=local_files_only)
