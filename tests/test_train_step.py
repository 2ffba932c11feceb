import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from smoothlib.analytic import GaussianDenoiser
from smoothlib.regularizer import StepVariationRegularizer
from smoothlib.testing import tiny_scheduler
from smoothlib.train_step import training_step




def _batch(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, 5, 32, generator=g)


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


def _replay_t_and_eps(scheduler, shape, seed=1, noise_offset=0.0):
    """The draws of recipe step 1, in its order: t, then eps, then the offset."""
    g = _gen(seed)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (shape[0],), generator=g)
    eps = torch.randn(shape, generator=g)
    if noise_offset:
        eps = eps + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=g)
    return t, eps


def _lora_grads(unet):
    return [p.grad for n, p in unet.named_parameters() if "lora_" in n]


# ---- lambda = 0: a plain LoRA step -----------------------------------------------------------------

@pytest.mark.parametrize("with_regularizer", [True, False])
def test_lambda_zero_is_a_plain_step_without_double_backward(lora_unet, with_regularizer):
    x0, c = _batch()
    reg = StepVariationRegularizer() if with_regularizer else None
    # flash attention has no double backward: the step only works if none happens
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = training_step(lora_unet, x0, c, tiny_scheduler(), reg, lambda_reg=0.0, generator=_gen())
        out.loss.backward()
    assert out.loss is out.mse and out.r is None and out.reg.item() == 0
    assert all(g is not None for g in _lora_grads(lora_unet))
    if reg is not None:
        assert reg.a.item() == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_mse_matches_a_hand_computed_step(lora_unet, prediction_type):
    x0, c = _batch()
    sch = tiny_scheduler(prediction_type)
    out = training_step(lora_unet, x0, c, sch, None, generator=_gen(), noise_offset=0.1)
    t, eps = _replay_t_and_eps(sch, x0.shape, noise_offset=0.1)
    a = sch.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    with torch.no_grad():
        expected = F.mse_loss(lora_unet(x_t, t, encoder_hidden_states=c).sample, target)
    assert torch.equal(out.t, t)
    torch.testing.assert_close(out.mse.detach(), expected, rtol=1e-5, atol=1e-7)


# ---- the regularized step against a closed form -----------------------------------------------------

