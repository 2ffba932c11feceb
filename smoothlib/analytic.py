"""A world where the optimal denoiser is known in closed form: Gaussian data.

For data x_0 ~ N(mu, diag(s^2)), the noisy sample
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is Gaussian too, and the
minimum-mean-squared-error noise prediction is, per dimension,

    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - alpha_bar_t) (x_t - sqrt(alpha_bar_t) mu)
                                  / (alpha_bar_t s^2 + 1 - alpha_bar_t).

Used as a reference (DDIM round trips must reconstruct with it) and in the
course as the one world whose DDIM map x_T -> x_0 is affine, hence perfectly smooth.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from .prediction import per_sample


class GaussianDenoiser(torch.nn.Module):
    """The exact epsilon-predictor for N(mu, diag(s^2)) data, called like a diffusers UNet.

    Args:
        alphas_cumprod: the scheduler's alpha_bar table.
        mu, s: the data mean and standard deviation (floats, or tensors that
            broadcast over one sample, e.g. shape [C, H, W] or [D]).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, mu=0.0, s=1.0):
        super().__init__()
        self.register_buffer("alpha_bar", alphas_cumprod.double())
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("s", torch.as_tensor(s, dtype=torch.float64))
        # a parameter, so that code that asks a model for its device and dtype works
        self._dtype_anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def forward(self, x_t, t, encoder_hidden_states=None):
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)
        alpha_bar = per_sample(self.alpha_bar[t], x_t)
        mu, s = self.mu.to(x_t.dtype), self.s.to(x_t.dtype)
        eps = (1 - alpha_bar).sqrt() * (x_t - alpha_bar.sqrt() * mu) / (alpha_bar * s**2 + 1 - alpha_bar)
        return SimpleNamespace(sample=eps)
