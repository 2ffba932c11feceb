"""Smoothness and reconstruction metrics on images in [0, 1].

Smoothness of a walk (Guo et al., CVPR 2024, "Smooth Diffusion", supplement).
For F frames I_1..I_F generated from equally spaced latents, with the adjacent distances

    d_k = || I_{k+1} - I_k ||_2        (k = 1..F-1, Euclidean norm over all channels and pixels),

    ISTD = std(d_1, ..., d_{F-1})      (population standard deviation, divided by F - 1),

and the mean over walks (prompts). 0 means equal visual change for equal latent steps.
The paper leaves the pixel range, the norm and the kind of std unstated; this module fixes
pixels in [0, 1] at the model's own resolution, the Euclidean norm and the population std.
PPL and PDV (DiffMorpher, Zhang et al. CVPR 2024) are the same with a perceptual distance
(LPIPS, Zhang et al. 2018): PPL = sum of d_k, PDV = std of d_k.

Inputs: every metric takes a float tensor (any float dtype, bfloat16 included; computed in
float64) with values in [0, 1] and no NaN, or a list or tuple of equal-shape tensors, which
is stacked on a new first axis (a list of F frames [C, H, W] is a walk [F, C, H, W]).

Reconstruction (Table 2 of the paper): MSE on images scaled to [-1, 1], PSNR on [0, 1]
per image then averaged, SSIM (Wang, Bovik, Sheikh & Simoncelli 2004):

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

with local statistics under an 11 x 11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2,
C2 = (0.03 L)^2, L = 1, averaged over the valid positions (and over channels), and LPIPS
where an implementation is installed.
"""
from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor

RANGE_TOLERANCE = 1e-4
"""How far outside [0, 1] a pixel may lie (rounding of a decoder) before a metric refuses it."""


# --------------------------------------------------------------------------- checks


def _check_range(images: Tensor, what: str) -> None:
    if not torch.is_floating_point(images):
        raise TypeError(f"{what} must be a float tensor with values in [0, 1], got dtype {images.dtype}; "
                        "divide 8-bit images by 255 first")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{what} must have values in [0, 1], got min {lo:.4g} and max {hi:.4g}; "
                         "images in [-1, 1] must be mapped with (x + 1) / 2 first")


def _stacked(x, what: str) -> Tensor:
    """A tensor as it is; a (nested) list or tuple of equal-shape tensors stacked on a new first axis."""
    if isinstance(x, Tensor):
        return x
    if not isinstance(x, (list, tuple)) or not x:
        raise TypeError(f"{what} must be a torch.Tensor or a non-empty list of tensors, got {type(x).__name__}"
                        + (" (convert with torch.from_numpy)" if type(x).__module__ == "numpy" else ""))
    parts = [_stacked(item, what) for item in x]
    shapes = sorted({tuple(p.shape) for p in parts})
    if len(shapes) > 1:
        raise ValueError(f"cannot stack the list of {what}: its tensors differ in shape {shapes}")
    return torch.stack(parts)


def _as_walks(frames) -> Tensor:
    """Frames [F, C, H, W] or [P, F, C, H, W] (or lists of them) -> [P, F, C, H, W], checked."""
    frames = _stacked(frames, "frames")
    if frames.ndim == 4:
        frames = frames.unsqueeze(0)
    if frames.ndim != 5:
        raise ValueError(f"frames must have shape [F, C, H, W] or [P, F, C, H, W], got {tuple(frames.shape)}")
    if frames.shape[1] < 3:
        raise ValueError(f"a walk needs at least 3 frames (2 distances) for a spread, got {frames.shape[1]}")
    _check_range(frames, "frames")
    return frames


# --------------------------------------------------------------------------- smoothness


def adjacent_distances(frames: Tensor | list[Tensor]) -> Tensor:
    """The F - 1 Euclidean distances ||I_{k+1} - I_k||_2 between adjacent frames.

    ``frames`` [F, C, H, W] (or a list of F tensors [C, H, W]) gives [F - 1]; a batch of
    walks [P, F, C, H, W] gives [P, F - 1]. Computed in float64.
    """
    frames = _stacked(frames, "frames")
    single = frames.ndim == 4
    walks = _as_walks(frames).double()
    d = (walks[:, 1:] - walks[:, :-1]).flatten(2).norm(dim=2)
    return d[0] if single else d


def istd(frames: Tensor | list[Tensor]) -> Tensor:
    """Interpolation standard deviation: the population std of the adjacent distances.

    ``frames`` [F, C, H, W] in [0, 1] gives the walk's score; [P, F, C, H, W] gives the
    mean over the P walks (use :func:`istd_per_walk` for the scores). A 0-d float64 tensor.
    """
    return istd_per_walk(frames).mean()


def istd_per_walk(frames: Tensor | list[Tensor]) -> Tensor:
    """ISTD of each walk: [P] for frames [P, F, C, H, W] ([1] for a single walk)."""
    d = adjacent_distances(frames)
    return d.reshape(-1, d.shape[-1]).std(dim=1, correction=0)


