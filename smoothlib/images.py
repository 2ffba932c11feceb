"""Real images a user drops in, made ready for a World: any size and mode in, [C, H, W] in [0, 1] out.

Recipe (:func:`prepare_image`), each step recorded in the returned report:

1. read the source (the accepted forms are listed in :func:`prepare_image`); a PIL image or
   file is turned upright by its EXIF orientation (``PIL.ImageOps.exif_transpose``, as
   training does);
2. convert the mode to RGB with :func:`smoothlib.data.to_rgb` (alpha composited on white,
   16-bit rescaled, palette and CMYK converted), then to grayscale ("L") when the world
   has one channel;
3. centre-crop to the target aspect ratio, then resize (bicubic) to the world's image size;
4. scale to float32 in [0, 1].

Inputs with no safe meaning are refused with a message that says what to do: mode-F
images (no defined pixel range), arrays with 4 or more axes, float data outside [0, 1]
or with NaN, a torch tensor laid out [H, W, C], paths that are not regular files.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps

from .data import file_problem, to_rgb

Tensor = torch.Tensor

_EXIF_ORIENTATION = 0x0112


@dataclass
class PreparedImage:
    """An image ready for ``world.encode``: ``image`` [C, H, W] float32 in [0, 1], and what was done."""
    image: Tensor
    steps: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    """(width, height) of the source as stored, before the EXIF orientation is applied (PIL's order)."""
    original_mode: str = ""

    def __str__(self) -> str:
        return "; ".join(self.steps) if self.steps else "used as is"


def _array_to_pil(a: np.ndarray, what: str) -> tuple[Image.Image, list[str]]:
    steps = []
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        hint = ("; it looks like [C, H, W]: pass a.transpose(1, 2, 0), or the torch tensor"
                if a.ndim == 3 and a.shape[0] in (1, 3, 4) else " (for a batch, pass the images one at a time)")
        raise ValueError(f"cannot read {what} of shape {a.shape} as one image: numpy arrays are read as "
                         f"[H, W] or [H, W, C] with C in 1, 3, 4{hint}")
    if a.dtype == bool:
        a, _ = a.astype(np.uint8) * 255, steps.append("boolean mask mapped to 0/255")
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{what} holds NaN or infinite values; fix or drop the image before using it")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"{what} holds floats outside [0, 1] (min {a.min():.4g}, max {a.max():.4g}), "
                             "which have no defined pixel range; rescale to [0, 1] or convert to uint8 first")
        a = np.round(a * 255).astype(np.uint8)
        steps.append("float values in [0, 1] quantised to 8 bit")
    elif a.dtype == np.uint16:
        return Image.fromarray(a if a.ndim == 2 else (a // 257).astype(np.uint8)), steps
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 255:
            raise ValueError(f"{what} of dtype {a.dtype} is not integers in 0..255; convert it to uint8 "
                             "(or to floats in [0, 1]) first")
        a = a.astype(np.uint8)
    return Image.fromarray(a), steps


def _tensor_to_array(t: Tensor, what: str) -> np.ndarray:
    """A tensor [H, W] or [C, H, W] (C in 1, 3, 4; torch's channels-first order) as a numpy [H, W(, C)]."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()  # bfloat16 has no numpy dtype; float16 and float64 give the same pixels
    if t.ndim == 3:
        if t.shape[0] not in (1, 3, 4):
            hint = ("; it looks like [H, W, C]: pass t.permute(2, 0, 1), or the numpy array"
                    if t.shape[-1] in (1, 3, 4) else "")
            raise ValueError(f"cannot read {what} of shape {tuple(t.shape)} as one image: torch tensors are "
                             f"read as [H, W] or [C, H, W] with C in 1, 3, 4{hint}")
        t = t.permute(1, 2, 0)
    return t.numpy()


def _read(source, what: str) -> tuple[Image.Image, list[str]]:
    if isinstance(source, Image.Image):
        return source, []
    if isinstance(source, (str, os.PathLike)):
        problem = file_problem(source)
        if problem == "missing":
            raise FileNotFoundError(f"no image file at {os.fspath(source)!r}")
        if problem:
            raise ValueError(f"{os.fspath(source)!r} is {problem}, not an image file; it was not opened")
        try:
            with Image.open(source) as im:
                im.load()
                return im, [f"read {os.fspath(source)}"]
        except (OSError, Image.UnidentifiedImageError) as err:
            raise ValueError(f"{os.fspath(source)!r} is not an image PIL can read ({err})") from err
    if isinstance(source, Tensor):
        return _array_to_pil(_tensor_to_array(source, what), what)
    if isinstance(source, np.ndarray):
        return _array_to_pil(source, what)
    raise TypeError(f"cannot read an image from {type(source).__name__}: pass a PIL image, a file path, "
                    "a numpy array or a torch tensor")


def _upright(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Apply the EXIF orientation tag (cameras store portrait photos sideways), as training does."""
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in (None, 1):
        return image, []
    return ImageOps.exif_transpose(image), [f"turned upright by its EXIF orientation ({orientation})"]


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
    """Turn one image source into a float32 tensor [channels, H, W] in [0, 1] (see the module recipe).

    Accepted sources (anything else raises a ValueError or TypeError that says what to do):

    - a PIL image of any mode but F (float pixels have no defined range); its EXIF orientation is applied;
    - a path to a regular file PIL can read (EXIF orientation applied); folders, FIFOs, sockets
      and devices are refused without being opened;
    - a numpy array, channels last: [H, W] or [H, W, C] with C in 1, 3, 4;
    - a torch tensor, channels first: [H, W] or [C, H, W] with C in 1, 3, 4 (a tensor whose
      layout looks like [H, W, C] is refused: permute it, or pass the numpy array);
    - array and tensor values: bool (0/255), uint8, uint16 (rescaled), other integers in 0..255,
      or floats of any precision (float16, bfloat16, float32, float64) in [0, 1] without NaN or inf.

    Args:
        source: one image, in a form above.
        size: target (height, width), or one int for a square.
        channels: 3 (RGB) or 1 (grayscale), the world's image channels; modes are converted.
    """
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(n, numbers.Integral) and n > 0 for n in (height, width)):
        raise ValueError(f"size must be a whole number of pixels > 0 (or a (height, width) pair of them), got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    image, steps = _read(source, "the image")
    original_size, original_mode = image.size, image.mode
    if 0 in image.size:
        raise ValueError(f"the image is empty: it has no pixels ({image.size[0]}x{image.size[1]}); pass an image of at least 1x1")
    image, turned = _upright(image)
    steps += turned
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

    Each source is one image in a form :func:`prepare_image` accepts (a batch tensor is not one
    image: pass ``list(batch)``). ``verbose`` prints what was done to each image.
    """
    if not isinstance(sources, (list, tuple)):
        sources = [sources]
    size, channels = world_image_format(world)
    prepared = [prepare_image(s, size, channels) for s in sources]
    if verbose:
        for i, p in enumerate(prepared):
            print(f"image {i}: {p}")
    return torch.stack([p.image for p in prepared]), prepared


def as_world_images(images, world, what: str = "images") -> Tensor:
    """Images for ``world.encode``: a float32 batch [B, C, H, W] in [0, 1] of the world's size and channels.

    ``images``: a tensor [B, C, H, W] or [C, H, W] (any float dtype, bfloat16 included), or one
    source or a list of sources :func:`load_images` reads. A float tensor already of the world's
    channels and size is used as it is (as float32); any other tensor, e.g. RGB on the
    1-channel toy world, goes through :func:`load_images` image by image (converted, cropped,
    resized, quantised to 8 bit). NaN or infinite values are refused.
    """
    if not isinstance(images, Tensor):
        return load_images(images, world)[0]
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise ValueError(f"NaN or infinite values in {what}; fix or drop those images first")
    batch = images.unsqueeze(0) if images.ndim == 3 else images
    if batch.ndim != 4:
        raise ValueError(f"{what} must be one image [C, H, W] or a batch [B, C, H, W], got shape {tuple(images.shape)}")
    size, channels = world_image_format(world)
    if (batch.is_floating_point() and tuple(batch.shape[1:]) == (channels, *size)
            and batch.min() >= 0 and batch.max() <= 1):
        return batch.float()
    return load_images(list(batch), world)[0]
