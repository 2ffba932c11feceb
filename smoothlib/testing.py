"""For tests and benchmarks only: tiny Stable Diffusion components and worlds, built in memory from config.

Same classes as Stable Diffusion 1.x (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, ``DDIMScheduler``) with a few thousand
to a few hundred thousand parameters, random weights, deterministic under a
seed, and no file or network access. Nothing here is a trained model, and
nothing in the library proper imports this module.
"""
from __future__ import annotations

import torch

from .word_tokenizer import _word_vocab, word_tokenizer

TINY_CROSS_DIM = 32


def tiny_unet(seed: int = 0, sample_size: int = 32, in_channels: int = 4,
              cross_attention_dim: int = TINY_CROSS_DIM):
    """A two-level ``UNet2DConditionModel`` with cross-attention (SD 1.x layout, scaled down)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim, attention_head_dim=8,
        ).eval()


def tiny_vae(seed: int = 0):
    """A two-level ``AutoencoderKL`` with 4 latent channels (downsampling x2)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32, sample_size=64,
        ).eval()


def tiny_text_encoder(seed: int = 0, vocab_size: int = 1000, hidden_size: int = TINY_CROSS_DIM,
                      max_position_embeddings: int = 77):
    """A 2-layer ``CLIPTextModel`` with hidden size 32 (matching :func:`tiny_unet`)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=max_position_embeddings,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config).eval()


def tiny_scheduler(prediction_type: str = "epsilon"):
    """``DDIMScheduler`` with Stable Diffusion 1.5's configuration."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type=prediction_type)


def tiny_world(sample_size: int = 8, in_channels: int = 4, seed: int = 0, vae: bool = False, name: str = "tiny"):
    """A :class:`smoothlib.world.World` of the tiny parts, random weights, for tests: pixel space (no VAE),
    images of ``in_channels`` x ``sample_size`` x ``sample_size``; with ``vae``, latent space through
    :func:`tiny_vae` (latents ``in_channels`` x ``sample_size``, images twice the size)."""
    from .world import World

    return World(name=name, unet=tiny_unet(seed, sample_size=sample_size, in_channels=in_channels),
                 text_encoder=tiny_text_encoder(seed), tokenizer=word_tokenizer(), scheduler=tiny_scheduler(),
                 vae=tiny_vae(seed) if vae else None)


def random_lora(unet, rank: int = 4, alpha: float = 2.0, seed: int = 3) -> list[torch.nn.Parameter]:
    """Attach a LoRA (``attach_lora``) and fill its A and B with 0.1 N(0, 1) from ``seed``: a stand-in for a
    trained LoRA (alpha != rank by default, so that a format that drops alpha shows); returns its tensors."""
    from .lora import attach_lora

    params = attach_lora(unet, rank=rank, alpha=alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return params


def tiny_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` of tiny components (safety checker off)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=tiny_unet(seed), vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed),
        tokenizer=word_tokenizer(), scheduler=tiny_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
"""``model_index.json`` of stable-diffusion-v1-5/stable-diffusion-v1-5 (the safety checker is listed, not fetched)."""

SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
"""``scheduler/scheduler_config.json`` of stable-diffusion-v1-5/stable-diffusion-v1-5."""

_SD_WORDS = ("a", "photograph", "of", "cat", "dog", "sitting", "on", "sofa", "red", "cup", "coffee", "tiger")


def save_tiny_sd15(folder, seed: int = 0):
    """Write a tiny Stable Diffusion 1.5 stand-in laid out as the Hub downloads it, and a Smooth LoRA for it.

    ``folder/stable-diffusion-v1-5/``: what ``load_world("sd15")`` fetches (model_index.json and
    scheduler config as SD 1.5's repository has them, a CLIPTokenizer as vocab.json + merges.txt
    with SD's 77 tokens, safetensors weights of a cross-attention UNet, an AutoencoderKL and a
    CLIPTextModel, random but seeded). ``folder/smooth-diffusion-lora/smooth_lora.safetensors``:
    a rank-4 LoRA on every attention projection in the release's file format, with random
    non-zero weights, so that switching it on changes the model. Returns (pipeline folder, LoRA file).
    Nothing here is trained: it stands in for Colab's world in tests, offline.
    """
    import json
    import shutil
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    from .lora import attach_lora, save_lora

    root = Path(folder)
    pipeline_dir, lora_dir = root / "stable-diffusion-v1-5", root / "smooth-diffusion-lora"
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(seed), vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed),
        tokenizer=word_tokenizer(_SD_WORDS, max_length=77), scheduler=tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(pipeline_dir, safe_serialization=True)
    tokenizer_dir = pipeline_dir / "tokenizer"  # as SD 1.5 has it: vocab.json + merges.txt, no tokenizer.json
    shutil.rmtree(tokenizer_dir)
    tokenizer_dir.mkdir()
    vocab, merges = _word_vocab(_SD_WORDS)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False}, indent=2))
    (tokenizer_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}, indent=2))
    (pipeline_dir / "model_index.json").write_text(json.dumps(SD15_MODEL_INDEX, indent=2))
    (pipeline_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))
    unet = pipe.unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        params = attach_lora(unet, rank=4)
        for p in params:  # B = 0 would make the LoRA a no-op; give both factors weights
            p.data = torch.randn_like(p) * 0.05
    lora_file = save_lora(unet, lora_dir, format="release")
    return pipeline_dir, lora_file
