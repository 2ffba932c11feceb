"""Editing a real image by switching the prompt part-way through sampling.

Smooth Diffusion (Guo et al., CVPR 2024, section 4.4) edits without
attention control (not prompt-to-prompt): null-text-invert the image with its source
caption c_src (Mokady et al. 2023), then sample back from the same x_T with the fitted
null embeddings, using c_src for the first (1 - r) of the N steps (the layout) and the
target caption c_tgt for the remaining r N (the details):

    c_i = c_src  for i <  n_src = round((1 - r) N),
    c_i = c_tgt  for i >= n_src,              i = 0 .. N-1 from most to least noisy,

with r in {0.6, 0.7, 0.8, 0.9} (default 0.8, the release demo's). r = 0 is the NTI
reconstruction; r = 1 samples the whole chain with the target prompt.

Rounding (``rule``): "nearest" (the default) keeps c_src for round((1 - r) N) steps, the
integer nearest to the paper's (1 - r) N (a tie goes to the even one, as Python rounds). The authors' release keeps c_src while
i < (1 - r) N in floating point (``rule="release"``): that is (1 - r) N rounded up, and one
step more where (1 - r) N is an integer that floating point lands just above, e.g. r = 0.7,
N = 50: (1 - 0.7) 50 = 15.000000000000002, so 16 steps where the paper means 15. Use "release"
to reproduce the release's demo edits step for step.
"""
from __future__ import annotations

import torch

from .images import as_world_images
from .inversion import Inversion, invert, sample_with_null_text

Tensor = torch.Tensor


SWITCH_RULES = ("nearest", "release")


def switch_schedule(num_steps: int, ratio: float, rule: str = "nearest") -> int:
    """n_src: how many of the ``num_steps`` sampling steps keep the source prompt (see the module docstring).

    ``rule="nearest"``: round((1 - r) N); ``rule="release"``: the number of i in 0..N-1 with
    i < (1 - r) N, computed in floating point as the authors' release does.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio r must lie in [0, 1] (the paper uses 0.6 to 0.9), got {ratio}")
    if rule not in SWITCH_RULES:
        raise ValueError(f"rule must be one of {', '.join(SWITCH_RULES)}, got {rule!r}")
    if rule == "release":
        return sum(1 for i in range(num_steps) if i < (1 - ratio) * num_steps)
    return int(round((1 - ratio) * num_steps))


@torch.no_grad()
def prompt_switch_sample(unet, scheduler, x_T: Tensor, cond_source: Tensor, cond_target: Tensor,
                         unconds: Tensor | list[Tensor], ratio: float = 0.8, guidance_scale: float = 7.5,
                         num_steps: int = 50, progress: bool = True, rule: str = "nearest") -> Tensor:
    """Guided DDIM from x_T with c_src for the first n_src steps and c_tgt after: x_0.

    ``unconds``: one null embedding, or the N per-step null embeddings of null-text inversion;
    n_src = :func:`switch_schedule` (N, r, ``rule``).
    """
    n_src = switch_schedule(num_steps, ratio, rule)
    conds = [cond_source] * n_src + [cond_target] * (num_steps - n_src)
    return sample_with_null_text(unet, scheduler, x_T, conds, unconds, guidance_scale, num_steps, progress)


@torch.no_grad()
def edit(world, image, source_prompt: str, target_prompt: str | list[str], ratio: float = 0.8,
         guidance_scale: float = 7.5, num_steps: int = 50, inversion: Inversion | None = None,
         progress: bool = True, rule: str = "nearest") -> Tensor:
    """Edit a real image from ``source_prompt`` to ``target_prompt``: [B, C, H, W] in [0, 1].

    ``image``: one image, a tensor [C, H, W] (or [1, C, H, W]) in [0, 1] of any float dtype,
    or any source :func:`smoothlib.images.load_images` reads; NaN or inf is refused, and a
    tensor not of the world's channels and size is converted (as for :func:`invert`).
    Several target prompts give several edits of the same inversion (one per target). Pass
    ``inversion`` (an NTI of ``image`` with ``source_prompt``) to reuse it across ratios and
    targets; ``image`` is then not used, and the inversion's guidance scale and number of
    steps replace the arguments. ``rule``: how n_src is rounded (:func:`switch_schedule`).
    """
    switch_schedule(num_steps, ratio, rule)  # checks the ratio and the rule before any inversion
    if inversion is None:
        image = as_world_images(image, world, "the image")
        if image.shape[0] != 1:
            raise ValueError(f"edit works on one image; got a batch of {image.shape[0]}")
        inversion = invert(world, image, source_prompt, "nti", guidance_scale, num_steps, progress=progress)
    guidance_scale, num_steps = inversion.guidance_scale, inversion.num_steps  # what the nulls were fitted for
    if inversion.x_T.shape[0] != 1:
        raise ValueError(f"edit works on one image; got an inversion of {inversion.x_T.shape[0]}")
    targets = [target_prompt] if isinstance(target_prompt, str) else list(target_prompt)
    k = len(targets)
    cond_target = world.encode_prompt(targets)
    x_T = inversion.x_T.expand(k, *inversion.x_T.shape[1:])
    x_0 = prompt_switch_sample(world.unet, world.scheduler, x_T, inversion.cond, cond_target,
                               inversion.unconds, ratio, guidance_scale, num_steps, progress, rule)
    return world.decode(x_0)
