"""The Step-wise Variation Regularizer (smoothlib/regularizer.py, smoothlib/running_mean.py; the equations in
docs/regularizer.md): r against an explicit Jacobian and by gradcheck, the running mean against a hand
computation and the release's formula, its state across save/load and two processes."""
import io
import math
import os
import socket

import pytest
import torch

from smoothlib.prediction import x0_and_eps
from smoothlib.regularizer import StepVariationRegularizer, step_variation


def _x0_hat_through_forward_process(net, x0, eps, alpha_bar_t):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, then x0_hat from an eps-predicting net."""
    alpha_bar = alpha_bar_t.reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return x0_and_eps(net(x_t), x_t, alpha_bar_t)[0]


def _small_net():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 3, padding=1),
    ).double()


# ---- step_variation against explicit Jacobians -------------------------------------------------

def test_linear_map_equals_norm_of_A_transpose_y():
    B, shape = 3, (2, 3, 3)
    D = math.prod(shape)
    A = torch.randn(D, D, dtype=torch.float64)
    eps = torch.randn(B, *shape, dtype=torch.float64, requires_grad=True)
    x0_hat = (eps.flatten(1) @ A.T).reshape(B, *shape)
    y = torch.randn(B, *shape, dtype=torch.float64)
    r = step_variation(x0_hat, eps, y)
    expected = (y.flatten(1) @ A).norm(dim=1)  # rows of A^T y
    assert r.shape == (B,)
    torch.testing.assert_close(r, expected, rtol=1e-13, atol=0)


def test_nonlinear_network_matches_explicit_jacobian():
    net = _small_net()
    B, shape = 2, (2, 4, 4)
    x0 = torch.randn(B, *shape, dtype=torch.float64)
    alpha_bar_t = torch.tensor([0.9, 0.2], dtype=torch.float64)
    eps = torch.randn(B, *shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(B, *shape, dtype=torch.float64)
    r = step_variation(_x0_hat_through_forward_process(net, x0, eps, alpha_bar_t), eps, y)
    for i in range(B):
        def f(e, i=i):
            return _x0_hat_through_forward_process(net, x0[i:i + 1], e, alpha_bar_t[i:i + 1]).flatten()
        J = torch.autograd.functional.jacobian(f, eps[i:i + 1].detach()).reshape(-1, y[i].numel())
        torch.testing.assert_close(r[i], (J.T @ y[i].flatten()).norm(), rtol=1e-12, atol=0)


def test_double_backward_is_correct_by_gradcheck():
    net = _small_net()
    x0 = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    alpha_bar_t = torch.tensor([0.5], dtype=torch.float64)
    e0 = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    y = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    w = net[0].weight

    def r_of(weight):
        eps = e0.clone().requires_grad_()
        alpha_bar = alpha_bar_t.reshape(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        h = torch.nn.functional.conv2d(x_t, weight, net[0].bias, padding=1)
        out = net[2](torch.tanh(h))
        return step_variation(x0_and_eps(out, x_t, alpha_bar_t)[0], eps, y)

    assert torch.autograd.gradcheck(r_of, (w.detach().clone().requires_grad_(),))


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_inputs_give_clear_errors():
    eps = torch.randn(2, 1, 4, 4, requires_grad=True)
    x0_hat = 2 * eps
    with pytest.raises(ValueError, match="y has shape"):
        step_variation(x0_hat, eps, torch.randn(2, 1, 4, 3))
    with pytest.raises(ValueError, match="eps does not require grad"):
        step_variation(x0_hat.detach(), eps.detach(), torch.randn(2, 1, 4, 4))
    other = torch.randn(2, 1, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on eps"):
        step_variation(3 * other, eps, torch.randn(2, 1, 4, 4))
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="every"):
            StepVariationRegularizer(every=k)
    with pytest.raises(ValueError, match="sub_batch"):
        StepVariationRegularizer(sub_batch=0)
    with pytest.raises(ValueError, match="one value per sample"):
        StepVariationRegularizer()(x0_hat, eps, torch.tensor(0.5))


# ---- the module against the release's formula ----------------------------------------------------

def _release_step_regularize(fake_img, latents, mean_reg_variation, sqrt_one_minus_alpha_prod, noise):
    """The authors' ``step_regularize`` transcribed, with the random direction passed in."""
    noise = noise / math.sqrt(fake_img.shape[1] * fake_img.shape[2] * fake_img.shape[3])
    noise = noise * sqrt_one_minus_alpha_prod
    grad, = torch.autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    reg_variations = torch.sqrt(grad.pow(2).sum(3).sum(2).sum(1))
    variation_mean = mean_reg_variation + 0.01 * (reg_variations.mean() - mean_reg_variation)
    return (reg_variations - variation_mean).pow(2).mean(), variation_mean.detach(), reg_variations


