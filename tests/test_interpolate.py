import math

import pytest
import torch

import smoothlib as sl


def _angle(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return torch.arccos(torch.clamp(a @ b / (a.norm() * b.norm()), -1, 1)).item()


def test_endpoints_are_exact():
    a, b = torch.randn(4, 64, 64), torch.randn(4, 64, 64)
    assert torch.equal(sl.slerp(a, b, 0.0), a)
    assert torch.equal(sl.slerp(a, b, 1.0), b)
    frames = sl.slerp(a, b, torch.linspace(0, 1, 11))
    assert frames.shape == (11, 4, 64, 64)
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b)


def test_equal_angles_on_a_uniform_grid():
    # exact for equal norms; two Gaussian noises have nearly equal norms
    a, b = torch.randn(4, 64, 64), torch.randn(4, 64, 64)
    b = b * a.norm() / b.norm()
    frames = sl.slerp(a, b, torch.linspace(0, 1, 11))
    angles = [_angle(frames[i], frames[i + 1]) for i in range(10)]
    assert max(angles) - min(angles) < 1e-5
    assert math.isclose(sum(angles), _angle(a, b), rel_tol=1e-5)


def test_norm_preserved_for_equal_norm_inputs():
    a, b = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    b = b * a.norm() / b.norm()
    for f in sl.slerp(a, b, torch.linspace(0, 1, 7)):
        assert f.norm().item() == pytest.approx(a.norm().item(), rel=1e-12)


def test_lerp_fallback_for_parallel_inputs():
    a = torch.randn(4, 8, 8, dtype=torch.float64)
    b = 2.0 * a
    for t in (0.25, 0.5):
        assert torch.allclose(sl.slerp(a, b, t), sl.lerp(a, b, t))
    zero = torch.zeros_like(a)
    assert torch.allclose(sl.slerp(zero, a, 0.5), 0.5 * a)


def test_lerp_values():
    a, b = torch.zeros(3), torch.ones(3)
    assert torch.allclose(sl.lerp(a, b, torch.tensor([0.0, 0.25, 1.0])), torch.tensor([[0.0] * 3, [0.25] * 3, [1.0] * 3]))


def test_float16_does_not_overflow():
    # the flat dot product of two 4x64x64 float16 noises at scale 10 exceeds float16's 65504
    a = (10 * torch.randn(4, 64, 64)).half()
    b = (10 * torch.randn(4, 64, 64)).half()
    mid = sl.slerp(a, b, 0.5)
    assert mid.dtype == torch.float16 and torch.isfinite(mid).all()
    ref = sl.slerp(a.double(), b.double(), 0.5)
    assert (mid.double() - ref).abs().max() < 0.05


def test_batched_shapes():
    a, b = torch.randn(5, 4, 16, 16), torch.randn(5, 4, 16, 16)
    assert sl.slerp(a, b, torch.linspace(0, 1, 3)).shape == (3, 5, 4, 16, 16)


def test_bad_input():
    a = torch.randn(4, 8, 8)
    with pytest.raises(ValueError, match="different shapes"):
        sl.slerp(a, torch.randn(4, 8, 9), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sl.slerp(a, torch.randn(4, 8, 8), 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sl.lerp(a, torch.randn(4, 8, 8), torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match="1-D"):
        sl.slerp(a, torch.randn(4, 8, 8), torch.zeros(2, 2))
