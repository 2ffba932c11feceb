"""smoothlib: Smooth Diffusion (Guo et al., CVPR 2024, arXiv:2312.04410) made small and testable.

    import smoothlib as sl
    world = sl.load_world("sd15")                    # or "toy": the bundled CPU model
    world.load_smooth_lora()                          # the released Smooth LoRA, applied exactly
    frames = sl.slerp(noise_a, noise_b, torch.linspace(0, 1, 11))
    x0 = sl.ddim_sample(world.unet, world.scheduler, x_T, cond, uncond, guidance_scale=7.5)

The package's rooms (symbols as in docs/notation.md):

- the diffusion core: ``prediction`` (x0_hat from a model output), ``ddim``, ``interpolate``
  (slerp), ``attention`` (kernels with a double backward);
- the regularizer: ``regularizer`` (r, two estimators, and its settings), ``running_mean`` (a and
  L_reg), ``train_step`` (one step of L = L_mse + lambda L_reg);
- downstream tasks: ``metrics`` (ISTD), ``walks``, ``inversion``, ``editing``, ``drag`` (drag editing);
- worlds: ``world`` (the World dataclass), ``worlds`` (load_world by name), ``sd`` (Stable
  Diffusion 1.x), ``hub`` (Hub errors, the safetensors-only policy), ``lora/`` (adapter control,
  file formats, loading and saving);
- the trainer: ``train`` (the loop), ``config``, ``checks``, ``run_dir``, ``train_state``,
  ``checkpoint``, ``data``; ``images``, ``device``, ``viz``;
- ``toy/`` (the bundled world, its classifier and evaluation), ``lesson`` (per-world notebook
  settings), ``testing`` (tiny components for tests and benchmarks), ``analytic``, ``cost``;
- ``evaluate/`` (the ``smoothlib-eval`` command: Table 1 and Table 2 for any world and LoRA),
  ``export`` (walks as GIF and MP4).
"""
# the diffusion core
from .attention import check_double_backward, double_backward_attention
from .ddim import ddim_invert, ddim_sample, ddim_schedule, ddim_step, model_output
from .interpolate import lerp, slerp
from .prediction import predict_x0, training_target, x0_and_eps
# the regularizer and one training step
from .regularizer import ESTIMATORS, StepVariationRegularizer, default_step, finite_difference_variation, step_variation
from .train_step import StepLosses, training_step
# downstream tasks
from .drag import DragRecord, drag_edit
from .editing import edit, prompt_switch_sample, switch_schedule
from .inversion import (Inversion, ReconstructionReport, invert, null_text_inversion, reconstruct,
                        reconstruction_protocol, sample_with_null_text)
from .metrics import (adjacent_distances, istd, istd_per_walk, lpips_distance, mse, pdv, ppl, psnr,
                      reconstruction_metrics, ssim)
from .walks import ISTDResult, etas, image_walk, istd_protocol, noise_walk, prompt_walk, sample_frames, seeded_noise
# worlds, LoRA, devices, images
from .device import default_device, default_dtype, float32_note, in_float32, resolve
from .images import PreparedImage, load_images, prepare_image
from .lora import (SMOOTH_LORA_REPO, LoraLoadError, LoraReport, attach_lora, attention_projections, load_smooth_lora,
                   lora_disabled, lora_enabled, lora_parameters, remove_lora, save_lora, set_lora_strength)
from .worlds import HubAccessError, World, load_world
# the course's one toy-world helper: the caption of a digit, for prompts in either world's notebooks
from .toy import digit_prompt

__version__ = "0.1.0"

__all__ = [
    "check_double_backward", "double_backward_attention",
    "ddim_invert", "ddim_sample", "ddim_schedule", "ddim_step", "model_output",
    "lerp", "slerp",
    "predict_x0", "training_target", "x0_and_eps",
    "ESTIMATORS", "StepVariationRegularizer", "default_step", "finite_difference_variation", "step_variation",
    "StepLosses", "training_step",
    "DragRecord", "drag_edit", "edit", "prompt_switch_sample", "switch_schedule",
    "Inversion", "ReconstructionReport", "invert", "null_text_inversion", "reconstruct",
    "reconstruction_protocol", "sample_with_null_text",
    "adjacent_distances", "istd", "istd_per_walk", "lpips_distance", "mse", "pdv", "ppl", "psnr",
    "reconstruction_metrics", "ssim",
    "ISTDResult", "etas", "image_walk", "istd_protocol", "noise_walk", "prompt_walk", "sample_frames", "seeded_noise",
    "default_device", "default_dtype", "float32_note", "in_float32", "resolve",
    "PreparedImage", "load_images", "prepare_image",
    "SMOOTH_LORA_REPO", "LoraLoadError", "LoraReport", "attach_lora", "attention_projections", "load_smooth_lora",
    "lora_disabled", "lora_enabled", "lora_parameters", "remove_lora", "save_lora", "set_lora_strength",
    "HubAccessError", "World", "load_world",
    "digit_prompt",
]
