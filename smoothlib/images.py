"""Real images a user drops in, made ready for a World: any size and mode in, [C, H, W] in [0, 1] out.

Recipe (:func:`prepare_image`), each step recorded in the returned report:

1. read the source: a PIL image, a file path, a numpy array ([H, W], [H, W, C] with C in
   1, 3, 4; uint8, uint16, bool, or float in [0, 1]) or a torch tensor ([H, W], [C, H, W]);
2. convert the mode to RGB with :func:`smoothlib.data.to_rgb` (alpha composited on white,
   16-bit rescaled, palette and CMYK converted), then to grayscale ("L") when the world
   has one channel;
3. centre-crop to the target aspect ratio, then resize (bicubic) to the world's image size;
4. scale to float32 in [0, 1].

Inputs with no safe meaning are refused with a message that says what to do: mode-F
images (no defined pixel range), arrays with 4 or more axes, float data outside [0, 1].
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .data import to_rgb

Tensor = torch.Tensor


@dataclass
class PreparedImage:
    """An image ready for ``world.encode``: ``image`` [C, H, W] float32 in [0, 1], and what was done."""
    image: Tensor
    steps: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    """(width, height) of the source, as PIL counts."""
    original_mode: str = ""

    def __str__(self) -> str:
        return "; ".join(self.steps) if self.steps else "used as is"


def _array_to_pil(a: np.ndarray, what: str) -> tuple[Image.Image, list[str]]:
    steps = []
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"cannot read {what} of shape {a.shape} as one image: expected [H, W] or [H, W, C] "
                         "with C in 1, 3, 4 (for a batch, pass the images one at a time)")
    if a.dtype == bool:
        a, _ = a.astype(np.uint8) * 255, steps.append("boolean mask mapped to 0/255")
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"{what} holds floats outside [0, 1] (min {np.nanmin(a):.4g}, max {np.nanmax(a):.4g}), "
                             "which have no defined pixel range; rescale to [0, 1] or convert to uint8 first")
        a = np.round(a * 255).astype(np.uint8)
        steps.append("float values in [0, 1] quantised to 8 bit")
    elif a.dtype == np.uint16:
        return Image.fromarray(a if a.ndim == 2 else (a // 257).astype(np.uint8)), steps
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"{what} of dtype {a.dtype} has values outside 0..255; convert it to uint8 "
                             "(or to floats in [0, 1]) first")
        a = a.astype(np.uint8)
    return Image.fromarray(a), steps


def _read(source, what: str) -> tuple[Image.Image, list[str]]:
    if isinstance(source, Image.Image):
        return source, []
    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as im:
                im.load()
                return im, [f"read {os.fspath(source)}"]
        except FileNotFoundError:
            raise FileNotFoundError(f"no image file at {os.fspath(source)!r}") from None
        except (OSError, Image.UnidentifiedImageError) as err:
            raise ValueError(f"{os.fspath(source)!r} is not an image PIL can read ({err})") from err
    if isinstance(source, Tensor):
        t = source.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        return _array_to_pil(t.numpy(), what)
    if isinstance(source, np.ndarray):
        return _array_to_pil(source, what)
    raise TypeError(f"cannot read an image from {type(source).__name__}: pass a PIL image, a file path, "
                    "a numpy array or a torch tensor")


def _centre_crop_resize(image: Image.Image, height: int, width: int) -> tuple[Image.Image, list[str]]:
    steps = []
    w, h = image.size
    if w * height != h * width:  # crop the larger side to the target aspect ratio
        if w * height > h * width:
            cw, ch = round(h * width / height), h
        else:
            cw, ch = w, round(w * height / width)
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
        steps.append(f"centre-cropped {w}x{h} to {cw}x{ch}")
        w, h = cw, ch
    if (w, h) != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
        steps.append(f"resized {w}x{h} to {width}x{height} (bicubic)")
    return image, steps


def prepare_image(source, size: int | tuple[int, int], channels: int = 3) -> PreparedImage:
    """Turn any image source into a float32 tensor [channels, H, W] in [0, 1] (see the module recipe).

    Args:
        source: PIL image, path, numpy array or torch tensor (one image).
        size: target (height, width), or one int for a square.
        channels: 3 (RGB) or 1 (grayscale), the world's image channels.
    """
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    image, steps = _read(source, "the image")
    original_size, original_mode = image.size, image.mode
    try:
        rgb = to_rgb(image)
    except ValueError as err:
        raise ValueError(f"cannot use this image (mode {image.mode}): {err}") from err
    how = {"RGBA": " (alpha composited on white)", "LA": " (alpha composited on white)",
           "PA": " (alpha composited on white)", "I;16": " (16-bit rescaled to 8-bit)",
           "I": " (32-bit integers rescaled to 8-bit)"}.get(image.mode, "")
    if image.mode == "P" and "transparency" in image.info:
        how = " (transparency composited on white)"
    if channels == 1:
        rgb = rgb.convert("L")  # exact for an L source (to_rgb only replicated it)
        if image.mode != "L":
            steps.append(f"converted mode {image.mode} to grayscale (L) for a 1-channel world{how}")
    elif image.mode != "RGB":
        steps.append(f"converted mode {image.mode} to RGB{how}")
    out, resize_steps = _centre_crop_resize(rgb, height, width)
    steps += resize_steps
    a = np.asarray(out, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(a.copy()).unsqueeze(0) if a.ndim == 2 else torch.from_numpy(a.transpose(2, 0, 1).copy())
    return PreparedImage(tensor, steps, original_size, original_mode)


def world_image_format(world) -> tuple[tuple[int, int], int]:
    """(image size (H, W), image channels) of a World: 3 with a VAE, the sample's channels in pixel space."""
    channels = world.vae.config.in_channels if world.vae is not None else world.latent_shape[0]
    return world.image_size, channels


def load_images(sources, world, verbose: bool = False) -> tuple[Tensor, list[PreparedImage]]:
    """Prepare one source or a list of them for ``world``: a batch [B, C, H, W] in [0, 1] and the reports.

    ``verbose`` prints what was done to each image.
    """
    if not isinstance(sources, (list, tuple)):
        sources = [sources]
    size, channels = world_image_format(world)
    prepared = [prepare_image(s, size, channels) for s in sources]
    if verbose:
        for i, p in enumerate(prepared):
            print(f"image {i}: {p}")
    return torch.stack([p.image for p in prepared]), prepared
