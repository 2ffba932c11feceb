import math

import pytest
import torch

from smoothlib.metrics import (adjacent_distances, istd, istd_per_walk, lpips_distance, mse, pdv, ppl, psnr,
                               reconstruction_metrics, ssim)


def walk_with_steps(steps, shape=(1, 4, 4)):
    """Frames I_0 = 0, I_k = I_{k-1} + step_k * u with |u| = 1, so that d_k = step_k exactly."""
    u = torch.zeros(shape, dtype=torch.float64)
    u.view(-1)[0] = 1.0
    frames = [torch.zeros(shape, dtype=torch.float64)]
    for s in steps:
        frames.append(frames[-1] + s * u)
    return torch.stack(frames)


def test_constant_motion_gives_zero():
    direction = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    frames = torch.linspace(0, 1, 11, dtype=torch.float64).reshape(11, 1, 1, 1) * direction
    assert istd(frames).item() == pytest.approx(0.0, abs=1e-12)


def test_known_jump_gives_hand_computed_std():
    # nine steps of 0.05 and one of 0.5: mean 0.095, population variance 0.9*0.045^2 + 0.1*0.405^2
    steps = [0.05] * 9 + [0.5]
    frames = walk_with_steps(steps)
    assert adjacent_distances(frames).tolist() == pytest.approx(steps)
    expected = math.sqrt(0.9 * 0.045**2 + 0.1 * 0.405**2)
    assert expected == pytest.approx(0.135)
    assert istd(frames).item() == pytest.approx(expected, rel=1e-12)


def test_distance_is_euclidean_over_all_channels_and_pixels():
    a = torch.zeros(3, 2, 3, 3)
    a[1] += 0.5  # 18 elements changed by 0.5: distance sqrt(18) / 2
    assert adjacent_distances(a)[0].item() == pytest.approx(math.sqrt(18) / 2)


def test_batch_gives_mean_over_walks():
    w1, w2 = walk_with_steps([0.1, 0.1, 0.4]), walk_with_steps([0.2, 0.2, 0.2])
    batch = torch.stack([w1, w2])
    scores = istd_per_walk(batch)
    assert scores.tolist() == pytest.approx([math.sqrt(2 / 3 * 0.1**2 + 1 / 3 * 0.2**2), 0.0])
    assert istd(batch).item() == pytest.approx(scores.mean().item())
    assert adjacent_distances(batch).shape == (2, 3)


@pytest.mark.parametrize("frames, match", [
    (torch.rand(2, 1, 4, 4), "at least 3 frames"),
    (torch.rand(5, 4, 4), r"\[F, C, H, W\]"),
    (torch.rand(5, 1, 4, 4) * 2 - 1, r"\[0, 1\]"),
    (torch.full((5, 1, 4, 4), float("nan")), "NaN"),
])
def test_bad_frames_raise(frames, match):
    with pytest.raises(ValueError, match=match):
        istd(frames)


def test_uint8_frames_refused():
    with pytest.raises(TypeError, match="255"):
        istd(torch.zeros(5, 1, 4, 4, dtype=torch.uint8))


def test_ppl_pdv_with_a_given_distance():
    frames = walk_with_steps([0.1, 0.3, 0.2])
    l1 = lambda a, b: (a - b).abs().flatten(1).sum(1)  # noqa: E731
    assert ppl(frames, l1).item() == pytest.approx(0.6)
    assert pdv(frames, l1).item() == pytest.approx(torch.tensor([0.1, 0.3, 0.2]).std(correction=0).item())


def test_lpips_missing_says_how_to_install():
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install lpips"):
            lpips_distance()
    else:
        pytest.skip("lpips is installed")


def test_mse_and_psnr_by_hand():
    ref = torch.zeros(2, 1, 4, 4)
    img = ref.clone()
    img[0] += 0.1           # [0, 1] MSE 0.01 -> [-1, 1] MSE 0.04, PSNR 20 dB
    img[1, :, :2] = 0.5     # half the pixels off by 0.5: [0, 1] MSE 0.125
    assert mse(img, ref).tolist() == pytest.approx([0.04, 0.5])
    assert psnr(img, ref).tolist() == pytest.approx([20.0, 10 * math.log10(8)])
    assert psnr(ref, ref)[0].item() == math.inf


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 24, 20, generator=g, dtype=torch.float64)
    img = (ref + 0.15 * torch.randn(2, 3, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(img, ref)
    for i in range(2):
        theirs = metrics.structural_similarity(img[i].numpy(), ref[i].numpy(), channel_axis=0, data_range=1.0,
                                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(theirs, abs=1e-10)
    gray = metrics.structural_similarity(img[0, 0].numpy(), ref[0, 0].numpy(), data_range=1.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(img[:1, :1], ref[:1, :1]).item() == pytest.approx(gray, abs=1e-10)
    assert ssim(ref, ref).tolist() == pytest.approx([1.0, 1.0])


def test_ssim_too_small_image_raises():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_reconstruction_metrics_keys_and_lpips_callable():
    ref = torch.rand(3, 1, 16, 16)
    out = reconstruction_metrics(ref * 0.9, ref, lpips=lambda a, b: (a - b).abs().flatten(1).mean(1))
    assert set(out) == {"mse", "psnr", "ssim", "lpips"}
    assert all(v.shape == (3,) for v in out.values())
    with pytest.raises(ValueError, match="differ in shape"):
        mse(ref, ref[:2])
