"""The first-order (finite-difference) estimator of the step variation, against independent references."""
import copy
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from smoothlib.analytic import GaussianDenoiser
from smoothlib.regularizer import (StepVariationRegularizer, default_step, direction, finite_difference_variation,
                                  shifted_input)
from smoothlib.testing import tiny_scheduler
from smoothlib.train_step import training_step

FD = "finite_difference"



@pytest.fixture
def lora_unet(lora_unet):
    """The shared LoRA UNet in training mode (gradient checkpointing acts only there)."""
    return lora_unet.train()


def _batch(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, 5, 32, generator=g)


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


def _lora_grads(unet):
    return {n: p.grad for n, p in unet.named_parameters() if "lora_" in n}


def _step(unet, reg, lambda_reg=1.0, B=2, seed=1):
    x0, c = _batch(B)
    return training_step(unet, x0, c, tiny_scheduler(), reg, lambda_reg, generator=_gen(seed))


# ---- the estimate against closed forms ------------------------------------------------------------

class _LinearEpsModel(torch.nn.Module):
    """eps_hat = M x_t, so x0_hat = (x_t - sqrt(1 - a) M x_t) / sqrt(a) is linear in eps."""

    def __init__(self, D):
        super().__init__()
        self.M = torch.nn.Parameter(torch.randn(D, D, dtype=torch.float64, generator=_gen(7)) / math.sqrt(D))

    def forward(self, x, t, encoder_hidden_states=None):
        class Out:
            sample = (x.flatten(1) @ self.M.T).reshape(x.shape)
        return Out


def test_linear_map_gives_norm_of_A_u_to_float_precision():
    """x0_hat = A eps + b with A = sqrt(1 - a)/sqrt(a) (I - sqrt(1 - a) M): a forward difference is exact
    up to rounding, r = ||A u|| with u = sqrt(1 - a) y, y = N(0, I)/sqrt(D) (replayed: t, eps, then y)."""
    shape, B = (2, 3, 3), 3
    D = math.prod(shape)
    model, sch = _LinearEpsModel(D), tiny_scheduler()
    x0 = torch.randn(B, *shape, dtype=torch.float64, generator=_gen(3))
    out = training_step(model, x0, torch.zeros(B, 1, 1, dtype=torch.float64), sch,
                        StepVariationRegularizer(estimator=FD, h=1e-2), generator=_gen())
    g = _gen()
    t = torch.randint(0, sch.config.num_train_timesteps, (B,), generator=g)
    torch.randn(x0.shape, generator=g, dtype=torch.float64)  # eps
    y = torch.randn(x0.shape, generator=g, dtype=torch.float64) / math.sqrt(D)
    alpha_bar_t = sch.alphas_cumprod.double()[t]
    for i in range(B):
        alpha_bar_i = alpha_bar_t[i]
        A = (1 - alpha_bar_i).sqrt() / alpha_bar_i.sqrt() * (torch.eye(D, dtype=torch.float64) - (1 - alpha_bar_i).sqrt() * model.M)
        expected = (A @ ((1 - alpha_bar_i).sqrt() * y[i].flatten())).norm()
        torch.testing.assert_close(out.r[i], expected.detach(), rtol=1e-10, atol=0)


def test_exact_and_first_order_agree_for_a_symmetric_jacobian():
    """The exact Gaussian denoiser is affine with a symmetric Jacobian (Tweedie), so ||J^T u|| = ||J u||:
    both estimators give the same r per sample from the same draws, and that r is the closed form."""
    sch = tiny_scheduler()
    s = 0.5
    model = GaussianDenoiser(sch.alphas_cumprod, mu=0.3, s=s)
    x0 = 0.3 + s * torch.randn(4, 4, 32, 32, dtype=torch.float64, generator=_gen(2))
    c = torch.zeros(4, 1, 1, dtype=torch.float64)
    exact = training_step(model, x0, c, sch, StepVariationRegularizer(), generator=_gen())
    first = training_step(model, x0, c, sch, StepVariationRegularizer(estimator=FD), generator=_gen())
    torch.testing.assert_close(first.r, exact.r, rtol=1e-6, atol=0)
    torch.testing.assert_close(first.mse, exact.mse, rtol=1e-12, atol=0)
    alpha_bar_t = sch.alphas_cumprod.double()[first.t]
    closed = (1 - alpha_bar_t) * alpha_bar_t.sqrt() * s**2 / (alpha_bar_t * s**2 + 1 - alpha_bar_t)  # times ||g||/sqrt(D) = 1 +- 1/sqrt(2D)
    torch.testing.assert_close(first.r, closed, rtol=0.05, atol=0)


