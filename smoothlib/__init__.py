"""smoothlib: Smooth Diffusion (Guo et al., CVPR 2024, arXiv:2312.04410) made small and testable.

    import smoothlib as sl
    x0 = sl.ddim_sample(unet, scheduler, x_T, cond, uncond, guidance_scale=7.5)
    frames = sl.slerp(noise_a, noise_b, torch.linspace(0, 1, 11))
"""
from .ddim import ddim_invert, ddim_sample, ddim_schedule, ddim_step, model_output
from .device import default_device, default_dtype, resolve
from .interpolate import lerp, slerp
from .prediction import predict_x0, training_target, x0_and_eps

__version__ = "0.1.0"

__all__ = [
    "ddim_invert", "ddim_sample", "ddim_schedule", "ddim_step", "model_output",
    "default_device", "default_dtype", "resolve",
    "lerp", "slerp",
    "predict_x0", "training_target", "x0_and_eps",
]
