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
ordinary backward. The two estimators are two short paths, :func:`_exact` and
:func:`_first_order`, after the steps they share.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import double_backward_attention
from .device import draw_device, randn
from .prediction import alpha_bar_at, prediction_type_of, training_target, x0_and_eps
from .regularizer import StepVariationRegularizer, direction, shifted_input

Tensor = torch.Tensor


@dataclass
class StepLosses:
    """What one step produced. ``loss`` carries the graph; the rest is for logging."""
    loss: Tensor          # L = L_mse + lambda * k * L_reg
    mse: Tensor           # L_mse
    reg: Tensor           # L_reg (0 when the regularizer did not run on this step)
    r: Tensor | None      # per-sample r of the regularized samples, detached; None if not run
    t: Tensor             # the sampled timesteps, shape [B]



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

    1. t ~ U{0, ..., T-1}; eps ~ N(0, I) (+ offset);
    2. x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, from a fresh leaf eps that
       requires grad on the n regularized samples [and u = sqrt(1 - alpha_bar_t) y, the
       shifted x_t + sqrt(1 - alpha_bar_t) s u of those samples, ||shift|| = h ||x_t||];
    3. model output, for the regularized samples under an attention kernel
       with a double backward, for the others (lazy step, sub-batch) as usual
       [one call on the batch and the shifted samples, any kernel];
    4. x0_hat from the output (regularized samples) [and from the shifted output];
    5. r = || d <x0_hat, y> / d eps ||  (:func:`smoothlib.regularizer.step_variation`)
       [r = || x0_hat_shifted - x0_hat || / s, :func:`~smoothlib.regularizer.finite_difference_variation`];
    6. a <- a + 0.01 (mean(r) - a);  L_reg = mean((r - a)^2)  (a per t range with ``t_buckets``;
       ((r - a) / a)^2 with ``relative``; :mod:`smoothlib.running_mean`);
    7. L_mse = mean((output - target)^2), target = eps, v or x_0 by prediction type;
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

    # 1. timesteps and noise
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (B,), generator=generator, device=draw_device(generator, x_0)).to(x_0.device)
    eps = randn(x_0.shape, generator, x_0)
    if noise_offset:
        eps = eps + noise_offset * randn((B, x_0.shape[1], 1, 1), generator, x_0)
    alpha_bar = alpha_bar_at(scheduler.alphas_cumprod.to(x_0.device), t, x_0)
    target = training_target(x_0, eps, alpha_bar, prediction_type)

    # 2. to 6. by estimator
    if n == 0:  # a plain step
        x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
        output = unet(x_t, t, encoder_hidden_states=encoder_hidden_states).sample
        reg = r = None
    else:
        path = _exact if regularizer.estimator == "exact" else _first_order
        output, reg, r = path(unet, regularizer, x_0, eps, t, alpha_bar, encoder_hidden_states, n,
                              prediction_type, generator, attention)

    # 7. and 8. denoising loss, total loss
    mse = F.mse_loss(output.float(), target.float())
    if r is None:
        return StepLosses(loss=mse, mse=mse, reg=mse.new_zeros(()), r=None, t=t)
    loss = mse + lambda_reg * regularizer.weight * reg
    return StepLosses(loss=loss, mse=mse, reg=reg, r=r.detach(), t=t)


def _exact(unet, regularizer, x_0, eps, t, alpha_bar, cond, n, prediction_type, generator, attention):
    """Steps 2 to 6 with r by a vector-Jacobian product: (model output [B], L_reg, r [n]).

    The n regularized samples get their own UNet call under a double-backward kernel, and
    x0_hat comes from that output (not from a slice of a concatenation), so that r's
    gradient never enters the plain samples' forward.
    """
    eps_reg = eps[:n].detach().requires_grad_()
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * torch.cat([eps_reg, eps[n:]])
    with double_backward_attention(unet, attention):
        out_reg = unet(x_t[:n], t[:n], encoder_hidden_states=cond[:n]).sample
    outputs = [out_reg]
    if n < x_0.shape[0]:
        outputs.append(unet(x_t[n:], t[n:], encoder_hidden_states=cond[n:]).sample)
    x0_hat, _ = x0_and_eps(out_reg, x_t[:n], alpha_bar[:n], prediction_type)
    reg, r = regularizer.exact(x0_hat, eps_reg, alpha_bar[:n].flatten(), generator, t[:n])
    return torch.cat(outputs), reg, r


def _first_order(unet, regularizer, x_0, eps, t, alpha_bar, cond, n, prediction_type, generator, attention):
    """Steps 2 to 6 with r by a forward difference: (model output [B], L_reg, r [n]).

    One UNet call on the batch and the shifted copies of its first n samples; predictions
    are formed in x_t's precision (half-precision outputs upcast first). ``attention`` is unused:
    an ordinary backward works under any kernel.
    """
    B = x_0.shape[0]
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
    alpha_bar_n = alpha_bar[:n].flatten()
    u = direction(x_t[:n], alpha_bar_n, generator)
    x_shift, s = shifted_input(x_t[:n], u, alpha_bar_n, regularizer.h, _compute_dtype(unet, x_t))
    x_shift = x_shift.to(x_t.dtype)
    both = unet(torch.cat([x_t, x_shift]), torch.cat([t, t[:n]]),
                encoder_hidden_states=torch.cat([cond, cond[:n]])).sample
    output, out_shift = both[:B], both[B:]
    x0_hat, _ = x0_and_eps(output[:n].to(x_t.dtype), x_t[:n], alpha_bar[:n], prediction_type)
    x0_shift, _ = x0_and_eps(out_shift.to(x_t.dtype), x_shift, alpha_bar[:n], prediction_type)
    reg, r = regularizer.first_order(x0_hat, x0_shift, s, t[:n])
    return output, reg, r


def _compute_dtype(unet, like: Tensor) -> torch.dtype:
    """The dtype the UNet computes in: autocast's if it is on, else its weights'."""
    if torch.is_autocast_enabled(like.device.type):
        return torch.get_autocast_dtype(like.device.type)
    weight = next((p for p in unet.parameters() if p.is_floating_point()), None)
    return weight.dtype if weight is not None else like.dtype