def test_nonlinear_network_converges_until_rounding_takes_over():
    """Against ||J u|| from an explicit float64 Jacobian. Truncation regime: the error falls about tenfold
    per decade of h (first order). Rounding regime (float32): it grows as h shrinks, and below float32's
    resolution the shift is lost entirely (r = 0)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv2d(8, 2, 3, padding=1))
    with torch.no_grad():
        net[0].weight.mul_(10)  # curved enough for truncation to dominate down to h = 1e-3 in float32
    x = torch.randn(1, 2, 4, 4, generator=_gen(4))
    u = torch.randn(1, 2, 4, 4, generator=_gen(5))
    u = u / u.norm()
    nets = {torch.float32: net, torch.float64: copy.deepcopy(net).double()}
    J = torch.autograd.functional.jacobian(lambda e: nets[torch.float64](e).flatten(), x.double()).reshape(32, 32)
    exact = (J @ u.double().flatten()).norm().item()

    def error(h, dtype):
        xx, uu = x.to(dtype), u.to(dtype)
        with torch.no_grad():
            r = finite_difference_variation(nets[dtype](xx), nets[dtype](xx + h * uu), torch.tensor([h], dtype=dtype))
        return abs(r.item() - exact) / exact, r.item()

    trunc = [error(h, torch.float64)[0] for h in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert all(5 < e1 / e2 < 20 for e1, e2 in zip(trunc, trunc[1:])), trunc  # O(h), not O(h^2)
    f32 = {h: error(h, torch.float32) for h in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)}
    e = {h: v[0] for h, v in f32.items()}
    assert e[1e-1] > e[1e-2] > e[1e-3], e  # truncation shrinks
    assert e[1e-3] < 1e-3
    assert e[1e-3] < e[1e-4] < e[1e-5] < e[1e-6] < e[1e-7], e  # rounding grows
    assert e[1e-7] > 0.5
    assert f32[1e-8][1] == f32[1e-9][1] == 0.0  # x + h u == x in float32


def test_shift_has_the_chosen_relative_size():
    x_t = torch.randn(3, 4, 8, 8, generator=_gen(2), dtype=torch.float64)
    alpha_bar_t = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    u = direction(x_t, alpha_bar_t, _gen(3))
    x_shift, s = shifted_input(x_t, u, alpha_bar_t, h=1e-3)
    delta = x_shift - x_t
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), 1e-3 * x_t.flatten(1).norm(dim=1), rtol=1e-10, atol=0)
    # the shift is the forward process's image of eps -> eps + s u
    torch.testing.assert_close(delta, (1 - alpha_bar_t).sqrt().reshape(-1, 1, 1, 1) * s.reshape(-1, 1, 1, 1) * u,
                               rtol=1e-10, atol=1e-15)


def test_default_step_is_the_square_root_of_machine_epsilon():
    assert default_step(torch.float32) == pytest.approx(3.45e-4, rel=1e-2)
    assert default_step(torch.float16) == pytest.approx(0.03125)
    assert default_step(torch.bfloat16) == pytest.approx(0.0884, rel=1e-2)
    x_t, alpha_bar_t = torch.ones(1, 1, 2, 2), torch.tensor([0.5])
    u = torch.ones(1, 1, 2, 2)
    for dtype in (torch.float32, torch.bfloat16):
        x_shift, _ = shifted_input(x_t, u, alpha_bar_t, compute_dtype=dtype)
        torch.testing.assert_close((x_shift - x_t).norm(), default_step(dtype) * x_t.norm())


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="estimator must be one of exact, finite_difference; got 'jvp'"):
        StepVariationRegularizer(estimator="jvp")
    with pytest.raises(ValueError, match=r"h must be a finite number > 0 \(or none\)"):
        StepVariationRegularizer(estimator=FD, h=0)
    with pytest.raises(ValueError, match="exact estimator has none"):
        StepVariationRegularizer(h=1e-3)
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="below the machine epsilon of torch.bfloat16"):
        shifted_input(x, x, torch.full((2,), 0.5), h=1e-3, compute_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="one value per sample"):
        finite_difference_variation(x, x, torch.tensor(1.0))


# ---- the training step on a LoRA UNet -------------------------------------------------------------

def test_first_order_step_reaches_lora_only(lora_unet):
    out = _step(lora_unet, StepVariationRegularizer(estimator=FD))
    assert out.r.shape == (2,) and torch.isfinite(out.r).all() and out.reg > 0
    torch.testing.assert_close(out.loss, out.mse + out.reg)
    out.reg.backward()  # the penalty alone, through both forwards
    grads = _lora_grads(lora_unet)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # lora_B starts at zero, so only its gradients are non-zero on the first step (d/dA carries a factor B)
    assert all(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for n, p in lora_unet.named_parameters() if "lora_" not in n)


def test_first_order_r_is_the_exact_r_in_mean_square(lora_unet):
    """r_fd = ||J u|| and r = ||J^T u|| differ per sample but share E r^2 = (1 - alpha_bar_t) tr(J J^T) / D;
    here J is close to I / sqrt(alpha_bar_t), so they also agree closely per sample."""
    exact = _step(lora_unet, StepVariationRegularizer(), B=4)
    first = _step(lora_unet, StepVariationRegularizer(estimator=FD), B=4)
    assert torch.equal(exact.t, first.t)
    torch.testing.assert_close(first.r, exact.r, rtol=0.05, atol=0)


def test_first_order_runs_under_forced_flash_attention(lora_unet):
    """The exact estimator is refused under a fused kernel (tests/test_train_step.py); this one runs."""
    math_kernel = _step(lora_unet, StepVariationRegularizer(estimator=FD))
    backend = SDPBackend.FLASH_ATTENTION
    with sdpa_kernel(backend):
        out = _step(lora_unet, StepVariationRegularizer(estimator=FD))
        out.loss.backward()
    assert all(g is not None for g in _lora_grads(lora_unet).values())
    torch.testing.assert_close(out.r, math_kernel.r, rtol=1e-2, atol=0)


def test_first_order_runs_with_gradient_checkpointing(lora_unet):
    out = _step(lora_unet, StepVariationRegularizer(estimator=FD))
    out.loss.backward()
    plain = {n: g.clone() for n, g in _lora_grads(lora_unet).items()}
    lora_unet.zero_grad(set_to_none=True)
    lora_unet.enable_gradient_checkpointing()
    assert lora_unet.is_gradient_checkpointing
    ckpt = _step(lora_unet, StepVariationRegularizer(estimator=FD))
    ckpt.loss.backward()
    torch.testing.assert_close(ckpt.r, out.r)
    for n, g in _lora_grads(lora_unet).items():
        torch.testing.assert_close(g, plain[n], rtol=1e-4, atol=1e-7)


def test_first_order_under_bf16_autocast(lora_unet):
    ref = _step(lora_unet, StepVariationRegularizer(estimator=FD))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _step(lora_unet, StepVariationRegularizer(estimator=FD))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.r.dtype == torch.float32
    torch.testing.assert_close(out.r, ref.r, rtol=2e-2, atol=0)
    assert all(torch.isfinite(g).all() for g in _lora_grads(lora_unet).values())


def test_sub_batch_keeps_the_mse_and_lazy_steps_skip(lora_unet):
    sub = _step(lora_unet, StepVariationRegularizer(estimator=FD, sub_batch=1), B=3)
    plain = _step(lora_unet, None, B=3)
    assert sub.r.shape == (1,)
    torch.testing.assert_close(sub.mse, plain.mse, rtol=1e-5, atol=1e-7)
    reg = StepVariationRegularizer(estimator=FD, every=2)
    ran = [_step(lora_unet, reg, 0.5, seed=i).r is not None for i in range(3)]
    assert ran == [True, False, True]
