"""Walks through a World: between two noises, two prompts, two real images; and the ISTD protocol.

Smooth Diffusion (Guo et al., CVPR 2024) judges a latent space by how evenly the images
change along such walks:

- noises: x_T(eta) = slerp(x_T^a, x_T^b; eta), one prompt (the ISTD walk);
- prompts: c(eta) = (1 - eta) c_a + eta c_b, one noise;
- real images: shared null-text inversion of both images (one null embedding per step
  for the pair), x_T(eta) = slerp of the two inverted noises, optionally c(eta) between
  the two captions, every frame sampled with the shared null embeddings.

Every frame is a guided DDIM sample, decoded to [0, 1]; frames are sampled in batches.
Noises come from a CPU ``torch.Generator`` seeded per item, so the same seeds give the
same noises on any device and for every model compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .ddim import ddim_sample
from .interpolate import lerp, slerp
from .inversion import Inversion, invert, sample_with_null_text
from .metrics import istd_per_walk

Tensor = torch.Tensor


def seeded_noise(world, seed: int, count: int = 1, dtype: torch.dtype | None = None) -> Tensor:
    """``count`` Gaussian noises [count, *latent_shape] from a CPU generator seeded with ``seed``,
    drawn in float32 on the CPU (so the same on every device), then moved to the world's device
    in ``dtype`` (default: the world's)."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(count, *world.latent_shape, generator=g).to(world.device, dtype or world.dtype)


def etas(num_frames: int) -> Tensor:
    """The interpolation weights 0, 1/(F-1), ..., 1 (F = 11 gives 0, 0.1, ..., 1)."""
    if num_frames < 2:
        raise ValueError(f"a walk needs at least 2 frames (its two ends), got {num_frames}")
    return torch.linspace(0, 1, num_frames, dtype=torch.float64)


def _embed(world, prompt) -> Tensor:
    if isinstance(prompt, Tensor):
        return prompt
    with torch.no_grad():
        return world.encode_prompt(prompt)


@torch.no_grad()
def sample_frames(world, x_T: Tensor, cond: Tensor, uncond: Tensor | list[Tensor] | None = None,
                  guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 8,
                  progress: bool = True, desc: str = "frames") -> Tensor:
    """Guided DDIM samples of many noises, ``batch_size`` at a time, decoded: [N, C, H, W] in [0, 1].

    ``cond`` [N or 1, L, D]; ``uncond`` one embedding [1, L, D] (default: the empty prompt)
    or a list of per-step null embeddings (from null-text inversion).
    """
    n = x_T.shape[0]
    cond = cond.expand(n, *cond.shape[1:]) if cond.shape[0] == 1 else cond
    if cond.shape[0] != n:
        raise ValueError(f"{cond.shape[0]} prompt embeddings for {n} noises")
    uncond = world.uncond_embedding(1) if uncond is None else uncond
    frames = []
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        x, c = x_T[start:start + batch_size], cond[start:start + batch_size]
        if isinstance(uncond, (list, tuple)):
            x_0 = sample_with_null_text(world.unet, world.scheduler, x, c, uncond, guidance_scale, num_steps, False)
        else:
            x_0 = ddim_sample(world.unet, world.scheduler, x, c, uncond, guidance_scale, num_steps, progress=False)
        frames.append(world.decode(x_0).cpu())
    return torch.cat(frames)


def noise_walk(world, x_a: Tensor, x_b: Tensor, prompt: str | Tensor, num_frames: int = 11,
               guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 8,
               progress: bool = True) -> Tensor:
    """Frames along slerp(x_a, x_b; eta), one prompt: [F, C, H, W] in [0, 1].

    ``x_a``, ``x_b``: noises of the world's latent shape ([C, h, w] or [1, C, h, w]).
    """
    x_a, x_b = x_a.reshape(world.latent_shape).float(), x_b.reshape(world.latent_shape).float()
    x_T = slerp(x_a, x_b, etas(num_frames))   # in float32; sampling casts to the UNet's dtype
    return sample_frames(world, x_T, _embed(world, prompt), None, guidance_scale, num_steps, batch_size,
                         progress, "noise walk")


def prompt_walk(world, prompt_a: str | Tensor, prompt_b: str | Tensor, x_T: Tensor, num_frames: int = 11,
                guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 8,
                progress: bool = True) -> Tensor:
    """Frames along lerp(c_a, c_b; eta) of two prompts' embeddings, one noise ``x_T``: [F, C, H, W]."""
    c = lerp(_embed(world, prompt_a)[0], _embed(world, prompt_b)[0], etas(num_frames))
    x = x_T.reshape(1, *world.latent_shape).expand(num_frames, *world.latent_shape)
    return sample_frames(world, x, c, None, guidance_scale, num_steps, batch_size, progress, "prompt walk")


def image_walk(world, image_a, image_b, prompt_a: str, prompt_b: str | None = None, num_frames: int = 11,
               guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 8,
               inversion: Inversion | None = None, progress: bool = True) -> Tensor:
    """Frames between two real images: [F, C, H, W] in [0, 1] (recipe in the module docstring).

    ``image_a``/``image_b``: tensors [C, H, W] in [0, 1] (any float dtype) or any source
    :func:`smoothlib.images.load_images` reads; NaN or inf is refused and a tensor not of the
    world's channels and size is converted (:func:`smoothlib.images.as_world_images`).
    ``prompt_b`` (default ``prompt_a``) captions the second image; the frames' prompt
    embeddings are lerped between the two. Pass a precomputed shared ``inversion`` (of
    ``[image_a, image_b]``) to skip the inversion.
    """
    prompt_b = prompt_a if prompt_b is None else prompt_b
    if inversion is None:
        from .images import as_world_images
        images = [as_world_images(im, world, name)[0] for im, name in ((image_a, "image_a"), (image_b, "image_b"))]
        inversion = invert(world, torch.stack(images), [prompt_a, prompt_b], "nti", guidance_scale, num_steps,
                           shared=True, progress=progress)
    if inversion.null_embeddings is None or inversion.null_embeddings[0].shape[0] != 1:
        raise ValueError("image_walk needs a shared null-text inversion of the two images "
                         "(invert(..., method='nti', shared=True))")
    ts = etas(num_frames)
    x_T = slerp(inversion.x_T[0], inversion.x_T[1], ts)
    c = lerp(inversion.cond[0], inversion.cond[1], ts)
    return sample_frames(world, x_T, c, inversion.null_embeddings, inversion.guidance_scale,
                         inversion.num_steps, batch_size, progress, "image walk")


# --------------------------------------------------------------------------- ISTD protocol


@dataclass
class ISTDResult:
    """Per-item ISTD scores and their mean with its standard error (sample std / sqrt(P))."""
    scores: Tensor
    prompts: list[str]
    seeds: list[int]
    frames: Tensor | None = None
    """[P, F, C, H, W] in [0, 1] when asked for."""

    @property
    def mean(self) -> float:
        return self.scores.mean().item()

    @property
    def stderr(self) -> float:
        p = self.scores.numel()
        return self.scores.std(correction=1).item() / math.sqrt(p) if p > 1 else float("nan")

    def __str__(self) -> str:
        return f"ISTD {self.mean:.4f} +- {self.stderr:.4f} (s.e., {self.scores.numel()} walks)"


def istd_protocol(world, prompts: str | list[str], num_pairs: int | None = None, seeds: list[int] | None = None,
                  num_frames: int = 11, guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 8,
                  return_frames: bool = False, progress: bool = True) -> ISTDResult:
    """The ISTD protocol of Smooth Diffusion's supplement, for any World.

    1. items: one per prompt (a single prompt with ``num_pairs`` repeats it); item p uses
       seed ``seeds[p]`` (default p), so the same prompts and noises serve every model compared;
    2. per item, two noises x_T^a, x_T^b drawn in that order from a CPU generator seeded with the seed;
    3. ``num_frames`` (11) noises slerp(x_T^a, x_T^b; eta), eta = 0, 0.1, ..., 1, in float32;
    4. guided DDIM samples (``num_steps`` 50, guidance 7.5), decoded to pixels in [0, 1] at the
       world's resolution; all items' frames sampled in batches of ``batch_size``;
    5. per item: population std of the 10 Euclidean distances between adjacent frames;
    6. ISTD: the mean over items (with its standard error).
    """
    prompts = [prompts] * (num_pairs or 1) if isinstance(prompts, str) else list(prompts)
    if num_pairs is not None and num_pairs != len(prompts):
        raise ValueError(f"num_pairs={num_pairs} but {len(prompts)} prompts; pass one prompt per pair, "
                         "or a single prompt string to repeat")
    seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} items; pass one seed per prompt")
    if num_frames < 3:
        raise ValueError(f"ISTD needs at least 3 frames, got {num_frames}")
    ts = etas(num_frames)
    # slerp in float32, then sampling casts to the UNet's dtype (a float16 world gets the same noises)
    x_T = torch.cat([slerp(*seeded_noise(world, s, 2, torch.float32), ts) for s in seeds])
    cond = _embed(world, prompts).repeat_interleave(num_frames, dim=0)
    frames = sample_frames(world, x_T, cond, None, guidance_scale, num_steps, batch_size, progress, "ISTD")
    frames = frames.reshape(len(prompts), num_frames, *frames.shape[1:])
    return ISTDResult(istd_per_walk(frames), prompts, seeds, frames if return_frames else None)
