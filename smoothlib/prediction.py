"""From a UNet's output to the one-step predictions x0_hat and eps_hat.

Forward process (Ho et al. 2020):

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I),

with alpha_bar_t = ``scheduler.alphas_cumprod[t]``. A network trained with

* ``"epsilon"`` predicts eps:  x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t);
* ``"v_prediction"`` predicts v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
  (Salimans & Ho 2022):  x0_hat = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v,
  eps_hat = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v;
* ``"sample"`` predicts x_0 itself:  eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t).

``x0_hat`` is the quantity Smooth Diffusion regularizes (Guo et al. 2024, section 3.2).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}: smoothlib handles "
                         f"{', '.join(PREDICTION_TYPES)}")
    return prediction_type


def prediction_type_of(scheduler) -> str:
    """The prediction type a diffusers scheduler was configured with, checked."""
    return check_prediction_type(getattr(scheduler.config, "prediction_type", "epsilon"))


def per_sample(values: Tensor | float, like: Tensor) -> Tensor:
    """A scalar, or one value per sample (shape [B]), in ``like``'s device and dtype, shaped [B, 1, ..., 1]
    to broadcast over ``like`` [B, ...] (a scalar stays 0-d)."""
    values = torch.as_tensor(values, device=like.device, dtype=like.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def alpha_bar_at(alphas_cumprod: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """alpha_bar_t gathered for timestep(s) ``t`` and shaped to broadcast over ``like``."""
    t = torch.as_tensor(t, device=alphas_cumprod.device, dtype=torch.long)
    return per_sample(alphas_cumprod[t].to(like.device, like.dtype), like)


def x0_and_eps(model_output: Tensor, x_t: Tensor, alpha_bar_t: Tensor | float,
               prediction_type: str = "epsilon") -> tuple[Tensor, Tensor]:
    """Return (x0_hat, eps_hat) from a model output at noise level alpha_bar_t.

    ``alpha_bar_t`` is a float, a 0-d tensor, or one value per sample (shape [B]).
    Differentiable in all inputs (the regularizer differentiates through it).
    """
    check_prediction_type(prediction_type)
    alpha_bar = per_sample(alpha_bar_t, x_t)
    sa, s1a = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s1a * model_output) / sa, model_output
    if prediction_type == "v_prediction":
        return sa * x_t - s1a * model_output, s1a * x_t + sa * model_output
    return model_output, (x_t - sa * model_output) / s1a


def predict_x0(model_output: Tensor, x_t: Tensor, alpha_bar_t: Tensor | float,
               prediction_type: str = "epsilon") -> Tensor:
    """x0_hat(x_t, t) from the model output (see the module docstring for the formulas)."""
    return x0_and_eps(model_output, x_t, alpha_bar_t, prediction_type)[0]


def training_target(x_0: Tensor, eps: Tensor, alpha_bar_t: Tensor | float,
                    prediction_type: str = "epsilon") -> Tensor:
    """What the network should output for (x_0, eps) at level alpha_bar_t: eps, v or x_0."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x_0
    alpha_bar = per_sample(alpha_bar_t, x_0)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x_0
