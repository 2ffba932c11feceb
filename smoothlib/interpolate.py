"""Interpolating latents: linear (lerp) and spherical (slerp).

Gaussian noise in high dimension lives near a sphere of radius sqrt(d), so the
straight line between two noises passes through a region of atypically small
norm; slerp walks along the great circle instead (Shoemake 1985, used for
latents since White 2016, "Sampling Generative Networks"):

    slerp(v0, v1; t) = sin((1 - t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1,
    theta = arccos(<v0, v1> / (|v0| |v1|)).

For nearly parallel inputs sin(theta) -> 0 and the formula is ill-conditioned;
there slerp falls back to lerp, which it then equals to first order. Nearly opposite
inputs (v1 close to -c v0) have no well-defined great circle: every half-turn through
any direction orthogonal to v0 is one, and lerp would pass through zero; slerp refuses them.

``t`` takes these forms in both functions: a scalar (Python number, numpy scalar, 0-d
array or tensor) gives one tensor of v0's shape; a 1-D sequence of F values (list, tuple,
numpy array or tensor) gives the F results stacked on a new first axis. Values lie in [0, 1].
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _check(v0: Tensor, v1: Tensor, t) -> tuple[Tensor, bool]:
    if v0.shape != v1.shape:
        raise ValueError(f"cannot interpolate tensors of different shapes: {tuple(v0.shape)} vs {tuple(v1.shape)}")
    try:
        ts = torch.as_tensor(t, dtype=torch.float64, device="cpu") if not isinstance(t, Tensor) \
            else t.detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"t must be a number or a 1-D list, array or tensor of numbers, got {t!r} ({err})") from None
    if ts.ndim > 1:
        raise ValueError(f"t must be a number or 1-D (a list, array or tensor), got shape {tuple(ts.shape)}")
    if ts.numel() == 0:
        raise ValueError("t is empty; pass at least one value in [0, 1]")
    if torch.isnan(ts).any() or (ts < 0).any() or (ts > 1).any():
        raise ValueError(f"t must lie in [0, 1], got {ts.tolist()}")
    return ts.reshape(-1), ts.ndim == 0


def lerp(v0: Tensor, v1: Tensor, t) -> Tensor:
    """Linear interpolation (1 - t) v0 + t v1.

    ``t`` a scalar gives one tensor of v0's shape; a 1-D list, numpy array or tensor of
    F values gives the F results stacked on a new first axis (module docstring).
    """
    ts, scalar = _check(v0, v1, t)
    a, b = v0.double(), v1.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("v0 or v1 holds NaN or infinite values; lerp needs finite end points")
    out = torch.stack([(1 - ti) * a + ti * b for ti in ts]).to(v0.dtype)
    return out[0] if scalar else out


def slerp(v0: Tensor, v1: Tensor, t, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation between two tensors of any (equal) shape.

    The whole tensor is one vector: the angle is taken over all its elements.
    Computed in float64 and returned in v0's dtype, so float16 latents neither
    overflow in the dot product nor lose the small angles.

    Args:
        v0, v1: the end points, finite, of one shape and any float dtype (t = 0 gives v0,
            t = 1 gives v1, exactly). A zero end gives lerp.
        t: a number in [0, 1], or a 1-D list, tuple, numpy array or tensor of them
            (results stacked on a new first axis).
        dot_threshold: above this cos theta the two are treated as parallel and lerp is
            used; below -dot_threshold they are nearly opposite and a ValueError is raised
            (the great circle is undefined there; move one end, e.g. draw another noise).
    """
    ts, scalar = _check(v0, v1, t)
    a, b = v0.double().flatten(), v1.double().flatten()
    na, nb = a.norm(), b.norm()
    if not (torch.isfinite(na) and torch.isfinite(nb)):
        raise ValueError("v0 or v1 holds NaN or infinite values; slerp needs finite end points")
    if na == 0 or nb == 0:
        return lerp(v0, v1, t)
    cos = torch.clamp((a @ b) / (na * nb), -1.0, 1.0)
    if cos < -dot_threshold:
        raise ValueError(f"v0 and v1 point in nearly opposite directions (cos theta = {cos.item():.6f} < "
                         f"-{dot_threshold}): no unique great circle joins them, and lerp would pass through "
                         "zero; move one end (e.g. draw another noise) or walk via a third point")
    if cos > dot_threshold:
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
