"""The World: a diffusion model and the few helpers every notebook needs, whatever the model.

A :class:`World` holds the diffusers components under their usual names
(``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``, ``vae``) and turns
prompts into embeddings and latents into images and back. Two kinds share it:

- latent diffusion (Stable Diffusion): ``vae`` is an ``AutoencoderKL``; latents
  are ``vae.encode(2 x - 1) * scaling_factor`` (0.18215 for SD 1.x);
- pixel diffusion (the bundled toy model): ``vae is None``; the "latents" are the
  images themselves, rescaled from [0, 1] to [-1, 1].

:func:`smoothlib.worlds.load_world` builds one by name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .lora import ADAPTER, load_smooth_lora


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
    datasets: dict[str, Callable[..., Any]] = field(default_factory=dict)
    """Training sets bundled with this world, by name: the toy world's ``{"digits": ...}``; each is
    called as ``factory(seed=...)`` and returns a dataset of {"pixel_values", "caption"} items."""

    def __repr__(self) -> str:
        adapters = getattr(self.unet, "peft_config", {})
        lora = "loaded" if ADAPTER in adapters else "not loaded"
        kind = "pixel space" if self.vae is None else f"latents {tuple(self.latent_shape)}"
        return (f"World({self.name!r}: {self.device.type}, {str(self.dtype).replace('torch.', '')}, "
                f"images {self.image_size[0]}x{self.image_size[1]}, {kind};\n"
                f"      Smooth LoRA {lora}, default source {self.smooth_lora!r})")

    def load_smooth_lora(self, source: str | os.PathLike | None = None, **kwargs):
        """Apply this world's Smooth LoRA (or ``source``) to :attr:`unet`; see :func:`smoothlib.lora.load_smooth_lora`.

        Then ``set_lora_strength(world.unet, s)`` scales it and ``with lora_disabled(world.unet):``
        switches it off, in either world.
        """
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

    def encode(self, images: torch.Tensor, batch_size: int = 8, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1], [B, 3, H, W] -> latents x_0 on the world's device and dtype.

        By default the mean of the VAE posterior, so that inversion and reconstruction
        experiments are deterministic; ``sample=True`` draws from it instead,
        mean + std * noise with the noise from ``generator`` (as the release and diffusers'
        train_text_to_image train). A pixel-space world has no posterior and ignores both.
        """
        if images.min() < 0 or images.max() > 1:
            raise ValueError("encode expects images in [0, 1]; rescale them first "
                             f"(got min {images.min().item():.3g}, max {images.max().item():.3g})")
        samples = images * 2 - 1
        if self.vae is None:
            return samples.to(self.device, self.dtype)
        scale, shift = self._latent_scaling()
        posteriors = [self.vae.encode(chunk.to(self.vae.device, self.vae.dtype)).latent_dist
                      for chunk in samples.split(batch_size)]
        latents = [p.sample(generator) if sample else p.mean for p in posteriors]
        return ((torch.cat(latents) - shift) * scale).to(self.device, self.dtype)

    def _latent_scaling(self) -> tuple[float, float]:
        config = self.vae.config
        return config.scaling_factor, getattr(config, "shift_factor", None) or 0.0
