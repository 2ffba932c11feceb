"""Tiny Stable Diffusion components, built in memory from config, for tests and benchmarks.

Same classes as Stable Diffusion 1.x (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, ``DDIMScheduler``) with a few thousand
to a few hundred thousand parameters, random weights, deterministic under a
seed, and no file or network access. Nothing here is a trained model.
"""
from __future__ import annotations

import string

import torch

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


def word_tokenizer(words=(), max_length: int = 16):
    """A ``CLIPTokenizer`` built in memory: every lower-case letter, digit and
    punctuation mark, plus each word in ``words`` as one token (through BPE
    merges), so that known words cost one token and unknown ones still encode.
    """
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab: dict[str, int] = {}
    for tok in specials + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in words:
        w = w.lower()
        left = w[0]
        for i, c in enumerate(w[1:], start=1):
            right = c + ("</w>" if i == len(w) - 1 else "")
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


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


def tiny_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` of tiny components (safety checker off)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=tiny_unet(seed), vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed),
        tokenizer=word_tokenizer(), scheduler=tiny_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
