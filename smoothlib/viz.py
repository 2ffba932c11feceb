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


def show_rows(rows: dict[str, torch.Tensor], captions: list[str] | None = None, size: float = 1.2):
    """Plot several batches [F, C, H, W] in [0, 1] as labelled rows (matplotlib); returns the figure.

    ``captions`` (one per column) go above the first row, e.g. the interpolation weights.
    """
    import matplotlib.pyplot as plt

    ncol = max(len(r) for r in rows.values())
    fig, axes = plt.subplots(len(rows), ncol, figsize=(size * ncol, size * len(rows) + 0.3), squeeze=False)
    for i, (label, images) in enumerate(rows.items()):
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(images):
                im = images[j].detach().float().clamp(0, 1).cpu()
                ax.imshow(im[0] if im.shape[0] == 1 else im.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if i == 0 and captions is not None and j < len(captions):
                ax.set_title(captions[j], fontsize=8)
    fig.tight_layout()
    return fig


def plot_distances(distances: dict[str, torch.Tensor], ax=None, title: str = "adjacent distances"):
    """Line plot of each walk's F - 1 adjacent distances (a jump shows as a spike); returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3))[1]
    for label, d in distances.items():
        d = torch.as_tensor(d).double().cpu()
        ax.plot(range(1, len(d) + 1), d, "o-", label=f"{label} (std {d.std(correction=0):.3f})")
    ax.set_xlabel("step k (frames k-1 -> k)")
    ax.set_ylabel("||I_k - I_(k-1)||")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax
