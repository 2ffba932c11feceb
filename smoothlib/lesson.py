"""What the course's notebooks show in each world: prompts, guidance, step counts and example images.

The notebooks are written once for both worlds; :func:`lesson_settings` is the
only place that knows the difference. In the toy world the examples are held-out
handwritten digits and digit prompts; in Stable Diffusion they are scikit-image's
sample photographs (a cat, a cup of coffee) and photo prompts. ``smoke=True``
(CI) shrinks the step and walk counts so that a notebook runs in seconds.
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
    istd_pairs: int
    """Walks per model when a notebook measures ISTD."""
    images: Tensor
    """Two example images [2, C, H, W] in [0, 1] at the world's size, for inversion and image walks."""
    captions: list[str]
    edit_source: str
    edit_target: str
    """Editing: the caption of ``images[edit_image]`` and what to turn it into."""
    edit_image: int = 0


def lesson_settings(world, smoke: bool = False) -> LessonSettings:
    """The examples for ``world`` (a :class:`smoothlib.worlds.World`); see the module docstring."""
    steps = 10 if smoke else 50
    if world.vae is None:  # the toy world: digits
        from .toy import TOY_GUIDANCE, digit_prompt, load_heldout_digits

        images, labels = load_heldout_digits()
        sevens, threes = (labels == 7).nonzero().flatten(), (labels == 3).nonzero().flatten()
        pick = torch.stack([threes[0], sevens[1]])
        return LessonSettings(prompt=digit_prompt(7), prompt_b=digit_prompt(1), prompt_variant=digit_prompt(7, 2),
                              guidance_scale=TOY_GUIDANCE,
                              num_steps=steps, istd_pairs=4 if smoke else 10, images=images[pick],
                              captions=[digit_prompt(3), digit_prompt(7)], edit_source=digit_prompt(3),
                              edit_target=digit_prompt(8))
    from skimage import data as samples

    from .images import load_images

    images, _ = load_images([samples.chelsea(), samples.coffee()], world)
    return LessonSettings(prompt="a photograph of a cat sitting on a sofa",
                          prompt_b="a photograph of a dog sitting on a sofa",
                          prompt_variant="a photograph of a cat sitting on a red sofa", guidance_scale=7.5, num_steps=steps,
                          istd_pairs=2 if smoke else 20, images=images,
                          captions=["a photograph of a cat", "a photograph of a cup of coffee"],
                          edit_source="a photograph of a cat", edit_target="a photograph of a tiger")
