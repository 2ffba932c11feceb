"""Where to run: pick a torch device and a dtype without hard-coding "cuda".

Order of preference: CUDA, then Apple's MPS, then the CPU. Half precision is
only the default on CUDA; the CPU and MPS default to float32 because the
regularizer's double backward and DDIM inversion are numerically delicate.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def default_device() -> torch.device:
    """The best available device: ``cuda``, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """float16 on CUDA (inference), float32 everywhere else."""
    device = torch.device(device) if device is not None else default_device()
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve(device: torch.device | str | None = None,
            dtype: torch.dtype | str | None = None) -> tuple[torch.device, torch.dtype]:
    """Turn user input (``None``, ``"cuda"``, ``"bf16"``, ...) into a (device, dtype) pair.

    >>> resolve("cpu", "fp32")
    (device(type='cpu'), torch.float32)
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU; "
                           "pass device=None to pick the best available device.")
    if dtype is None:
        return device, default_dtype(device)
    if isinstance(dtype, str):
        names = {"fp32": torch.float32, "float32": torch.float32,
                 "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        dtype = names[dtype]
    return device, dtype


def half_precision_parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    """The float16 / bfloat16 parameters and buffers of ``module`` (empty for a float32 model)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return [t for t in tensors if t.dtype in (torch.float16, torch.bfloat16)]


@contextmanager
def in_float32(module: torch.nn.Module):
    """Run ``module`` in float32 inside the block, then give every tensor back its own dtype.

    For computations that half precision cannot carry, such as null-text inversion,
    whose gradients of the null embedding underflow in float16 (the authors' release
    runs its UNet in float32 for it too). Each half-precision parameter and buffer is
    converted in place, one at a time, so the peak is the float32 copy of the weights
    (for SD 1.5's UNet: 3.4 GB instead of 1.7 GB while the block runs). The way back
    is exact: float16 -> float32 -> float16 returns every value bit for bit, and
    tensors that were already float32 (peft keeps LoRA weights in float32) are not
    touched. A float32 module passes through unchanged.
    """
    halves = half_precision_parameters(module)
    dtypes = [t.dtype for t in halves]
    for t in halves:
        t.data = t.data.float()
    _FLOAT32_BLOCKS.append(module)
    try:
        yield module
    finally:
        _FLOAT32_BLOCKS.remove(module)
        for t, dtype in zip(halves, dtypes):
            t.data = t.data.to(dtype)


_FLOAT32_BLOCKS: list[torch.nn.Module] = []


def inside_float32_block(module: torch.nn.Module) -> bool:
    """Whether ``module`` is running inside :func:`in_float32` now (whatever its own dtype):
    what a float16 world would run in float32 (for :mod:`smoothlib.cost`)."""
    return any(m is module for m in _FLOAT32_BLOCKS)


def float32_note(module: torch.nn.Module, what: str = "null-text inversion") -> str | None:
    """A one-line note of what :func:`in_float32` will do to ``module``, or None for a float32 module."""
    halves = half_precision_parameters(module)
    if not halves:
        return None
    extra = sum(t.numel() * (4 - t.element_size()) for t in halves) / 2**30
    return (f"{what} runs the {halves[0].dtype} UNet in float32 for the duration (half-precision gradients "
            f"underflow): {extra:.2f} GiB more on {halves[0].device.type} while it runs")


def draw_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where to draw random numbers: on the generator's device, so that a seeded draw gives the same
    numbers wherever the model runs (a CPU generator serves a CPU and a GPU model alike)."""
    return generator.device if generator is not None else like.device


def randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) of ``shape`` in ``like``'s dtype, drawn on :func:`draw_device`, then moved next to ``like``."""
    return torch.randn(shape, generator=generator, device=draw_device(generator, like), dtype=like.dtype).to(like.device)
