import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class GaussianDenoiser(torch.nn.Module):
    """The exact epsilon-predictor for data x_0 ~ N(mu, s^2 I), in closed form.

    x_t = sqrt(a) x_0 + sqrt(1 - a) eps is Gaussian, so
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
    Called like a UNet: ``(x, t, encoder_hidden_states=...)`` -> object with ``.sample``.
    """

    def __init__(self, alphas_cumprod, mu=0.3, s=0.5):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.double())
        self.mu, self.s = mu, s
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, encoder_hidden_states=None):
        a = self.abar[t].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)

        class Out:
            sample = eps
        return Out
