"""Null-text inversion checked exactly on a conditional Gaussian world, and end to end on tiny worlds."""
from types import SimpleNamespace

import pytest
import torch

from smoothlib.ddim import ddim_invert, ddim_sample
from smoothlib.inversion import (ReconstructionReport, invert, null_text_inversion, reconstruct,
                                 reconstruction_protocol, sample_with_null_text)
from smoothlib import testing
from smoothlib.testing import tiny_scheduler

SHAPE, DIM, S = (1, 4, 4), 8, 0.5


class ConditionalGaussian(torch.nn.Module):
    """Exact eps-predictor for x_0 ~ N(mu(c), S^2 I) with mu(c) = mean over tokens of c, projected.

    eps*(x_t, t, c) = sqrt(1 - a) (x_t - sqrt(a) mu(c)) / (a S^2 + 1 - a), a = alpha_bar_t, so
    guidance changes the sample and the null embedding steers it: the guided mean is
    mu(null) + w (mu(c) - mu(null)).
    """

    def __init__(self, alphas_cumprod, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("alpha_bar", alphas_cumprod.float())
        numel = SHAPE[0] * SHAPE[1] * SHAPE[2]
        self.proj = torch.nn.Parameter(torch.randn(DIM, numel, generator=g) / DIM**0.5, requires_grad=False)

    def mu(self, c):
        return (c.mean(dim=1) @ self.proj).reshape(-1, *SHAPE)

    def forward(self, x_t, t, encoder_hidden_states):
        a = self.alpha_bar[torch.as_tensor(t).long().reshape(-1)].reshape(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x_t - a.sqrt() * self.mu(encoder_hidden_states)) / (a * S**2 + 1 - a)
        return SimpleNamespace(sample=eps)


@pytest.fixture(scope="module")
def analytic():
    scheduler = tiny_scheduler()
    model = ConditionalGaussian(scheduler.alphas_cumprod)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 3, DIM, generator=g)
    uncond = torch.randn(1, 3, DIM, generator=g)
    x_0 = model.mu(cond) + S * torch.randn(2, *SHAPE, generator=g)  # one sample of each prompt's data
    return SimpleNamespace(model=model, scheduler=scheduler, cond=cond, uncond=uncond, x_0=x_0)


def _err(a, b):
    return (a - b).pow(2).mean().item()


def test_nti_fixes_what_guided_ddim_reconstruction_breaks(analytic):
    m, sch, c, u, x_0 = analytic.model, analytic.scheduler, analytic.cond, analytic.uncond, analytic.x_0
    x_T = ddim_invert(m, sch, x_0, c, None, 1.0, 50, progress=False)
    # unguided reconstruction is nearly exact (the denoiser is exact); guidance 7.5 breaks it
    assert _err(ddim_sample(m, sch, x_T, c, None, 1.0, 50, progress=False), x_0) < 2e-3
    ddim_error = _err(ddim_sample(m, sch, x_T, c, u, 7.5, 50, progress=False), x_0)
    inv = null_text_inversion(m, sch, x_0, c, u, 7.5, 50, progress=False)
    assert torch.equal(inv.x_T, x_T) and len(inv.null_embeddings) == 50
    assert inv.null_embeddings[0].shape == (2, 3, DIM) and inv.losses.shape == (50, 2)
    nti_error = _err(sample_with_null_text(m, sch, inv.x_T, c, inv.null_embeddings, 7.5, 50, False), x_0)
    assert ddim_error > 20            # measured 28.6
    assert nti_error < 0.05           # measured 0.013: over 1000x smaller
    # NTI works by pulling mu(null) onto mu(c), where guidance has no effect
    final_gap = _err(m.mu(inv.null_embeddings[-1]), m.mu(c))
    assert final_gap < 0.01 * _err(m.mu(u), m.mu(c))


@pytest.mark.parametrize("epsilon", [1e-5, 0.14])  # 0.14: at step 0 image 1 stops early, image 0 does not
def test_batched_nti_equals_one_image_at_a_time(analytic, epsilon):
    m, sch = ConditionalGaussian(analytic.scheduler.alphas_cumprod).double(), analytic.scheduler
    both = null_text_inversion(m, sch, analytic.x_0, analytic.cond, analytic.uncond, 7.5, 10,
                               early_stop_epsilon=epsilon, progress=False)
    if epsilon > 1e-3:
        assert both.losses[0, 1] < epsilon < both.losses[0, 0]
    for i in range(2):
        one = null_text_inversion(m, sch, analytic.x_0[i:i + 1], analytic.cond[i:i + 1], analytic.uncond, 7.5, 10,
                                  early_stop_epsilon=epsilon, progress=False)
        for a, b in zip(both.null_embeddings, one.null_embeddings):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-9)  # Adam rescales gradients: float64 noise only


def test_early_stop_keeps_the_embedding(analytic):
    # with a huge tolerance every step stops after its first Adam update
    m, sch = analytic.model, analytic.scheduler
    inv = null_text_inversion(m, sch, analytic.x_0, analytic.cond, analytic.uncond, 7.5, 5,
                              early_stop_epsilon=1e9, progress=False)
    nulls = [analytic.uncond] + inv.null_embeddings
    steps = [b - a for a, b in zip(nulls, nulls[1:])]
    for i, d in enumerate(steps):  # Adam's first step moves each element by lr (sign of its gradient)
        assert d.abs().max().item() == pytest.approx(1e-2 * (1 - i / 100), rel=1e-3)


