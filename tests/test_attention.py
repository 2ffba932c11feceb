import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from smoothlib.attention import check_double_backward, double_backward_attention

FIX_HINT = "double_backward_attention"




def _grad_of_grad(q):
    """Double backward through SDPA: d/dq of || d sum(attn) / dq ||^2."""
    o = F.scaled_dot_product_attention(q, q, q)
    (g,) = torch.autograd.grad(o.pow(2).sum(), q, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), q)
    return gg


def _unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900]), torch.randn(2, 5, 32, generator=g)


def test_default_sdpa_on_cpu_has_no_double_backward():
    """The premise: PyTorch's default CPU kernel (flash) fails a double backward; math works."""
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        _grad_of_grad(q)
    with double_backward_attention():
        gg = _grad_of_grad(q)
    # an independent reference: softmax attention written out
    def attn(q):
        w = torch.softmax(q @ q.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return w @ q
    (g,) = torch.autograd.grad(attn(q).pow(2).sum(), q, create_graph=True)
    (gg_ref,) = torch.autograd.grad(g.pow(2).sum(), q)
    torch.testing.assert_close(gg, gg_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["math", "classic"])
def test_kernels_keep_the_function_and_the_lora_layers(lora_unet, kernel):
    x, t, c = _unet_inputs()
    lora_layers = {n: type(m) for n, m in lora_unet.named_modules() if n.endswith("to_q")}
    processors = {n: type(p) for n, p in lora_unet.attn_processors.items()}
    with torch.no_grad():
        expected = lora_unet(x, t, encoder_hidden_states=c).sample
        with double_backward_attention(lora_unet, kernel):
            got = lora_unet(x, t, encoder_hidden_states=c).sample
            inside = {type(p).__name__ for p in lora_unet.attn_processors.values()}
            assert {n: type(m) for n, m in lora_unet.named_modules() if n.endswith("to_q")} == lora_layers
    assert inside == ({"AttnProcessor2_0"} if kernel == "math" else {"AttnProcessor"})
    assert all("lora" in t.__module__ for t in lora_layers.values())
    assert {n: type(p) for n, p in lora_unet.attn_processors.items()} == processors  # restored
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["math", "classic"])
def test_double_backward_through_lora_unet(lora_unet, kernel):
    x, t, c = _unet_inputs()
    x.requires_grad_()
    with double_backward_attention(lora_unet, kernel):
        out = lora_unet(x, t, encoder_hidden_states=c).sample
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    check_double_backward(g).norm().backward()
    assert all(p.grad is not None for n, p in lora_unet.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                     [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]])
def test_forced_fused_kernel_gets_a_clear_error(lora_unet, backend):
    with sdpa_kernel(backend):
        with pytest.raises(RuntimeError, match="math SDPA kernel is switched off.*" + FIX_HINT):
            with double_backward_attention(lora_unet):
                pass


def test_xformers_processor_gets_a_clear_error(lora_unet):
    from diffusers.models.attention_processor import XFormersAttnProcessor

    lora_unet.set_attn_processor(XFormersAttnProcessor())
    with pytest.raises(RuntimeError, match="XFormersAttnProcessor.*set_attn_processor"):
        with double_backward_attention(lora_unet):
            pass


def test_missing_derivative_inside_the_block_is_explained():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match=FIX_HINT + ".*PyTorch said: derivative for"):
        with double_backward_attention():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # forced inside, after our check
                _grad_of_grad(q)


def test_graph_check_finds_a_missing_double_backward_before_backward():
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        o = F.scaled_dot_product_attention(q, q, q)
    (g,) = torch.autograd.grad(o.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward through ScaledDotProductFlash"):
        check_double_backward(g)
    with double_backward_attention():
        o = F.scaled_dot_product_attention(q, q, q)
    (g,) = torch.autograd.grad(o.sum(), q, create_graph=True)
    assert check_double_backward(g) is g


def test_unknown_kernel():
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'"):
        with double_backward_attention(None, "flash"):
            pass
