"""Interpolating latents: linear (lerp) and spherical (slerp).

Gaussian noise in high dimension lives near a sphere of radius sqrt(d), so the
straight line between two noises passes through a region of atypically small
norm; slerp walks along the great circle instead (Shoemake 1985, used for
latents since White 2016, "Sampling Generative Networks"):

    slerp(v0, v1; t) = sin((1 - t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1,
    theta = arccos(<v0, v1> / (|v0| |v1|)).

For nearly parallel inputs sin(theta) -> 0 and the formula is ill-conditioned;
there slerp falls back to lerp, which it then equals to first order.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check(v0: Tensor, v1: Tensor, t) -> tuple[Tensor, bool]:
    if v0.shape != v1.shape:
        raise ValueError(f"cannot interpolate tensors of different shapes: {tuple(v0.shape)} vs {tuple(v1.shape)}")
    scalar = not isinstance(t, Tensor) or t.ndim == 0
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim > 1:
        raise ValueError(f"t must be a float or a 1-D tensor, got shape {tuple(t.shape)}")
    t = t.reshape(-1)
    if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
        raise ValueError(f"t must lie in [0, 1], got {t.tolist()}")
    return t, scalar


def lerp(v0: Tensor, v1: Tensor, t) -> Tensor:
    """Linear interpolation (1 - t) v0 + t v1.

    ``t`` a float gives one tensor of v0's shape; a 1-D tensor of F values gives
    the F results stacked on a new first axis.
    """
    ts, scalar = _check(v0, v1, t)
    a, b = v0.double(), v1.double()
    out = torch.stack([(1 - ti) * a + ti * b for ti in ts]).to(v0.dtype)
    return out[0] if scalar else out


def slerp(v0: Tensor, v1: Tensor, t, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation between two tensors of any (equal) shape.

    The whole tensor is one vector: the angle is taken over all its elements.
    Computed in float64 and returned in v0's dtype, so float16 latents neither
    overflow in the dot product nor lose the small angles.

    Args:
        v0, v1: the end points (t = 0 gives v0, t = 1 gives v1, exactly).
        t: a float in [0, 1], or a 1-D tensor of them (results stacked on a new first axis).
        dot_threshold: above this |cos theta| the two are treated as parallel and
            lerp is used.
    """
    ts, scalar = _check(v0, v1, t)
    a, b = v0.double().flatten(), v1.double().flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return lerp(v0, v1, t)
    cos = torch.clamp((a @ b) / (na * nb), -1.0, 1.0)
    if cos.abs() > dot_threshold:
        return lerp(v0, v1, t)
    theta = torch.arccos(cos)
    s = torch.sin(theta)
    frames = []
    for ti in ts:
        if ti == 0:
            frames.append(v0.double())
        elif ti == 1:
            frames.append(v1.double())
        else:
            w0, w1 = torch.sin((1 - ti) * theta) / s, torch.sin(ti * theta) / s
            frames.append((w0 * a + w1 * b).reshape(v0.shape))
    out = torch.stack(frames).to(v0.dtype)
    return out[0] if scalar else out