def test_shared_nti_reconstructs_both_images_of_one_prompt(analytic):
    m, sch = analytic.model, analytic.scheduler
    c = analytic.cond[:1].expand(2, -1, -1)
    g = torch.Generator().manual_seed(2)
    x_0 = m.mu(c) + S * torch.randn(2, *SHAPE, generator=g)
    x_T = ddim_invert(m, sch, x_0, c, None, 1.0, 50, progress=False)
    ddim_error = _err(ddim_sample(m, sch, x_T, c, analytic.uncond, 7.5, 50, progress=False), x_0)
    inv = null_text_inversion(m, sch, x_0, c, analytic.uncond, 7.5, 50, shared=True, progress=False)
    assert inv.null_embeddings[0].shape == (1, 3, DIM) and inv.losses.shape == (50, 1)
    rec = sample_with_null_text(m, sch, inv.x_T, c, inv.null_embeddings, 7.5, 50, False)
    for i in range(2):
        assert _err(rec[i], x_0[i]) < 0.05 < ddim_error / 100


def test_sampler_with_one_uncond_equals_ddim_sample(analytic):
    m, sch, c, u = analytic.model, analytic.scheduler, analytic.cond, analytic.uncond
    x_T = torch.randn(2, *SHAPE)
    torch.testing.assert_close(sample_with_null_text(m, sch, x_T, c, u, 7.5, 7, False),
                               ddim_sample(m, sch, x_T, c, u, 7.5, 7, progress=False))
    with pytest.raises(ValueError, match="same num_steps"):
        sample_with_null_text(m, sch, x_T, c, [u] * 6, 7.5, 7, False)


def test_half_precision_unet_runs_in_float32_and_is_given_back_exactly(analytic):
    import copy
    half = ConditionalGaussian(analytic.scheduler.alphas_cumprod).half()
    before = {k: v.clone() for k, v in half.state_dict().items()}
    full = copy.deepcopy(half).float()   # the same (float16-rounded) weights, in float32
    args = (analytic.scheduler, analytic.x_0, analytic.cond, analytic.uncond, 7.5, 4)
    inv_half, inv_full = null_text_inversion(half, *args, progress=False), null_text_inversion(full, *args, progress=False)
    # the fit ran in float32 on exactly the float32 copy's weights: identical results
    for a, b in zip(inv_half.null_embeddings, inv_full.null_embeddings):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    x_half = sample_with_null_text(half, analytic.scheduler, inv_half.x_T, inv_half.cond, inv_half.null_embeddings, 7.5, 4, False)
    x_full = sample_with_null_text(full, analytic.scheduler, inv_full.x_T, inv_full.cond, inv_full.null_embeddings, 7.5, 4, False)
    assert x_half.dtype == torch.float32 and torch.equal(x_half, x_full)
    # afterwards the model is float16 again, bit for bit
    for k, v in half.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- tiny worlds


def tiny_world(pixels=False):
    if pixels:
        return testing.tiny_world(in_channels=1, name="tiny-pixels")
    return testing.tiny_world(vae=True)


@pytest.fixture(scope="module")
def latent_world():
    return tiny_world()


@pytest.mark.parametrize("pixels", [False, True])
def test_invert_and_reconstruct_in_a_tiny_world(pixels, latent_world):
    world = tiny_world(True) if pixels else latent_world
    images = torch.rand(2, 1, 8, 8) if pixels else torch.rand(2, 3, 16, 16)
    for method in ("ddim", "nti"):
        inv = invert(world, images, ["a cat", "a dog"], method, 7.5, 3, progress=False)
        assert inv.x_T.shape == (2, *world.latent_shape) and inv.method == method
        rec = reconstruct(world, inv, progress=False)
        assert rec.shape == images.shape and 0 <= rec.min() and rec.max() <= 1
    again = reconstruct(world, invert(world, images, ["a cat", "a dog"], "nti", 7.5, 3, progress=False),
                        progress=False)
    assert torch.equal(rec, again)
    with pytest.raises(ValueError, match="unknown inversion method"):
        invert(world, images, "a cat", "p2p")


def test_nti_lowers_the_trajectory_loss_in_a_tiny_world(latent_world):
    world = latent_world
    images = torch.rand(1, 3, 16, 16)
    inv = invert(world, images, "a cat", "nti", 7.5, 4, progress=False)
    ddim = invert(world, images, "a cat", "ddim", 7.5, 4, progress=False)
    x_nti = sample_with_null_text(world.unet, world.scheduler, inv.x_T, inv.cond, inv.null_embeddings, 7.5, 4, False)
    x_ddim = sample_with_null_text(world.unet, world.scheduler, ddim.x_T, ddim.cond, ddim.uncond, 7.5, 4, False)
    x_0 = ddim.trajectory[0]
    assert _err(x_nti, x_0) < _err(x_ddim, x_0)


def test_reconstruction_protocol_in_a_tiny_world(latent_world):
    world = latent_world
    images = torch.rand(3, 3, 16, 16)
    report = reconstruction_protocol(world, images, ["a", "b", "c"], guidance_scale=7.5, num_steps=2,
                                     batch_size=2, keep_images=True, progress=False)
    assert isinstance(report, ReconstructionReport)
    assert list(report.per_image) == ["vae", "ddim", "nti"]
    assert report.per_image["nti"]["ssim"].shape == (3,)
    assert report.reconstructions["ddim"].shape == images.shape
    assert "| nti |" in report.table()
    assert set(report.means()["vae"]) == {"mse", "psnr", "ssim"}