class _AsPrediction(torch.nn.Module):
    """The exact Gaussian denoiser, re-expressed as a v- or x0-predictor."""

    def __init__(self, denoiser, prediction_type):
        super().__init__()
        self.denoiser, self.prediction_type = denoiser, prediction_type

    def forward(self, x, t, encoder_hidden_states=None):
        eps_hat = self.denoiser(x, t).sample
        a = self.denoiser.alpha_bar[t].reshape(-1, 1, 1, 1)
        x0_hat = (x - (1 - a).sqrt() * eps_hat) / a.sqrt()
        out = {"epsilon": eps_hat, "v_prediction": a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat,
               "sample": x0_hat}[self.prediction_type]

        class Out:
            sample = out
        return Out


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_r_matches_closed_form_for_the_exact_gaussian_denoiser(prediction_type):
    """For data N(mu, s^2 I) the optimal x0_hat is affine in x_t: d x0_hat / d x_t = sqrt(a) s^2 / (a s^2 + 1 - a),
    so r = (1 - a) sqrt(a) s^2 / (a s^2 + 1 - a) * ||g|| / sqrt(D), with ||g|| / sqrt(D) = 1 +- 1/sqrt(2D)."""
    sch = tiny_scheduler(prediction_type)
    s = 0.5
    model = _AsPrediction(GaussianDenoiser(sch.alphas_cumprod, mu=0.3, s=s), prediction_type)
    x0 = 0.3 + s * torch.randn(6, 4, 64, 64, dtype=torch.float64)  # D = 16384: ||g||/sqrt(D) within 0.6 % (1 sd)
    out = training_step(model, x0, torch.zeros(6, 1, 1, dtype=torch.float64), sch,
                        StepVariationRegularizer(), generator=_gen())
    a = sch.alphas_cumprod.double()[out.t]
    expected = (1 - a) * a.sqrt() * s**2 / (a * s**2 + 1 - a)
    torch.testing.assert_close(out.r, expected, rtol=0.03, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_regularized_step_runs_and_reaches_lora(lora_unet, prediction_type):
    x0, c = _batch()
    reg = StepVariationRegularizer()
    out = training_step(lora_unet, x0, c, tiny_scheduler(prediction_type), reg, 1.0, generator=_gen())
    torch.testing.assert_close(out.loss, out.mse + out.reg)
    assert out.r.shape == (2,) and torch.isfinite(out.r).all() and out.reg > 0
    torch.testing.assert_close(reg.a, 0.01 * out.r.mean())
    out.loss.backward()
    assert all(g is not None and torch.isfinite(g).all() for g in _lora_grads(lora_unet))


def test_noise_offset_works_with_the_regularizer(lora_unet):
    """The release crashes here (in-place add on a leaf that requires grad)."""
    x0, c = _batch()
    out = training_step(lora_unet, x0, c, tiny_scheduler(), StepVariationRegularizer(), 1.0,
                        generator=_gen(), noise_offset=0.1)
    out.loss.backward()
    plain = training_step(lora_unet, x0, c, tiny_scheduler(), None, generator=_gen())
    assert out.mse.item() != plain.mse.item()


def test_same_generator_same_step(lora_unet):
    x0, c = _batch()
    o1, o2 = (training_step(lora_unet, x0, c, tiny_scheduler(), StepVariationRegularizer(), 1.0,
                            generator=_gen(5)) for _ in range(2))
    assert torch.equal(o1.t, o2.t) and torch.equal(o1.r, o2.r) and torch.equal(o1.loss, o2.loss)


# ---- lazy and sub-batch ------------------------------------------------------------------------------

def test_lazy_regularization_runs_every_k_steps_with_weight_k(lora_unet):
    x0, c = _batch()
    reg = StepVariationRegularizer(every=2)
    ran = []
    for i in range(4):
        out = training_step(lora_unet, x0, c, tiny_scheduler(), reg, 0.5, generator=_gen(i))
        ran.append(out.r is not None)
        if out.r is not None:
            torch.testing.assert_close(out.loss, out.mse + 0.5 * 2 * out.reg)
        else:
            assert out.loss is out.mse
    assert ran == [True, False, True, False] and reg.step.item() == 4


def test_sub_batch_regularizes_the_first_samples_and_keeps_the_mse(lora_unet):
    x0, c = _batch(B=3)
    sub = training_step(lora_unet, x0, c, tiny_scheduler(), StepVariationRegularizer(sub_batch=1), 1.0,
                        generator=_gen())
    full = training_step(lora_unet, x0, c, tiny_scheduler(), None, generator=_gen())
    assert sub.r.shape == (1,)
    torch.testing.assert_close(sub.mse, full.mse, rtol=1e-5, atol=1e-7)


# ---- errors -------------------------------------------------------------------------------------------

def test_unsupported_prediction_type(lora_unet):
    sch = tiny_scheduler()
    sch.register_to_config(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="unsupported prediction_type 'flow_prediction'"):
        training_step(lora_unet, *_batch(), sch, StepVariationRegularizer())


def test_negative_lambda(lora_unet):
    with pytest.raises(ValueError, match="lambda_reg must be >= 0"):
        training_step(lora_unet, *_batch(), tiny_scheduler(), StepVariationRegularizer(), -1.0)


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
def test_forced_fused_kernel_gives_our_error(lora_unet, backend):
    with sdpa_kernel(backend):
        with pytest.raises(RuntimeError, match="double backward.*double_backward_attention"):
            training_step(lora_unet, *_batch(), tiny_scheduler(), StepVariationRegularizer(), 1.0)