def test_module_matches_release_values_and_gradients_over_steps():
    net = _small_net()
    reg = StepVariationRegularizer().double()
    a_release = 0.0
    for step in range(3):
        x0 = torch.randn(4, 2, 4, 4, dtype=torch.float64)
        alpha_bar_t = torch.rand(4, dtype=torch.float64) * 0.9 + 0.05
        eps = torch.randn(4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
        x0_hat = _x0_hat_through_forward_process(net, x0, eps, alpha_bar_t)

        g = torch.Generator().manual_seed(step)
        penalty, r = reg(x0_hat, eps, alpha_bar_t, generator=g)
        params = [net[0].weight, net[0].bias, net[2].weight]  # net[2].bias does not move r
        grads = torch.autograd.grad(penalty, params, retain_graph=True)

        noise = torch.randn(x0_hat.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        p_ref, a_release, r_ref = _release_step_regularize(
            x0_hat, eps, a_release, (1 - alpha_bar_t).sqrt().reshape(-1, 1, 1, 1), noise)
        grads_ref = torch.autograd.grad(p_ref, params)

        torch.testing.assert_close(r, r_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(penalty, p_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(reg.a, a_release.to(reg.a.dtype), rtol=1e-12, atol=0)
        for gr, gref in zip(grads, grads_ref):
            torch.testing.assert_close(gr, gref, rtol=1e-10, atol=1e-14)
    assert not reg.a.requires_grad and reg.a.item() > 0


def test_penalty_keeps_gradient_through_the_fresh_running_mean():
    """d L_reg / d r_i = 2/B (r_i - a_new) - 2 decay/B^2 sum_j (r_j - a_new): the a-term is present."""
    reg = StepVariationRegularizer()
    eps = torch.randn(3, 1, 2, 2, requires_grad=True)
    scale = torch.tensor([1.0, 2.0, 3.0]).reshape(-1, 1, 1, 1).requires_grad_()
    x0_hat = scale * eps
    penalty, r = reg(x0_hat, eps, torch.full((3,), 0.5))
    (g,) = torch.autograd.grad(penalty, scale)
    a_new = reg.a
    dr = 2 / 3 * (r - a_new) - 2 * 0.01 / 9 * (r - a_new).sum()
    # r_i = |scale_i| * ||y_i||, so d r_i / d scale_i = ||y_i|| = r_i / scale_i
    torch.testing.assert_close(g.flatten(), (dr * r / scale.flatten()).detach(), rtol=1e-5, atol=1e-7)


# ---- state -----------------------------------------------------------------------------------------

def test_running_mean_and_step_survive_save_and_load():
    reg = StepVariationRegularizer(every=3)
    for _ in range(4):
        eps = torch.randn(2, 1, 4, 4, requires_grad=True)
        reg.due()
        reg(torch.sin(eps) * 3, eps, torch.rand(2))
    buf = io.BytesIO()
    torch.save(reg.state_dict(), buf)
    buf.seek(0)
    fresh = StepVariationRegularizer(every=3)
    fresh.load_state_dict(torch.load(buf))
    assert set(reg.state_dict()) == {"running_mean.a", "step"}
    assert fresh.a.item() == reg.a.item() != 0
    assert fresh.step.item() == 4
    assert [fresh.due() for _ in range(3)] == [False, False, True]  # steps 4, 5, 6


# ---- gradients on a tiny UNet with LoRA, default attention -------------------------------------

def test_penalty_gradients_reach_lora_only_under_default_attention(lora_unet):
    from smoothlib.testing import tiny_scheduler
    from smoothlib.train_step import training_step

    unet = lora_unet
    reg = StepVariationRegularizer()
    out = training_step(unet, torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32), tiny_scheduler(), reg,
                        generator=torch.Generator().manual_seed(0))
    out.reg.backward()
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    frozen = {n: p for n, p in unet.named_parameters() if "lora_" not in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora.values())
    assert sum(p.grad.abs().sum() for p in lora.values()) > 0
    assert all(p.grad is None for p in frozen.values())



# ---- averaging across processes ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different data per rank
        synced, local = StepVariationRegularizer(sync=True), StepVariationRegularizer(sync=False)
        for _ in range(3):
            eps = torch.randn(2, 1, 4, 4, requires_grad=True)
            x0_hat = (rank + 1.0) * torch.tanh(eps)
            alpha_bar_t = torch.rand(2)
            synced(x0_hat, eps, alpha_bar_t, generator=torch.Generator().manual_seed(7))
            local(x0_hat, eps, alpha_bar_t, generator=torch.Generator().manual_seed(7))
        torch.save({"synced": synced.a.clone(), "local": local.a.clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_running_mean_is_shared_across_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a0, a1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    assert a0["synced"].item() == a1["synced"].item()
    assert a0["local"].item() != a1["local"].item()
    # the synchronised a is the running mean of the two ranks' batch means (linear update)
    torch.testing.assert_close(a0["synced"], (a0["local"] + a1["local"]) / 2, rtol=1e-6, atol=0)


def test_running_mean_per_t_range_matches_a_hand_computation():
    reg = StepVariationRegularizer(t_buckets=4, num_train_timesteps=1000)
    assert reg.a.shape == (4,)
    r = torch.tensor([1.0, 3.0, 10.0, 0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([10, 200, 990, 260])  # buckets 0, 0, 3, 1
    penalty = reg.penalty(r, t)
    # first visit: each bucket starts at its batch mean; bucket 2 unseen stays 0
    a = torch.tensor([2.0, 0.5, 0.0, 10.0], dtype=torch.float64)
    assert torch.allclose(reg.a.double(), a) and reg.seen.tolist() == [True, True, False, True]
    assert penalty.item() == pytest.approx(((1 - 2) ** 2 + (3 - 2) ** 2 + 0 + 0) / 4)
    r2 = torch.tensor([4.0, 2.0], dtype=torch.float64)
    penalty2 = reg.penalty(r2, torch.tensor([0, 700]))  # buckets 0 (seen: EMA) and 2 (fresh)
    a0 = 2.0 + 0.01 * (4.0 - 2.0)
    assert reg.a[0].item() == pytest.approx(a0) and reg.a[2].item() == pytest.approx(2.0)
    assert penalty2.item() == pytest.approx(((4.0 - a0) ** 2 + 0) / 2)
    fresh = StepVariationRegularizer(t_buckets=4, num_train_timesteps=1000)
    fresh.load_state_dict(reg.state_dict())
    assert torch.equal(fresh.a, reg.a) and torch.equal(fresh.seen, reg.seen)


def test_relative_penalty_per_t_range_matches_a_hand_computation():
    reg = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000, relative=True)
    r = torch.tensor([1.0, 3.0, 10.0, 30.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([10, 200, 700, 900])  # buckets 0, 0, 1, 1: means 2 and 20
    penalty = reg.penalty(r, t)
    # ((1-2)/2)^2 = ((3-2)/2)^2 = ((10-20)/20)^2 = ((30-20)/20)^2 = 0.25: both ranges weigh the same
    assert penalty.item() == pytest.approx(0.25)
    absolute = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000).penalty(r, t)
    assert absolute.item() == pytest.approx((1 + 1 + 100 + 100) / 4)
    # the denominator is detached: d/dr_0 of mean(((r - a) / a)^2) with a = mean of its bucket
    (grad,) = torch.autograd.grad(penalty, r)
    a0 = 2.0
    expected = 2 * ((1 - a0) / a0) * (1 - 0.5) / a0 / 4 + 2 * ((3 - a0) / a0) * (-0.5) / a0 / 4
    assert grad[0].item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="t_buckets > 1"):
        StepVariationRegularizer(relative=True)


def test_log_ratio_penalty_matches_a_hand_computation():
    reg = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000, log_ratio=True)
    r = torch.tensor([1.0, 3.0, 10.0, 30.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([10, 200, 700, 900])  # buckets 0, 0, 1, 1: first batch, so a = the bucket means 2 and 20
    penalty = reg.penalty(r, t)
    # log(1/2)^2 = log(10/20)^2 and log(3/2)^2 = log(30/20)^2: the ranges weigh the same
    assert penalty.item() == pytest.approx((math.log(0.5) ** 2 + math.log(1.5) ** 2) / 2)
    # the gradient flows through a as well (a = the bucket's mean of r on its first batch, not detached)
    leaf = r.detach().clone().requires_grad_()
    a = torch.stack([leaf[:2].mean(), leaf[:2].mean(), leaf[2:].mean(), leaf[2:].mean()])
    hand = (leaf.log() - a.log()).pow(2).mean()
    (grad,) = torch.autograd.grad(penalty, r)
    (expected,) = torch.autograd.grad(hand, leaf)
    assert torch.allclose(grad, expected)
    # to first order it is the relative penalty: nearly equal for r within 1 % of a
    near = torch.tensor([0.99, 1.01, 9.9, 10.1], dtype=torch.float64)
    relative = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000, relative=True).penalty(near, t)
    log = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000, log_ratio=True).penalty(near, t)
    assert log.item() == pytest.approx(relative.item(), rel=1e-3)
    with pytest.raises(ValueError, match="t_buckets > 1"):
        StepVariationRegularizer(log_ratio=True)
    with pytest.raises(ValueError, match="choose one"):
        StepVariationRegularizer(t_buckets=2, relative=True, log_ratio=True)


def test_t_min_penalises_only_the_kept_timesteps():
    # samples below t_min move neither a nor L_reg: the penalty equals the one on the kept samples alone
    r = torch.tensor([5.0, 1.0, 3.0, 10.0, 30.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 10, 200, 700, 900])
    kept = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000, relative=True, t_min=10)
    alone = StepVariationRegularizer(t_buckets=2, num_train_timesteps=1000, relative=True)
    penalty, reference = kept.penalty(r, t), alone.penalty(r[1:], t[1:])
    assert penalty.item() == pytest.approx(reference.item()) == pytest.approx(0.25)
    assert torch.equal(kept.a, alone.a)
    (grad,) = torch.autograd.grad(penalty, r)
    assert grad[0].item() == 0.0 and grad[1].item() != 0.0
    # a bucket that has only excluded samples (its a still 0) gives no 0 / 0, in float32 too
    fresh = StepVariationRegularizer(t_buckets=10, num_train_timesteps=1000, relative=True, t_min=300)
    r32 = torch.tensor([0.7, 0.2, 0.4], requires_grad=True)
    penalty = fresh.penalty(r32, torch.tensor([50, 400, 450]))
    assert torch.isfinite(penalty) and penalty.item() == pytest.approx(((0.2 - 0.3) / 0.3) ** 2)
    (grad,) = torch.autograd.grad(penalty, r32)
    assert torch.isfinite(grad).all() and grad[0].item() == 0.0
    # with one running mean, a batch with no kept sample leaves a and gives L_reg = 0
    one = StepVariationRegularizer(t_min=500)
    assert one.penalty(torch.tensor([1.0, 2.0]), torch.tensor([0, 499])).item() == 0.0
    assert one.a.item() == 0.0
    with pytest.raises(ValueError, match="timesteps t"):
        one.penalty(torch.ones(2))
    with pytest.raises(ValueError, match="t_min"):
        StepVariationRegularizer(t_min=1000, num_train_timesteps=1000)


def test_running_mean_per_t_range_needs_t():
    reg = StepVariationRegularizer(t_buckets=2)
    with pytest.raises(ValueError, match="timesteps t"):
        reg.penalty(torch.ones(3))
    with pytest.raises(ValueError, match="t_buckets"):
        StepVariationRegularizer(t_buckets=0)
