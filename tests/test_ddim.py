"""Our DDIM against diffusers' schedulers, and a round trip with an exact denoiser."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

import smoothlib as sl
from smoothlib.testing import tiny_scheduler, tiny_unet

from smoothlib.analytic import GaussianDenoiser

TOL = 1e-5  # float32 UNet, same operations in a different order: relative to the largest value


def close(a, b, tol=TOL):
    return ((a - b).abs().max() / b.abs().max()).item() < tol


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=1, sample_size=16)


def _emb(b=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)


def reference_sample(unet, scheduler, x, cond, uncond, w, n):
    """The loop every diffusers SD pipeline runs, with DDIMScheduler.step."""
    scheduler.set_timesteps(n)
    for t in scheduler.timesteps:
        both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond.expand_as(cond), cond])).sample
        u, c = both.chunk(2)
        x = scheduler.step(u + w * (c - u), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sampling_matches_diffusers(unet, prediction_type, spacing):
    sched = DDIMScheduler.from_config(tiny_scheduler(prediction_type).config, timestep_spacing=spacing)
    cond, uncond = _emb()
    x_T = torch.randn(2, 4, 16, 16)
    ours = sl.ddim_sample(unet, sched, x_T, cond, uncond, guidance_scale=5.0, num_steps=10, progress=False)
    with torch.no_grad():
        ref = reference_sample(unet, DDIMScheduler.from_config(sched.config), x_T, cond, uncond, 5.0, 10)
    assert close(ours, ref)


def test_single_step_matches_diffusers(unet):
    sched = tiny_scheduler()
    ref_sched = tiny_scheduler()
    ref_sched.set_timesteps(25)
    x = torch.randn(1, 4, 16, 16)
    out = torch.randn_like(x)
    for s in sl.ddim_schedule(sched, 25)[:3] + sl.ddim_schedule(sched, 25)[-1:]:
        ours = sl.ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev)
        ref = ref_sched.step(out, s.t, x, eta=0.0).prev_sample
        assert (ours - ref).abs().max() < 1e-6


def test_inversion_matches_ddim_inverse_scheduler(unet):
    sched = tiny_scheduler()
    inv = DDIMInverseScheduler.from_config(sched.config)
    cond, _ = _emb(b=1)
    x0 = torch.randn(1, 4, 16, 16)
    ours = sl.ddim_invert(unet, sched, x0, cond, num_steps=10, progress=False)
    inv.set_timesteps(10)
    x = x0.clone()
    with torch.no_grad():
        for t in inv.timesteps:
            x = inv.step(unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
    assert close(ours, x)


def test_batched_sampling_equals_one_by_one(unet):
    sched = tiny_scheduler()
    cond, uncond = _emb()
    x_T = torch.randn(2, 4, 16, 16)
    batch = sl.ddim_sample(unet, sched, x_T, cond, uncond, guidance_scale=3.0, num_steps=5, progress=False)
    for i in range(2):
        one = sl.ddim_sample(unet, sched, x_T[i:i + 1], cond[i:i + 1], uncond, 3.0, 5, progress=False)
        assert close(one, batch[i:i + 1])


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_round_trip_with_exact_denoiser(spacing):
    """Invert then sample with the closed-form optimal denoiser of Gaussian data:
    the DDIM ODE discretisation error is small at 50 steps and shrinks with more steps."""
    sched = DDIMScheduler.from_config(tiny_scheduler().config, timestep_spacing=spacing)
    model = GaussianDenoiser(sched.alphas_cumprod, mu=0.3, s=0.5)
    x0 = (0.3 + 0.5 * torch.randn(4, 1, 8, 8)).double()
    cond = torch.zeros(1, 1, 1, dtype=torch.float64)
    errors = {}
    for n in (10, 50, 200):
        x_T = sl.ddim_invert(model, sched, x0, cond, num_steps=n, progress=False)
        rec = sl.ddim_sample(model, sched, x_T, cond, guidance_scale=1.0, num_steps=n, progress=False)
        errors[n] = ((rec - x0) ** 2).mean().sqrt().item()
    assert errors[50] < 0.02, errors
    assert errors[200] < errors[50] < errors[10], errors


def test_trajectory_lengths(unet):
    sched = tiny_scheduler()
    cond, _ = _emb(b=1)
    x0 = torch.randn(1, 4, 16, 16)
    x_T, traj = sl.ddim_invert(unet, sched, x0, cond, num_steps=4, progress=False, return_trajectory=True)
    assert len(traj) == 5 and torch.equal(traj[0], x0) and torch.equal(traj[-1], x_T)


def test_unsupported_prediction_type_is_a_clear_error(unet):
    sched = tiny_scheduler()
    sched.register_to_config(prediction_type="flow")
    cond, _ = _emb(b=1)
    with pytest.raises(ValueError, match="unsupported prediction_type 'flow'"):
        sl.ddim_sample(unet, sched, torch.randn(1, 4, 16, 16), cond, num_steps=2, progress=False)


def test_bad_embeddings_are_clear_errors(unet):
    sched = tiny_scheduler()
    with pytest.raises(ValueError, match="3 prompt embeddings for a batch of 2"):
        sl.ddim_sample(unet, sched, torch.randn(2, 4, 16, 16), torch.randn(3, 8, 32), num_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"\[B, L, D\]"):
        sl.ddim_sample(unet, sched, torch.randn(2, 4, 16, 16), torch.randn(8, 32), num_steps=2, progress=False)
    with pytest.raises(TypeError, match="alphas_cumprod"):
        sl.ddim_schedule(object(), 10)