def _perceptual_distances(frames: Tensor, distance: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    walks = _as_walks(frames)
    p, f = walks.shape[:2]
    a, b = walks[:, :-1].flatten(0, 1), walks[:, 1:].flatten(0, 1)
    d = torch.as_tensor(distance(a, b)).reshape(-1).double()
    if d.numel() != p * (f - 1):
        raise ValueError(f"distance(a, b) must return one value per pair ({p * (f - 1)}), got {d.numel()}")
    return d.reshape(p, f - 1)


def ppl(frames: Tensor, distance: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Perceptual path length: the sum of ``distance`` between adjacent frames, mean over walks.

    ``distance(a, b)`` takes two batches [N, C, H, W] in [0, 1] and returns [N]; pass
    :func:`lpips_distance` for DiffMorpher's PPL.
    """
    return _perceptual_distances(frames, distance).sum(dim=1).mean()


def pdv(frames: Tensor, distance: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Perceptual distance variation: the population std of adjacent ``distance``, mean over walks."""
    return _perceptual_distances(frames, distance).std(dim=1, correction=0).mean()


def lpips_distance(net: str = "alex", device=None) -> Callable[[Tensor, Tensor], Tensor]:
    """LPIPS (Zhang et al. 2018) as ``distance(a, b) -> [N]`` on images in [0, 1].

    Needs the ``lpips`` package; nothing is downloaded by smoothlib itself (the package
    ships its linear heads, torchvision fetches the backbone weights on first use).
    Grayscale images are repeated to 3 channels.
    """
    try:
        import lpips
    except ImportError as err:
        raise ImportError("LPIPS needs the `lpips` package, which is not installed: `pip install lpips` "
                          "(its AlexNet/VGG backbone weights are fetched by torchvision on first use, so "
                          "run once with internet access). Or pass any distance(a, b) -> [N] callable") from err
    model = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)
    if device is not None:
        model = model.to(device)

    @torch.no_grad()
    def distance(a: Tensor, b: Tensor) -> Tensor:
        _check_range(a, "images")
        _check_range(b, "images")
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        p = next(model.parameters())
        return model(a.to(p) * 2 - 1, b.to(p) * 2 - 1).reshape(-1).cpu()

    return distance


# --------------------------------------------------------------------------- reconstruction


def _pair(images, reference) -> tuple[Tensor, Tensor]:
    images, reference = _stacked(images, "images"), _stacked(reference, "reference")
    if images.shape != reference.shape:
        raise ValueError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape")
    if images.ndim == 3:
        images, reference = images.unsqueeze(0), reference.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W] or [C, H, W], got {tuple(images.shape)}")
    _check_range(images, "images")
    _check_range(reference, "reference")
    return images.double(), reference.double()


def mse(images: Tensor, reference: Tensor) -> Tensor:
    """Per-image mean squared error on images mapped to [-1, 1] (the paper's Table 2 scale): [B].

    Inputs are in [0, 1]; on [-1, 1] the MSE is 4 times the [0, 1] one.
    """
    x, y = _pair(images, reference)
    return ((2 * x - 1) - (2 * y - 1)).pow(2).flatten(1).mean(dim=1)


def psnr(images: Tensor, reference: Tensor) -> Tensor:
    """Per-image PSNR in dB on [0, 1] (peak 1): 10 log10(1 / MSE_[0,1]), [B]; identical images give inf."""
    x, y = _pair(images, reference)
    return 10 * torch.log10(1 / (x - y).pow(2).flatten(1).mean(dim=1))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r**2 / (2 * sigma**2))
    return g / g.sum()


def ssim(images: Tensor, reference: Tensor, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Per-image SSIM (Wang et al. 2004) on [0, 1] images, averaged over channels: [B].

    Gaussian-weighted local statistics (separable window, valid positions only, population
    moments), data range L = 1. Matches ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.
    """
    x, y = _pair(images, reference)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size} x {window_size} pixels, "
                         f"got {tuple(x.shape[-2:])}; pass a smaller window_size")
    b, c = x.shape[:2]
    g = _gaussian_window(window_size, sigma).to(x.device)
    gh, gw = g.reshape(1, 1, -1, 1), g.reshape(1, 1, 1, -1)

    def blur(z: Tensor) -> Tensor:
        z = z.reshape(b * c, 1, *z.shape[-2:])
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(z, gh), gw)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.reshape(b, c, -1).mean(dim=2).mean(dim=1)


def reconstruction_metrics(images: Tensor, reference: Tensor,
                           lpips: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """MSE ([-1, 1]), PSNR, SSIM and, with an LPIPS callable, LPIPS: each per image, [B]."""
    out = {"mse": mse(images, reference), "psnr": psnr(images, reference), "ssim": ssim(images, reference)}
    if lpips is not None:
        x, y = _pair(images, reference)
        out["lpips"] = torch.as_tensor(lpips(x.float(), y.float())).reshape(-1).double()
    return out


def frechet_from_features(f1: Tensor, f2: Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) between Gaussian fits of two feature sets.

    The Frechet distance of FID (Heusel et al. 2017) for features [N1, D] and [N2, D] (tensors or
    arrays). The matrix square root goes through symmetric eigen-decompositions in
    float64 (negative round-off eigenvalues clipped to 0), which stays real and
    stable where the covariances are singular.
    """
    import numpy as np

    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("the Frechet distance needs at least 2 images per set")
    a, b = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)
