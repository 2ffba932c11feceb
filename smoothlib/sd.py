"""Stable Diffusion 1.x worlds: a short name, a Hub repository or a saved pipeline folder -> :class:`World`.

:func:`load_sd_world` reads only the UNet, VAE, text encoder, tokenizer and scheduler
(no safety checker), from safetensors files only; every Hub failure becomes a
:class:`smoothlib.hub.HubAccessError` that says what to do.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .device import resolve
from .hub import PICKLE_SUFFIXES, hub_errors, looks_like_repo_id, pickle_refusal
from .lora import SMOOTH_LORA_REPO
from .world import World

SHORT_NAMES = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
"""Short world names and the Hub repository each stands for."""

_COMPONENTS = ("unet", "vae", "text_encoder")
_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                 "text_encoder": "model"}
_CONVERT_PIPELINE = ("StableDiffusionPipeline.from_pretrained(folder).save_pretrained(new_folder); "
                     "or pick a revision that has safetensors files")


def load_sd_world(name: str | os.PathLike, *, device, dtype, revision: str | None, variant: str | None,
                  token: str | bool | None, cache_dir: str | os.PathLike | None,
                  local_files_only: bool) -> World:
    """A Stable Diffusion 1.x world from a short name (``"sd15"``), a Hub repo id or a local pipeline folder.

    See :func:`smoothlib.worlds.load_world` for the arguments; the world's default
    Smooth LoRA is the release's repository.
    """
    key = str(name)
    folder = Path(key).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repositories, but {key!r} "
                             "is a local folder; drop revision")
    elif key in SHORT_NAMES or looks_like_repo_id(key):
        repo_id = SHORT_NAMES.get(key, key)
        folder = _download(repo_id, revision=revision, variant=variant, token=token,
                           cache_dir=cache_dir, local_files_only=local_files_only)
    else:
        raise ValueError(f"unknown world {key!r}: use one of {sorted(SHORT_NAMES)}, a Hub repo id "
                         "such as 'prompthero/openjourney-v4', or an existing local folder")
    return _from_folder(folder, key, *resolve(device, dtype), variant=variant)


def _download(repo_id: str, *, revision, variant, token, cache_dir, local_files_only) -> Path:
    """Fetch only what a World needs (no safety checker, no pickle or EMA files) into the Hub cache."""
    from huggingface_hub import snapshot_download

    infix = f".{variant}" if variant else ""
    patterns = ["model_index.json", "scheduler/*.json", "tokenizer/*"]
    for part in _COMPONENTS:
        stem = _WEIGHT_STEMS[part]
        patterns += [f"{part}/*.json", f"{part}/{stem}{infix}.safetensors",
                     f"{part}/{stem}{infix}-*.safetensors"]
    with hub_errors("the model", repo_id, revision):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      token=token, cache_dir=cache_dir,
                                      local_files_only=local_files_only))


def _check_folder(folder: Path, variant: str | None) -> None:
    """Refuse a folder that is not a diffusers pipeline, or whose weights exist only as pickle."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a saved diffusers pipeline (no model_index.json); "
                         "save one with StableDiffusionPipeline.save_pretrained(folder)")
    redo = "save the pipeline again with StableDiffusionPipeline.save_pretrained(folder), or download it again"
    try:
        text = index.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{index} is not UTF-8 text ({err.reason}); {redo}") from None
    if not text.strip():
        raise ValueError(f"{index} is empty; {redo}")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{index} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                         f"{redo}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{index} holds a JSON {type(content).__name__}, not an object naming the pipeline's "
                         f"parts; {redo}")
    missing = [part for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if part not in content]
    if missing:
        raise ValueError(f"{index} does not describe a Stable Diffusion pipeline (no {', '.join(missing)}); {redo}")
    infix = f".{variant}" if variant else ""
    for part in _COMPONENTS:
        files = [f for f in (folder / part).iterdir() if infix in f.name] if (folder / part).is_dir() else []
        if any(f.suffix == ".safetensors" for f in files):
            continue
        if any(f.suffix in PICKLE_SUFFIXES for f in files):
            raise ValueError(pickle_refusal(folder / part, "model weights", _CONVERT_PIPELINE))
        raise ValueError(f"{folder / part} has no {infix.lstrip('.') or 'full-precision'} "
                         "safetensors weights; check the folder, or the variant you asked for")


def _from_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                 variant: str | None) -> World:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    _check_folder(folder, variant)
    with warnings.catch_warnings():  # diffusers 0.42 renamed torch_dtype to dtype; older ones know only torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, torch_dtype=dtype, variant=variant, use_safetensors=True,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                          set_alpha_to_one=False, steps_offset=1)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.to(device).eval().requires_grad_(False)
    return World(name=name, unet=pipe.unet, text_encoder=pipe.text_encoder,
                 tokenizer=pipe.tokenizer, scheduler=scheduler, vae=pipe.vae,
                 device=device, dtype=dtype, smooth_lora=SMOOTH_LORA_REPO)
