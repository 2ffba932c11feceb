"""Attention kernels that can be differentiated twice, as the regularizer needs.

The Step-wise Variation Regularizer (Guo et al., CVPR 2024, section 3.2)
builds r from a gradient, ``autograd.grad(<x0_hat, y>, eps, create_graph=True)``,
so ``L_reg.backward()`` differentiates the backward pass of every op in the
UNet: a *double backward*. Fused attention kernels (PyTorch's flash,
memory-efficient and cuDNN SDPA, xformers, torch_npu, XLA flash attention)
have a backward but no backward of their backward; PyTorch then fails late,
inside ``loss.backward()``, with "derivative for ... is not implemented".
PyTorch's *math* SDPA kernel computes softmax(Q K^T / sqrt(d)) V with ordinary
ops and is differentiable any number of times; so is diffusers' classic
``AttnProcessor``. The authors' release ran on that classic processor.

:func:`double_backward_attention` switches to one of them for a block of code
and keeps everything else (LoRA layers wrap ``to_q`` ... as modules and are
untouched). :func:`check_double_backward` inspects a graph up front so that a
kernel without a double backward is reported where it is chosen, not deep
inside the caller's ``backward()``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

KERNELS = ("math", "classic")

# Processor classes that call a fused kernel directly instead of F.scaled_dot_product_attention.
_FUSED_PROCESSOR_MARKERS = ("XFormers", "Flash", "NPU")

_HOW_TO_FIX = (
    "The Step-wise Variation Regularizer needs a double backward through attention; "
    "flash, memory-efficient and cuDNN SDPA and xformers have none. Run the regularized "
    "step under smoothlib.double_backward_attention(unet) (the training step does this for "
    "you) and do not wrap it in torch.nn.attention.sdpa_kernel(...) without SDPBackend.MATH; "
    "if you enabled xformers, call unet.set_attn_processor(AttnProcessor2_0()) first."
)


def _unwrap(unet):
    """The diffusers model inside a DistributedDataParallel-style wrapper (``.module``), if any."""
    return getattr(unet, "module", unet)


def _fused_processors(unet) -> list[str]:
    processors = getattr(_unwrap(unet), "attn_processors", {})
    return sorted({type(p).__name__ for p in processors.values()
                   if any(m in type(p).__name__ for m in _FUSED_PROCESSOR_MARKERS)})


def _is_missing_double_backward(err: RuntimeError) -> bool:
    msg = str(err)
    return ("derivative for" in msg and "not implemented" in msg) or "once_differentiable" in msg


@contextmanager
def double_backward_attention(unet=None, kernel: str = "math"):
    """Run the block with attention that supports a double backward.

    Recipe:

    1. Refuse processors that call a fused kernel directly (xformers, ...).
    2. Refuse a caller's ``sdpa_kernel(...)`` that switched the math kernel off
       (forcing FLASH_ATTENTION or EFFICIENT_ATTENTION): on CPU the efficient
       kernel does not even exist, on CUDA either one breaks the double backward.
    3. ``kernel="math"`` (default): ``sdpa_kernel(SDPBackend.MATH)``, CPU and
       CUDA alike. ``kernel="classic"``: swap every ``AttnProcessor2_0`` for
       diffusers' ``AttnProcessor`` (plain softmax attention, as in the
       authors' release) and restore the processors on exit.
    4. Re-raise PyTorch's "derivative ... not implemented" from inside the
       block with a message that says what to do.

    The double backward itself usually runs later, in the caller's
    ``loss.backward()``; the kernel is chosen at forward time, so only the
    forward pass must run inside this block.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; use one of {KERNELS}")
    fused = _fused_processors(unet) if unet is not None else []
    if fused:
        raise RuntimeError(f"the UNet uses attention processors without a double backward "
                           f"({', '.join(fused)}). {_HOW_TO_FIX}")
    if not torch.backends.cuda.math_sdp_enabled():
        raise RuntimeError("the math SDPA kernel is switched off here (an enclosing "
                           "torch.nn.attention.sdpa_kernel(...) forces a fused kernel). "
                           + _HOW_TO_FIX)
    saved, model = None, _unwrap(unet)
    if kernel == "classic" and hasattr(model, "attn_processors"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        saved = dict(model.attn_processors)
        model.set_attn_processor({name: AttnProcessor() if type(p) is AttnProcessor2_0 else p
                                  for name, p in saved.items()})
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    except RuntimeError as err:
        if _is_missing_double_backward(err):
            raise RuntimeError(f"{_HOW_TO_FIX} (PyTorch said: {err})") from err
        raise
    finally:
        if saved is not None:
            model.set_attn_processor(saved)


def check_double_backward(tensor: torch.Tensor) -> torch.Tensor:
    """Raise now if back-propagating ``tensor`` would hit an op without a derivative.

    Walks the autograd graph of ``tensor`` (built with ``create_graph=True``)
    looking for the placeholder nodes PyTorch inserts where a derivative is
    missing (``NotImplemented``: e.g. the backward of flash attention;
    ``DelayedError``: a ``once_differentiable`` backward, as in xformers).
    Costs one pass over the graph's nodes, no arithmetic. Returns ``tensor``.
    """
    stack, seen = [tensor.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        name = fn.name()
        if name.endswith("NotImplemented") or name.endswith("DelayedError"):
            culprits = {n.name() for n, _ in fn.next_functions
                        if n is not None and not n.name().endswith("AccumulateGrad")}
            raise RuntimeError(f"the regularizer's graph has no double backward through "
                               f"{', '.join(sorted(culprits)) or name}. {_HOW_TO_FIX}")
        stack.extend(n for n, _ in fn.next_functions)
    return tensor
