"""What the course's notebooks show in each world: prompts, guidance, example images and how much to compute.

The notebooks are written once for both worlds; :func:`lesson_settings` is the
only place that knows the difference. In the toy world the examples are held-out
handwritten digits and digit prompts; in Stable Diffusion they are scikit-image's
sample photographs (a cat, a cup of coffee) and photo prompts.

Three scales:

- ``smoke=True`` (CI): a few steps and walks, so that a notebook runs in seconds;
- the course (default): in the toy world the full protocol on a CPU; in Stable
  Diffusion sizes chosen so that each notebook takes at most 10 minutes on a Colab
  T4 and each explorer button at most 30 s (20 DDIM steps, fewer walks and frames,
  5 inner steps of null-text inversion). The evaluations these sizes cost were
  counted (``python scripts/count_unet_calls.py``; docs/stable_diffusion.md);
- ``paper=True``: the paper's protocol in Stable Diffusion (50 DDIM steps, 500 ISTD
  walks, 10 inner steps): hours on a T4, for a reproduction, not a lesson.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class LessonSettings:
    prompt: str
    """The prompt of noise walks and single samples."""
    prompt_b: str
    """A second prompt, for prompt walks."""
    prompt_variant: str
    """``prompt`` reworded a little: the same subject, which should give nearly the same image."""
    guidance_scale: float
    num_steps: int
    """DDIM steps of every sample, inversion and edit."""
    istd_pairs: int
    """Walks per model when notebook 03 measures ISTD."""
    images: Tensor
    """Two example images [2, C, H, W] in [0, 1] at the world's size, for inversion and image walks."""
    captions: list[str]
    edit_source: str
    edit_target: str
    """Editing: the caption of ``images[edit_image]`` and what to turn it into."""
    edit_image: int = 0
    istd_steps: int = 0
    """DDIM steps of notebook 03's ISTD walks (0: ``num_steps``); the toy world's 25 are the README's Table 1's."""
    walks: int = 8
    """Walks per model in notebook 01's jump detector."""
    sweep_pairs: int = 6
    """Noise pairs of notebook 01's perturbation sweep."""
    prompt_noises: int = 4
    """Noises of notebook 01's prompt-change comparison."""
    walk_frames: int = 11
    """Frames of the walks in notebook 04."""
    nti_inner_steps: int = 10
    """Null-text inversion's inner optimisation steps per sampling step (Mokady et al.: 10)."""
    inversion_images: int = 4
    """Images notebook 05 inverts per model."""
    edit_ratios: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    r_repeats: int = 8
    """Draws of r per timestep in notebook 02's scale fact."""
    train_steps: int = 200
    """Steps of notebook 02's live training."""
    explorer_frames: int = 21
    explorer_steps: int = 50
    """Frames and DDIM steps behind notebook 07's walk scrubber (recomputed on a button)."""
    push_sigmas: int = 26
    """Precomputed noise pushes behind notebook 07's sigma slider."""

    def __post_init__(self):
        self.istd_steps = self.istd_steps or self.num_steps


def lesson_settings(world, smoke: bool = False, paper: bool = False) -> LessonSettings:
    """The examples and sizes for ``world`` (a :class:`smoothlib.world.World`); see the module docstring."""
    if smoke and paper:
        raise ValueError("smoke=True and paper=True ask for opposite scales; pick one")
    if world.vae is None:  # the toy world: digits
        from .toy import TOY_GUIDANCE, digit_prompt, load_heldout_digits

        images, labels = load_heldout_digits()
        sevens, threes = (labels == 7).nonzero().flatten(), (labels == 3).nonzero().flatten()
        pick = torch.stack([threes[0], sevens[1]])
        sizes = dict(num_steps=50, istd_pairs=10, istd_steps=25)
        if smoke:
            sizes = dict(num_steps=10, istd_pairs=4, walks=2, sweep_pairs=2, walk_frames=9, inversion_images=2,
                         edit_ratios=(0.5, 0.8), r_repeats=1, train_steps=5, explorer_frames=9, explorer_steps=10,
                         push_sigmas=6)
        return LessonSettings(prompt=digit_prompt(7), prompt_b=digit_prompt(1), prompt_variant=digit_prompt(7, 2),
                              guidance_scale=TOY_GUIDANCE, images=images[pick],
                              captions=[digit_prompt(3), digit_prompt(7)], edit_source=digit_prompt(3),
                              edit_target=digit_prompt(8), **sizes)
    from skimage import data as samples

    from .images import load_images

    images, _ = load_images([samples.chelsea(), samples.coffee()], world)
    if smoke:
        sizes = dict(num_steps=10, istd_pairs=2, walks=2, sweep_pairs=2, prompt_noises=2, walk_frames=5,
                     nti_inner_steps=2, inversion_images=2, edit_ratios=(0.5, 0.8), r_repeats=1, train_steps=5,
                     explorer_frames=5, explorer_steps=5, push_sigmas=4)
    elif paper:
        sizes = dict(num_steps=50, istd_pairs=500, walks=20, sweep_pairs=6, walk_frames=11, nti_inner_steps=10,
                     inversion_images=2, r_repeats=8, train_steps=100, explorer_frames=21, explorer_steps=50)
    else:
        sizes = dict(num_steps=20, istd_pairs=5, walks=2, sweep_pairs=2, prompt_noises=2, walk_frames=7,
                     nti_inner_steps=5, inversion_images=2, edit_ratios=(0.5, 0.6, 0.7, 0.8, 0.9),
                     r_repeats=2, train_steps=100, explorer_frames=7, explorer_steps=14, push_sigmas=11)
    return LessonSettings(prompt="a photograph of a cat sitting on a sofa",
                          prompt_b="a photograph of a dog sitting on a sofa",
                          prompt_variant="a photograph of a cat sitting on a red sofa", guidance_scale=7.5,
                          images=images, captions=["a photograph of a cat", "a photograph of a cup of coffee"],
                          edit_source="a photograph of a cat", edit_target="a photograph of a tiger", **sizes)
