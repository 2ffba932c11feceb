"""Worlds: a diffusion model and the few helpers every notebook needs, whatever the model.

A :class:`World` holds the diffusers components under their usual names
(``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``, ``vae``) and turns
prompts into embeddings and latents into images and back. Two kinds share it:

- latent diffusion (Stable Diffusion): ``vae`` is an ``AutoencoderKL``; latents
  are ``vae.encode(2 x - 1) * scaling_factor`` (0.18215 for SD 1.x);
- pixel diffusion (the bundled toy model): ``vae is None``; the "latents" are the
  images themselves, rescaled from [0, 1] to [-1, 1].

:func:`load_world` builds one for Stable Diffusion 1.x: a short name (``"sd15"``),
any diffusers SD 1.x repository on the Hugging Face Hub, or a local folder holding
a saved ``StableDiffusionPipeline``. Weights are read from safetensors files
only, and every Hub failure becomes a :class:`HubAccessError` that says what to do.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .device import resolve

SHORT_NAMES = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
"""Short world names and the Hub repository each stands for."""
SMOOTH_LORA_REPO = "shi-labs/smooth-diffusion-lora"
"""The released Smooth LoRA for SD 1.5 (Guo et al. 2024)."""

logger = logging.getLogger(__name__)

_COMPONENTS = ("unet", "vae", "text_encoder")
_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                 "text_encoder": "model"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# --------------------------------------------------------------------------- the World


@dataclass
class World:
    """A text-to-image diffusion model with its tokenizer, text encoder, scheduler and (optional) VAE.

    ``vae=None`` means pixel space: :meth:`encode` and :meth:`decode` only map
    images in [0, 1] to samples in [-1, 1] and back.
    """
    name: str
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    smooth_lora: str | None = None
    """Where this world's Smooth LoRA comes from by default: the release's Hub repository for
    Stable Diffusion, the shipped ``data/toy_lora/<TOY_SMOOTH_LORA>`` for the toy world."""

    def __repr__(self) -> str:
        from .lora import ADAPTER
        adapters = getattr(self.unet, "peft_config", {})
        lora = "loaded" if ADAPTER in adapters else "not loaded"
        kind = "pixel space" if self.vae is None else f"latents {tuple(self.latent_shape)}"
        return (f"World({self.name!r}: {self.device.type}, {str(self.dtype).replace('torch.', '')}, "
                f"images {self.image_size[0]}x{self.image_size[1]}, {kind};\n"
                f"      Smooth LoRA {lora}, default source {self.smooth_lora!r})")

    def load_smooth_lora(self, source: str | os.PathLike | None = None, **kwargs):
        """Apply this world's Smooth LoRA (or ``source``) to :attr:`unet`; see :func:`smoothlib.lora.load_smooth_lora`.

        Then ``set_smooth_lora_strength(world.unet, s)`` scales it and ``with lora_disabled(world.unet):``
        switches it off, in either world.
        """
        from .lora import load_smooth_lora

        source = source if source is not None else self.smooth_lora
        if source is None:
            raise ValueError(f"the world {self.name!r} has no default Smooth LoRA; pass a file, folder or repo id")
        return load_smooth_lora(self.unet, source, **kwargs)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD 1.x, 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample x_t; (4, 64, 64) for SD 1.5."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of a decoded image; (512, 512) for SD 1.5."""
        _, height, width = self.latent_shape
        return (height * self.vae_scale_factor, width * self.vae_scale_factor)

    def encode_prompt(self, prompts: str | list[str]) -> torch.Tensor:
        """Text embeddings c, shape [B, L, D] ([B, 77, 768] for SD 1.5), on the world's device and dtype.

        Prompts are padded to the tokenizer's full length, as Stable Diffusion was trained.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        hidden = self.text_encoder(ids.to(self.text_encoder.device))[0]
        return hidden.to(self.device, self.dtype)

    def uncond_embedding(self, batch_size: int = 1) -> torch.Tensor:
        """The empty prompt's embedding, [batch_size, L, D]: the unconditional branch of guidance."""
        return self.encode_prompt([""] * batch_size)

    def decode(self, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Latents x_0 -> float32 images in [0, 1], [B, 3, H, W] (decoded in chunks to bound memory)."""
        if self.vae is None:
            return (latents.float() / 2 + 0.5).clamp(0, 1)
        scale, shift = self._latent_scaling()
        images = [self.vae.decode(chunk.to(self.vae.device, self.vae.dtype) / scale + shift).sample
                  for chunk in latents.split(batch_size)]
        return (torch.cat(images).float() / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Images in [0, 1], [B, 3, H, W] -> latents x_0 on the world's device and dtype.

        Uses the mean of the VAE posterior (no sampling), so that inversion and
        reconstruction experiments are deterministic.
        """
        if images.min() < 0 or images.max() > 1:
            raise ValueError("encode expects images in [0, 1]; rescale them first "
                             f"(got min {images.min().item():.3g}, max {images.max().item():.3g})")
        samples = images * 2 - 1
        if self.vae is None:
            return samples.to(self.device, self.dtype)
        scale, shift = self._latent_scaling()
        latents = [self.vae.encode(chunk.to(self.vae.device, self.vae.dtype)).latent_dist.mean
                   for chunk in samples.split(batch_size)]
        return ((torch.cat(latents) - shift) * scale).to(self.device, self.dtype)

    def _latent_scaling(self) -> tuple[float, float]:
        config = self.vae.config
        return config.scaling_factor, getattr(config, "shift_factor", None) or 0.0


# --------------------------------------------------------------------------- Hub access


class HubAccessError(OSError):
    """The Hugging Face Hub could not provide a model or file; the message says what to do instead."""


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors
    names = ("HfHubHTTPError", "EntryNotFoundError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")
    return tuple(getattr(errors, n) for n in names if hasattr(errors, n))


def _is_offline(err: BaseException) -> bool:
    from huggingface_hub import constants, errors
    chain, seen = err, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, errors.OfflineModeIsEnabled):
            return True
        chain = chain.__cause__ or chain.__context__
    return bool(constants.HF_HUB_OFFLINE)


