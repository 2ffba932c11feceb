"""The toy model: its tokenizer, text encoder, UNet and scheduler, loading the trained ones, and the toy World."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..device import resolve
from ..world import World
from .assets import TOY_SMOOTH_LORA, is_shipped_lora, lora_path, rebuild_hint, toy_lora_dir, toy_model_dir
from .data import DIGIT_NAMES, IMAGE_SIZE, digit_captions, digit_prompt

TOY_GUIDANCE = 4.0
"""Default classifier-free guidance weight of the toy base model."""

MAX_LENGTH = 12
CROSS_DIM = 64

_WORDS = ("a", "an", "the", "handwritten", "digit", "picture", "of", "number", "image") + DIGIT_NAMES


# --------------------------------------------------------------------------- prompts


def toy_tokenizer():
    """The toy's ``CLIPTokenizer``, built in memory: every caption word is one token, prompts pad to 12."""
    from ..word_tokenizer import word_tokenizer

    return word_tokenizer(_WORDS, max_length=MAX_LENGTH)


def encode_prompts(text_encoder, tokenizer, prompts: str | list[str]) -> torch.Tensor:
    """Prompt embeddings [B, L, D], padded to the tokenizer's full length as in Stable Diffusion."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


# --------------------------------------------------------------------------- architecture


def toy_scheduler():
    """``DDIMScheduler`` of the toy: 1000 steps, linear betas 1e-4..0.02 (DDPM's pixel schedule), epsilon.

    The linear schedule ends at alpha_bar_T = 4e-5, so x_T carries almost no
    trace of the image (SD's scaled-linear schedule leaves 7 % of the signal,
    which in pixel space leaks the mostly black background into x_T).
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                         prediction_type="epsilon")


def build_toy_unet(seed: int = 0):
    """The untrained toy ``UNet2DConditionModel`` (1.7M parameters): 16 -> 8 -> 4 pixels,
    cross-attention at 8 x 8, 4 x 4 and in the middle block."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=IMAGE_SIZE, in_channels=1, out_channels=1,
            block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=CROSS_DIM, attention_head_dim=32,
        )


def build_toy_text_encoder(seed: int = 0, vocab_size: int | None = None):
    """The untrained toy ``CLIPTextModel``: 2 layers, width 64, 12 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = vocab_size or len(toy_tokenizer())
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CROSS_DIM, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


# --------------------------------------------------------------------------- loading


def load_toy_components(device=None, dtype=None, path: str | Path | None = None) -> dict:
    """The trained toy model from ``data/toy/``, offline: unet, text_encoder, tokenizer, scheduler.

    Models are frozen and in eval mode; ``device``/``dtype`` default to the CPU and float32.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    root = Path(path) if path is not None else toy_model_dir()
    for part in ("unet", "text_encoder"):
        if not (root / part / "config.json").exists():
            raise FileNotFoundError(f"no toy {part} in {root}; {rebuild_hint()}")
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    unet = UNet2DConditionModel.from_pretrained(root / "unet", local_files_only=True)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # a bar for a 1 MB local file is noise on every page that loads the world
    try:
        text_encoder, info = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True,
                                                           output_loading_info=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if info["missing_keys"] or info["unexpected_keys"]:   # transformers would carry on with random weights
        import transformers
        raise RuntimeError(f"transformers {transformers.__version__} did not read the toy text encoder in "
                           f"{root / 'text_encoder'}: {len(info['missing_keys'])} weights missing, "
                           f"{len(info['unexpected_keys'])} unexpected (e.g. {(info['missing_keys'] or info['unexpected_keys'])[0]}); "
                           "install a transformers release in the range smoothlib declares")
    for model in (unet, text_encoder):
        model.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:
            model.to(dtype)
    return {"unet": unet, "text_encoder": text_encoder, "tokenizer": toy_tokenizer(),
            "scheduler": toy_scheduler()}


def save_text_encoder(text_encoder, folder: str | Path) -> None:
    """``save_pretrained`` with every weight under the ``text_model.`` prefix.

    transformers 5.0 reads a ``CLIPTextModel`` only in that layout (the one Stable Diffusion's
    files use) and silently initialises anything else at random; later 5.x releases write the
    weights without the prefix and read both. Writing the prefix keeps the toy world loadable
    across the whole declared range.
    """
    from safetensors.torch import load_file, save_file

    text_encoder.save_pretrained(folder, safe_serialization=True)
    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})


# --------------------------------------------------------------------------- the toy World


def toy_world(device=None, dtype=None) -> World:
    """The bundled text-to-image digit model as a :class:`~smoothlib.world.World` (pixel space, no VAE),
    read from ``data/toy`` offline; ``device``/``dtype`` default to the CPU and float32.

    Its default Smooth LoRA is the shipped ``data/toy_lora/<TOY_SMOOTH_LORA>``; its data set
    ``"digits"`` (``datasets["digits"](seed)``) is the training split with captions.
    """
    device, dtype = resolve(device or "cpu", dtype or torch.float32)
    parts = load_toy_components(device=device, dtype=dtype)
    return World(name="toy", vae=None, device=device, dtype=dtype,
                 smooth_lora=str(toy_lora_dir() / TOY_SMOOTH_LORA), datasets={"digits": digit_captions}, **parts)


def toy_lora_source(lora: str | os.PathLike) -> Path:
    """The file of a toy LoRA: a shipped one by name (:func:`~smoothlib.toy.assets.lora_path`: "smooth",
    "control", a folder of ``data/toy_lora/``), or a path to a LoRA file or a folder holding one."""
    if isinstance(lora, str) and (is_shipped_lora(lora) or not Path(lora).exists()):
        return lora_path(lora)   # a name; an unknown one raises, listing the shipped LoRAs
    return Path(lora)


def load_toy_world(lora: str | os.PathLike | None = None, *, strength: float = 1.0, device=None,
                   dtype=None) -> World:
    """The toy world (:func:`toy_world`) with ``lora`` applied at ``strength`` (see :func:`toy_lora_source`);
    ``lora=None``: the base model alone."""
    world = toy_world(device=device, dtype=dtype)
    if lora is not None:
        world.load_smooth_lora(toy_lora_source(lora), strength=strength)
    return world


@torch.no_grad()
def sample_digits(components: dict, digits, noise: torch.Tensor, guidance_scale: float = TOY_GUIDANCE,
                  num_steps: int = 50, template: int = 0, progress: bool = False) -> torch.Tensor:
    """One DDIM sample per entry of ``digits`` from the given noise [B, 1, 16, 16]; images in [0, 1]."""
    from ..ddim import ddim_sample

    te, tok = components["text_encoder"], components["tokenizer"]
    cond = encode_prompts(te, tok, [digit_prompt(int(d), template) for d in digits])
    uncond = encode_prompts(te, tok, [""])
    x0 = ddim_sample(components["unet"], components["scheduler"], noise, cond, uncond,
                     guidance_scale=guidance_scale, num_steps=num_steps, progress=progress)
    return (x0.float() / 2 + 0.5).clamp(0, 1)
