"""Property-based tests (hypothesis): slerp, ISTD and image preparation hold their contracts on random inputs.

Few examples per property and no example database, so the file stays fast.
"""
import numpy as np
import pytest
import torch
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

import smoothlib as sl  # noqa: E402
from smoothlib.images import prepare_image  # noqa: E402

FEW = settings(max_examples=25, deadline=None, database=None)

unit = st.floats(0, 1, allow_nan=False)
vectors = st.integers(2, 12).flatmap(
    lambda n: st.tuples(*[arrays(np.float64, n, elements=st.floats(-10, 10, allow_nan=False))] * 2))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


# --------------------------------------------------------------------------- slerp


@FEW
@given(vectors, st.lists(unit, min_size=1, max_size=5))
def test_slerp_keeps_the_norm_of_equal_norm_ends(ends, ts):
    a, b = ends
    assume(np.linalg.norm(a) > 1e-3 and np.linalg.norm(b) > 1e-3 and abs(_cos(a, b)) < 0.999)
    b = b * np.linalg.norm(a) / np.linalg.norm(b)
    frames = sl.slerp(torch.from_numpy(a), torch.from_numpy(b), ts)
    norms = frames.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(np.linalg.norm(a))), rtol=1e-9, atol=0)


@FEW
@given(vectors, st.sampled_from([torch.float64, torch.float32, torch.float16]))
def test_slerp_endpoints_are_exact(ends, dtype):
    a, b = (torch.from_numpy(v).to(dtype) for v in ends)
    assume(_cos(a.double().numpy(), b.double().numpy()) > -0.999)  # opposite ends are refused
    assert torch.equal(sl.slerp(a, b, 0.0), a) and torch.equal(sl.slerp(a, b, 1.0), b)
    frames = sl.slerp(a, b, [0.0, 0.5, 1.0])
    assert frames.dtype == dtype and torch.equal(frames[0], a) and torch.equal(frames[-1], b)


@FEW
@given(vectors, st.lists(unit, min_size=1, max_size=5))
def test_slerp_t_forms_agree(ends, ts):
    a, b = (torch.from_numpy(v) for v in ends)
    assume(_cos(ends[0], ends[1]) > -0.999)
    one_by_one = torch.stack([sl.slerp(a, b, t) for t in ts])
    for form in (list, tuple, np.array, lambda x: torch.tensor(x, dtype=torch.float64)):
        assert torch.equal(sl.slerp(a, b, form(ts)), one_by_one)
    assert torch.equal(sl.slerp(a, b, torch.tensor(ts[0], dtype=torch.float64)), one_by_one[0])
    assert torch.equal(sl.slerp(a, b, np.float64(ts[0])), one_by_one[0])


# --------------------------------------------------------------------------- ISTD

walks = st.tuples(st.integers(3, 6), st.integers(1, 3), st.integers(1, 4)).flatmap(
    lambda s: arrays(np.float64, (s[0], 1, s[1], s[2]), elements=unit))


@FEW
@given(walks)
def test_istd_is_invariant_to_reversing_the_frames(frames):
    frames = torch.from_numpy(frames)
    torch.testing.assert_close(sl.istd(frames.flip(0)), sl.istd(frames), rtol=1e-9, atol=1e-12)


@FEW
@given(walks, st.floats(0.01, 1))
def test_istd_scales_with_the_images(frames, c):
    frames = torch.from_numpy(frames)
    torch.testing.assert_close(sl.istd(c * frames), c * sl.istd(frames), rtol=1e-9, atol=1e-12)


@FEW
@given(st.integers(3, 8), arrays(np.float64, (1, 3, 3), elements=st.floats(0, 0.5)),
       arrays(np.float64, (1, 3, 3), elements=st.floats(0, 1)))
def test_istd_is_zero_for_equal_steps(num_frames, start, direction):
    step = torch.from_numpy(direction) * 0.5 / (num_frames - 1)
    frames = torch.stack([torch.from_numpy(start) + k * step for k in range(num_frames)])
    assert sl.istd(frames).item() == pytest.approx(0, abs=1e-12)


# --------------------------------------------------------------------------- image preparation

DTYPES = ["uint8", "uint16", "int64", "bool", "float16", "float32", "float64", "bfloat16"]


@st.composite
def image_sources(draw):
    """Any source prepare_image's contract accepts: PIL, numpy [H, W(, C)], torch [(C,) H, W], of any listed dtype."""
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["pil", "numpy", "torch"]))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(st.sampled_from(DTYPES if kind == "torch" else DTYPES[:-1]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (h, w) if channels is None else (h, w, channels)
    if dtype == "bool":
        a = rng.random(shape) < 0.5
    elif dtype.startswith(("float", "bfloat")):
        a = rng.random(shape)
    else:
        a = rng.integers(0, 65536 if dtype == "uint16" else 256, shape).astype(dtype)
    if kind == "pil":  # L, RGB or RGBA, from the array's shape
        pixels = (rng.random(shape) * 255).astype(np.uint8)
        return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    if kind == "numpy":
        return a if dtype in ("bool", "uint8", "uint16", "int64") else a.astype(dtype)
    t = torch.from_numpy(np.ascontiguousarray(a if a.ndim == 2 else a.transpose(2, 0, 1)))
    return t.to(getattr(torch, dtype)) if dtype.startswith(("float", "bfloat")) else t


@FEW
@given(image_sources(), st.integers(1, 16), st.integers(1, 16), st.sampled_from([1, 3]))
def test_prepare_image_gives_the_worlds_format(source, height, width, channels):
    image = prepare_image(source, (height, width), channels).image
    assert image.shape == (channels, height, width) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
