"""One training step of Smooth Diffusion: denoising loss plus the Step-wise Variation Regularizer.

Guo et al., "Smooth Diffusion", CVPR 2024, eq. 9:

    L = L_mse + lambda * L_reg,   L_mse = mean((target - model(x_t, t, c))^2),
    L_reg = mean((r - a)^2),      r = || d <x0_hat, sqrt(1 - alpha_bar_t) y> / d eps ||,

with t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
The function returns the loss; the caller calls ``backward()`` and the optimizer.

With a regularizer built with ``estimator="finite_difference"``, r is the
first-order r = || x0_hat(eps + s u) - x0_hat(eps) || / s instead
(:func:`smoothlib.regularizer.finite_difference_variation`): the shifted
samples join the batch of the one UNet call, and the loss needs only an
ordinary backward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import double_backward_attention
from .prediction import alpha_bar_at, prediction_type_of, training_target, x0_and_eps
from .regularizer import StepVariationRegularizer, finite_difference_variation

Tensor = torch.Tensor


@dataclass
class StepLosses:
    """What one step produced. ``loss`` carries the graph; the rest is for logging."""
    loss: Tensor          # L = L_mse + lambda * k * L_reg
    mse: Tensor           # L_mse
    reg: Tensor           # L_reg (0 when the regularizer did not run on this step)
    r: Tensor | None      # per-sample r of the regularized samples, detached; None if not run
    t: Tensor             # the sampled timesteps, shape [B]


def _randn(shape, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) drawn on the generator's device (reproducible), then moved next to ``like``."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _compute_dtype(unet, like: Tensor) -> torch.dtype:
    """The dtype the UNet computes in: autocast's if it is on, else its weights'."""
    if torch.is_autocast_enabled(like.device.type):
        return torch.get_autocast_dtype(like.device.type)
    weight = next((p for p in unet.parameters() if p.is_floating_point()), None)
    return weight.dtype if weight is not None else like.dtype


def training_step(unet, x_0: Tensor, encoder_hidden_states: Tensor, scheduler,
                  regularizer: StepVariationRegularizer | None = None, lambda_reg: float = 1.0,
                  *, generator: torch.Generator | None = None, noise_offset: float = 0.0,
                  attention: str = "math") -> StepLosses:
    """Losses of one Smooth Diffusion step on clean latents ``x_0`` [B, C, H, W].

    ``encoder_hidden_states`` [B, L, D] are the prompt embeddings; ``scheduler``
    a diffusers noise scheduler (its ``alphas_cumprod``, ``num_train_timesteps``
    and ``prediction_type``: epsilon, v_prediction or sample). ``regularizer``
    None or ``lambda_reg == 0`` gives a plain LoRA step with no double backward.
    ``noise_offset`` adds ``noise_offset * N(0, I)`` of shape [B, C, 1, 1] to eps
    (offset noise, Guttenberg 2023); ``generator`` makes t, eps and y reproducible;
    ``attention`` picks the double-backward kernel of the exact estimator
    ("math" or "classic", see :func:`smoothlib.attention.double_backward_attention`);
    the finite-difference estimator runs under whatever kernel is active.
    Every call counts one step on the regularizer (its lazy schedule),
    whatever lambda. Random draws come in the recipe's order: t, eps, offset,
    then y.

    Recipe (exact estimator; the finite-difference one in brackets):

    1. t ~ U{0, ..., T-1}; eps ~ N(0, I) (+ offset), a fresh leaf that requires
       grad on the regularized samples [no grad needed];
    2. x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
       [and u = sqrt(1 - alpha_bar_t) y, the shifted x_t + sqrt(1 - alpha_bar_t) s u
       of the regularized samples, ||shift|| = h ||x_t||];
    3. model output, for the regularized samples under an attention kernel
       with a double backward, for the others (lazy step, sub-batch) as usual
       [one call on the batch and the shifted samples, any kernel];
    4. L_mse = mean((output - target)^2), target = eps, v or x_0 by prediction type;
    5. x0_hat from the output (regularized samples) [and from the shifted output];
    6. r = || d <x0_hat, y> / d eps ||  (:func:`smoothlib.regularizer.step_variation`)
       [r = || x0_hat_shifted - x0_hat || / s, :func:`~smoothlib.regularizer.finite_difference_variation`];
    7. a <- a + 0.01 (mean(r) - a);  L_reg = mean((r - a)^2)  (a per t range with ``t_buckets``;
       ((r - a) / a)^2 with ``relative``);
    8. L = L_mse + lambda * k * L_reg  (k = the lazy interval, 1 by default).
    """
    if lambda_reg < 0:
        raise ValueError(f"lambda_reg must be >= 0, got {lambda_reg}")
    if x_0.ndim != 4:
        raise ValueError(f"x_0 must be a batch of latents [B, C, H, W], got shape {tuple(x_0.shape)}")
    if encoder_hidden_states.shape[0] != x_0.shape[0]:
        raise ValueError(f"encoder_hidden_states has batch size {encoder_hidden_states.shape[0]}, "
                         f"x_0 has {x_0.shape[0]}: pass one prompt embedding per latent")
    prediction_type = prediction_type_of(scheduler)
    B = x_0.shape[0]
    due = regularizer.due() if regularizer is not None else False
    n = regularizer.batch_size(B) if (due and lambda_reg > 0) else 0
    finite_difference = n > 0 and regularizer.estimator == "finite_difference"

    # 1. timesteps and noise
    T = scheduler.config.num_train_timesteps
    t_device = generator.device if generator is not None else x_0.device
    t = torch.randint(0, T, (B,), generator=generator, device=t_device).to(x_0.device)
    eps = _randn(x_0.shape, generator, x_0)
    if noise_offset:
        eps = eps + noise_offset * _randn((B, x_0.shape[1], 1, 1), generator, x_0)
    eps_reg, eps_plain = eps[:n].detach().requires_grad_(not finite_difference), eps[n:]

    # 2. forward process
    alphas_cumprod = scheduler.alphas_cumprod.to(x_0.device)
    alpha_bar = alpha_bar_at(alphas_cumprod, t, x_0)
    eps_all = torch.cat([eps_reg, eps_plain])
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps_all

    if finite_difference:
        abar_reg = alphas_cumprod[t[:n]]
        u = regularizer.draw_y(x_t[:n], abar_reg, generator)
        x_shift, s = regularizer.shift(x_t[:n], u, abar_reg, _compute_dtype(unet, x_t))
        x_shift = x_shift.to(x_t.dtype)

    # 3. model output: samples [:n] regularized, [n:] plain
    out_reg = out_plain = out_shift = None
    if finite_difference:  # one call: the batch, then the shifted copies of its first n samples
        both = unet(torch.cat([x_t, x_shift]), torch.cat([t, t[:n]]),
                    encoder_hidden_states=torch.cat([encoder_hidden_states, encoder_hidden_states[:n]])).sample
        out_reg, out_plain, out_shift = both[:n], both[n:B], both[B:]
    elif n > 0:
        with double_backward_attention(unet, attention):
            out_reg = unet(x_t[:n], t[:n], encoder_hidden_states=encoder_hidden_states[:n]).sample
    if n < B and not finite_difference:
        out_plain = unet(x_t[n:], t[n:], encoder_hidden_states=encoder_hidden_states[n:]).sample
    output = torch.cat([o for o in (out_reg, out_plain) if o is not None])

    # 4. denoising loss
    target = training_target(x_0, eps_all.detach(), alpha_bar, prediction_type)
    mse = F.mse_loss(output.float(), target.float())
    if n == 0:
        zero = mse.new_zeros(())
        return StepLosses(loss=mse, mse=mse, reg=zero, r=None, t=t)

    # 5. to 7. x0_hat of the regularized samples, their step variation r, running mean a, penalty
    if finite_difference:  # predictions in x_t's precision: half-precision outputs are upcast first
        x0_hat, _ = x0_and_eps(out_reg.to(x_t.dtype), x_t[:n], alpha_bar[:n], prediction_type)
        x0_shift, _ = x0_and_eps(out_shift.to(x_t.dtype), x_shift, alpha_bar[:n], prediction_type)
        r = finite_difference_variation(x0_hat, x0_shift, s)
        reg = regularizer.penalty(r, t[:n])
    else:  # from out_reg, not a slice of a concatenation, so that r's gradient never enters the plain forward
        x0_hat, _ = x0_and_eps(out_reg, x_t[:n], alpha_bar[:n], prediction_type)
        reg, r = regularizer(x0_hat, eps_reg, alphas_cumprod[t[:n]], generator, t[:n])

    # 8. total loss
    loss = mse + lambda_reg * regularizer.weight * reg
    return StepLosses(loss=loss, mse=mse, reg=reg, r=r.detach(), t=t)
