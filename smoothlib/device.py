"""Where to run: pick a torch device and a dtype without hard-coding "cuda".

Order of preference: CUDA, then Apple's MPS, then the CPU. Half precision is
only the default on CUDA; the CPU and MPS default to float32 because the
regularizer's double backward and DDIM inversion are numerically delicate.
"""
from __future__ import annotations

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