def _hub_reason(err: BaseException, repo_id: str, revision: str | None) -> str:
    from huggingface_hub import errors
    if isinstance(err, errors.GatedRepoError):
        return (f"the repository is gated: accept its conditions on https://huggingface.co/{repo_id} "
                "and log in (`hf auth login`, or pass token=...)")
    if isinstance(err, errors.RepositoryNotFoundError):
        return ("the repository does not exist, was removed, or is private (log in with "
                "`hf auth login` or pass token=... if it is yours). Note: runwayml/stable-diffusion-v1-5 "
                f"was removed in 2024; its mirror is {SHORT_NAMES['sd15']}")
    if isinstance(err, errors.RevisionNotFoundError):
        return f"revision {revision!r} does not exist in the repository"
    if isinstance(err, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        if _is_offline(err):
            return ("offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the local "
                    "cache; unset HF_HUB_OFFLINE on a machine with internet access")
        return ("the Hub cannot be reached (no internet access?) and the files are not in "
                "the local cache")
    if isinstance(err, errors.EntryNotFoundError):
        return "the requested file is not in the repository; check weight_name"
    return f"the Hub answered with an error ({type(err).__name__}: {err})"


@contextmanager
def hub_errors(what: str, repo_id: str, revision: str | None = None):
    """Turn huggingface_hub's errors raised inside the block into one clear :class:`HubAccessError`.

    The message names the repository, the reason, and the ways around it; the
    original exception is chained (``raise ... from``).
    """
    try:
        yield
    except _hub_errors() as err:
        at = f" at revision {revision!r}" if revision else ""
        raise HubAccessError(
            f"Could not get {what} from the Hugging Face Hub repository {repo_id!r}{at}: "
            f"{_hub_reason(err, repo_id, revision)}.\n"
            "Instead you can: pass a local folder or file (load_world('/path/to/saved_pipeline'), "
            "load_smooth_lora(unet, '/path/to/smooth_lora.safetensors')); or use the bundled CPU "
            "model, load_world('toy')."
        ) from err


# --------------------------------------------------------------------------- loading


def load_world(name: str | os.PathLike = "sd15", *, device=None, dtype=None,
               revision: str | None = None, variant: str | None = None,
               token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
               local_files_only: bool = False, smooth_lora: str | os.PathLike | None = None) -> World:
    """Load a Stable Diffusion 1.x world with a DDIM scheduler, frozen and in eval mode.

    ``name``: ``"sd15"`` (Stable Diffusion 1.5 from the Hub mirror), a diffusers SD 1.x
    repository id (``"prompthero/openjourney-v4"``), or a local folder written by
    ``StableDiffusionPipeline.save_pretrained``. ``device``/``dtype`` default to
    :func:`smoothlib.device.resolve` (float16 on CUDA, float32 elsewhere).
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
    world = _load_world(name, device=device, dtype=dtype, revision=revision, variant=variant, token=token,
                        cache_dir=cache_dir, local_files_only=local_files_only)
    if smooth_lora is not None:
        world.smooth_lora = str(smooth_lora)
    return world


def _load_world(name, *, device, dtype, revision, variant, token, cache_dir, local_files_only) -> World:
    key = str(name)
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
        return _toy_world(*resolve(device or "cpu", dtype or torch.float32))
    folder = Path(key).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repositories, but {key!r} "
                             "is a local folder; drop revision")
    elif key in SHORT_NAMES or _looks_like_repo_id(key):
        repo_id = SHORT_NAMES.get(key, key)
        folder = _download(repo_id, revision=revision, variant=variant, token=token,
                           cache_dir=cache_dir, local_files_only=local_files_only)
    else:
        raise ValueError(f"unknown world {key!r}: use one of {sorted(SHORT_NAMES)}, a Hub repo id "
                         "such as 'prompthero/openjourney-v4', or an existing local folder")
    return _from_folder(folder, key, *resolve(device, dtype), variant=variant)


def _toy_world(device: torch.device, dtype: torch.dtype) -> World:
    """The bundled text-to-image digit model (pixel space, no VAE), read from ``data/toy`` offline."""
    from .toy import TOY_SMOOTH_LORA, data_dir, load_toy_components

    parts = load_toy_components(device=device, dtype=dtype)
    return World(name="toy", vae=None, device=device, dtype=dtype,
                 smooth_lora=str(data_dir() / "toy_lora" / TOY_SMOOTH_LORA), **parts)


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
            and not os.path.isabs(name))


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
        if any(f.suffix in _PICKLE_SUFFIXES for f in files):
            raise ValueError(
                f"{folder / part} holds pickle weights only, which can run arbitrary code when "
                "loaded; smoothlib reads safetensors only. Convert the model once in a process you "
                "trust (StableDiffusionPipeline.from_pretrained(...).save_pretrained(new_folder)) "
                "or pick a revision that has safetensors files")
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
