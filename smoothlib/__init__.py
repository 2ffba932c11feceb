"""smoothlib: Smooth Diffusion (Guo et al., CVPR 2024, arXiv:2312.04410) made small and testable.

    import smoothlib as sl
    x0 = sl.ddim_sample(unet, scheduler, x_T, cond, uncond, guidance_scale=7.5)
    frames = sl.slerp(noise_a, noise_b, torch.linspace(0, 1, 11))
"""
from .attention import check_double_backward, double_backward_attention
from .ddim import ddim_invert, ddim_sample, ddim_schedule, ddim_step, model_output
from .device import default_device, default_dtype, float32_note, in_float32, resolve
from .editing import edit, prompt_switch_sample, switch_schedule
from .images import PreparedImage, load_images, prepare_image
from .interpolate import lerp, slerp
from .inversion import (Inversion, ReconstructionReport, invert, null_text_inversion, reconstruct,
                        reconstruction_protocol, sample_with_null_text)
from .metrics import (adjacent_distances, istd, istd_per_walk, lpips_distance, mse, pdv, ppl, psnr,
                      reconstruction_metrics, ssim)
from .lora import (SMOOTH_LORA_REPO, LoraLoadError, LoraReport, attach_lora, attention_projections, load_smooth_lora,
                   lora_disabled, lora_enabled, lora_parameters, save_smooth_lora, set_smooth_lora_strength)
from .prediction import predict_x0, training_target, x0_and_eps
from .regularizer import ESTIMATORS, StepVariationRegularizer, default_step, finite_difference_variation, step_variation
from .train_step import StepLosses, training_step
from .classifier import frechet_distance, prompt_adherence
from .toy import TOY_GUIDANCE, digit_prompt, load_toy_components
from .walks import ISTDResult, etas, image_walk, istd_protocol, noise_walk, prompt_walk, sample_frames, seeded_noise
from .worlds import HubAccessError, World, load_world

__version__ = "0.1.0"

__all__ = [
    "check_double_backward", "double_backward_attention",
    "ESTIMATORS", "StepVariationRegularizer", "default_step", "finite_difference_variation", "step_variation", "StepLosses", "training_step",
    "ddim_invert", "ddim_sample", "ddim_schedule", "ddim_step", "model_output",
    "default_device", "default_dtype", "float32_note", "in_float32", "resolve",
    "lerp", "slerp",
    "edit", "prompt_switch_sample", "switch_schedule",
    "PreparedImage", "load_images", "prepare_image",
    "Inversion", "ReconstructionReport", "invert", "null_text_inversion", "reconstruct",
    "reconstruction_protocol", "sample_with_null_text",
    "adjacent_distances", "istd", "istd_per_walk", "lpips_distance", "mse", "pdv", "ppl", "psnr",
    "reconstruction_metrics", "ssim",
    "frechet_distance", "prompt_adherence", "TOY_GUIDANCE", "digit_prompt", "load_toy_components",
    "ISTDResult", "etas", "image_walk", "istd_protocol", "noise_walk", "prompt_walk", "sample_frames", "seeded_noise",
    "SMOOTH_LORA_REPO", "LoraLoadError", "LoraReport", "attach_lora", "attention_projections", "load_smooth_lora",
    "lora_disabled", "lora_enabled", "lora_parameters", "save_smooth_lora", "set_smooth_lora_strength",
    "HubAccessError", "World", "load_world",
    "predict_x0", "training_target", "x0_and_eps",
]
