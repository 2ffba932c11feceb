"""A walk as a file for slides and papers: an animated GIF or an MP4 video, through diffusers' export helpers.

    from smoothlib.export import export_walk
    export_walk(frames, "walk.gif")                    # Pillow only
    export_walk(frames, "walk.mp4", fps=12)            # imageio + imageio-ffmpeg: pip install "smoothlib[video]"

Recipe of :func:`export_walk`:
1. frames [F, C, H, W] in [0, 1] (one or three channels) become RGB PIL images, enlarged with
   nearest-neighbour sampling to ``size`` pixels on the longer side (default: at least 128),
   rounded up to a multiple of 16 for MP4, where most codecs need it;
2. with ``boomerang`` (default) the frames run forward and back (F, F - 1, ..., 2), so the loop
   has no seam;
3. ``.gif`` goes through ``diffusers.utils.export_to_gif``, ``.mp4`` through
   ``diffusers.utils.export_to_video`` (imageio's ffmpeg writer; the ``imageio-ffmpeg`` wheel
   carries its own ffmpeg binary, so no system install is needed).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from .viz import to_pil

SUFFIXES = (".gif", ".mp4")
MACRO_BLOCK = 16
"""MP4 frame sides are made a multiple of this (the H.264 macroblock)."""


def walk_images(frames: torch.Tensor, size: int | None = None, multiple: int = 1) -> list[Image.Image]:
    """Frames [F, C, H, W] in [0, 1] as RGB PIL images, the longer side ``size`` (default >= 128), a multiple of ``multiple``."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] not in (1, 3):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a tensor [F, C, H, W] with C = 1 or 3, got {shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"a walk needs at least 2 frames, got {frames.shape[0]}")
    if not torch.isfinite(frames).all():
        raise ValueError("frames hold NaN or infinite values")
    height, width = frames.shape[-2:]
    longer = max(height, width)
    size = size or longer * math.ceil(128 / longer)
    if size < 1:
        raise ValueError(f"size must be a number of pixels >= 1, got {size}")
    new_h, new_w = (math.ceil(side * size / longer / multiple) * multiple for side in (height, width))
    return [to_pil(f).convert("RGB").resize((new_w, new_h), Image.NEAREST) for f in frames]


def export_walk(frames: torch.Tensor, path: str | Path, fps: int = 8, size: int | None = None,
                boomerang: bool = True) -> Path:
    """Write a walk's frames [F, C, H, W] in [0, 1] to ``path`` (``.gif`` or ``.mp4``); return the path.

    See the module docstring for the steps. ``fps``: frames per second (> 0).
    """
    from diffusers.utils import export_to_gif, export_to_video

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"path {str(path)!r}: use a .gif or .mp4 file name")
    if not (isinstance(fps, int) and fps > 0):
        raise ValueError(f"fps must be an integer > 0, got {fps!r}")
    video = path.suffix.lower() == ".mp4"
    images = walk_images(frames, size, MACRO_BLOCK if video else 1)
    if boomerang:
        images = images + images[-2:0:-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not video:
        return Path(export_to_gif(images, str(path), fps=fps))
    try:
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio's writer uses)
    except ImportError as err:
        raise ImportError("MP4 export needs imageio and imageio-ffmpeg: pip install \"smoothlib[video]\" "
                          "(or write a .gif, which needs only Pillow)") from err
    return Path(export_to_video(images, str(path), fps=fps))
