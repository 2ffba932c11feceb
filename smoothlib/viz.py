"""Pictures: image grids from tensors, saved as PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image [C, H, W] with values in [0, 1] (C = 1 or 3) as a PIL image."""
    a = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    if a.shape[0] == 1:
        return Image.fromarray(a[0], mode="L")
    return Image.fromarray(a.transpose(1, 2, 0), mode="RGB")


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile a batch [B, C, H, W] in [0, 1] into one image, ``nrow`` images per row, enlarged ``scale`` times."""
    if images.ndim != 4:
        raise ValueError(f"image_grid expects [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, im in enumerate(images):
        y, x = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, y:y + h, x:x + w] = im.detach().float().cpu()
    out = to_pil(grid)
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale > 1 else out


def save_grid(images: torch.Tensor, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, **kwargs).save(path)
    return path
