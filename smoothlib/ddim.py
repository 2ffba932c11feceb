"""Deterministic DDIM: one step, the sampling loop with classifier-free guidance, and inversion.

DDIM (Song, Meng & Ermon 2021, eq. 12 with sigma = 0) moves a sample from noise
level alpha_bar_t to alpha_bar_s through the one-step predictions:

    x_s = sqrt(alpha_bar_s) x0_hat(x_t, t) + sqrt(1 - alpha_bar_s) eps_hat(x_t, t).

Sampling runs it with s < t along the scheduler's timesteps. DDIM inversion
(Dhariwal & Nichol 2021; Mokady et al. 2023) runs the same update backwards,
s > t, evaluating the network at the *target* timestep on the current sample,
which is exact only in the limit of many steps. Classifier-free guidance (Ho &
Salimans 2022) mixes the conditional and unconditional outputs:

    out = out_uncond + w (out_cond - out_uncond).

The timestep rule follows diffusers' ``DDIMScheduler`` exactly: the step after
``t`` is ``t - T // N`` (T training steps, N inference steps), and a step below
0 lands on ``final_alpha_cumprod`` (1, or alpha_bar_0 when the scheduler was
configured with ``set_alpha_to_one=False``, as Stable Diffusion is).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .prediction import prediction_type_of, x0_and_eps

Tensor = torch.Tensor


def ddim_step(x: Tensor, model_output: Tensor, alpha_bar_from: Tensor | float,
              alpha_bar_to: Tensor | float, prediction_type: str = "epsilon") -> Tensor:
    """Move ``x`` from level alpha_bar_from to alpha_bar_to (either direction), eta = 0."""
    x0_hat, eps_hat = x0_and_eps(model_output, x, alpha_bar_from, prediction_type)
    a_to = torch.as_tensor(alpha_bar_to, device=x.device, dtype=x.dtype)
    return a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps_hat


@dataclass
class DDIMStep:
    """One step of the chain: evaluate the network at ``t``; go from level ``alpha_bar_t`` to ``alpha_bar_prev``."""
    t: int
    alpha_bar_t: float
    alpha_bar_prev: float


def ddim_schedule(scheduler, num_steps: int) -> list[DDIMStep]:
    """The N steps of a DDIM chain, from most to least noisy, for any diffusers scheduler.

    Uses the scheduler's own ``set_timesteps`` (so its spacing and offset) and
    its ``alphas_cumprod``.
    """
    if not hasattr(scheduler, "alphas_cumprod"):
        raise TypeError(f"{type(scheduler).__name__} has no alphas_cumprod; pass a diffusers "
                        "noise scheduler such as DDIMScheduler")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler.set_timesteps(num_steps)
    alpha_bar = scheduler.alphas_cumprod.double().cpu()
    final = getattr(scheduler, "final_alpha_cumprod", alpha_bar[0])
    stride = scheduler.config.num_train_timesteps // num_steps
    steps = []
    for t in scheduler.timesteps.tolist():
        t = int(t)
        prev = t - stride
        steps.append(DDIMStep(t, float(alpha_bar[t]), float(alpha_bar[prev]) if prev >= 0 else float(final)))
    return steps


def model_output(unet, x: Tensor, t: int, cond: Tensor, uncond: Tensor | None = None,
                 guidance_scale: float = 1.0) -> Tensor:
    """The UNet's (guided) output at timestep ``t``.

    ``cond`` has shape [B, L, D] or [1, L, D]; ``uncond`` the same (or None for
    no guidance). With guidance the conditional and unconditional halves run
    in one batch.
    """
    t_in = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    cond = cond.expand(x.shape[0], *cond.shape[1:])
    if uncond is None or guidance_scale == 1.0:
        out = unet(x, t_in, encoder_hidden_states=cond).sample
    else:
        uncond = uncond.expand(x.shape[0], *uncond.shape[1:])
        both = unet(torch.cat([x, x]), torch.cat([t_in, t_in]),
                    encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_u, out_c = both.chunk(2)
        out = out_u + guidance_scale * (out_c - out_u)
    return out[:, : x.shape[1]]  # drop a learned-variance half, if the model has one


def prepare_inputs(unet, x: Tensor, cond: Tensor, uncond: Tensor | None):
    """(x, cond, uncond) on the UNet's device and dtype, the embeddings checked: [B or 1, L, D]."""
    p = next(unet.parameters())
    x = x.to(p.device, p.dtype)
    cond = cond.to(p.device, p.dtype)
    uncond = None if uncond is None else uncond.to(p.device, p.dtype)
    if cond.ndim != 3:
        raise ValueError(f"prompt embeddings must have shape [B, L, D], got {tuple(cond.shape)}")
    if cond.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{cond.shape[0]} prompt embeddings for a batch of {x.shape[0]} latents")
    return x, cond, uncond


@torch.no_grad()
def ddim_sample(unet, scheduler, x_T: Tensor, cond: Tensor, uncond: Tensor | None = None,
                guidance_scale: float = 7.5, num_steps: int = 50, progress: bool = True,
                return_trajectory: bool = False):
    """Generate x_0 from the caller's initial noise x_T by deterministic DDIM.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (or anything with its call signature).
        scheduler: a diffusers scheduler; its ``alphas_cumprod``, spacing and
            ``prediction_type`` are used.
        x_T: initial noise [B, C, H, W]; the same noise gives the same image.
        cond, uncond: prompt embeddings [B or 1, L, D]; ``uncond`` None disables guidance.
        guidance_scale: classifier-free guidance weight w (1 = no guidance).
        num_steps: number of DDIM steps N.
        progress: show a tqdm bar.
        return_trajectory: also return [x_T, ..., x_0].
    """
    prediction_type = prediction_type_of(scheduler)
    x, cond, uncond = prepare_inputs(unet, x_T, cond, uncond)
    trajectory = [x]
    for s in tqdm(ddim_schedule(scheduler, num_steps), desc="DDIM sampling", disable=not progress, leave=False):
        out = model_output(unet, x, s.t, cond, uncond, guidance_scale)
        x = ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev, prediction_type)
        trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


@torch.no_grad()
def ddim_invert(unet, scheduler, x_0: Tensor, cond: Tensor, uncond: Tensor | None = None,
                guidance_scale: float = 1.0, num_steps: int = 50, progress: bool = True,
                return_trajectory: bool = False):
    """DDIM inversion: run the update backwards from a clean latent x_0 to x_T.

    The same steps as :func:`ddim_sample`, taken in reverse: from level
    ``alpha_bar_prev`` up to ``alpha_bar_t``, with the network evaluated at
    ``t`` on the current (less noisy) sample. Stable Diffusion practice (Mokady et al. 2023)
    inverts with the conditional prompt and guidance 1. Returns x_T
    (and, if asked, the trajectory [x_0, ..., x_T] that null-text inversion follows).
    """
    prediction_type = prediction_type_of(scheduler)
    x, cond, uncond = prepare_inputs(unet, x_0, cond, uncond)
    trajectory = [x]
    for s in tqdm(ddim_schedule(scheduler, num_steps)[::-1], desc="DDIM inversion", disable=not progress, leave=False):
        out = model_output(unet, x, s.t, cond, uncond, guidance_scale)
        x = ddim_step(x, out, s.alpha_bar_prev, s.alpha_bar_t, prediction_type)
        trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
