"""Pictures: image grids from tensors, saved as PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image [C, H, W] with values in [0, 1] (C = 1 or 3) as a PIL image."""
    a = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    if a.shape[0] == 1:
        return Image.fromarray(a[0], mode="L")
    return Image.fromarray(a.transpose(1, 2, 0), mode="RGB")


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile a batch [B, C, H, W] in [0, 1] into one image, ``nrow`` images per row, enlarged ``scale`` times.

    diffusers' ``make_image_grid`` does the tiling; each image first gets a white ``pad`` on its
    right and bottom (and the grid one on its left and top), and a last row that is not full is
    filled with white tiles.
    """
    from diffusers.utils import make_image_grid

    if images.ndim != 4:
        raise ValueError(f"image_grid expects [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    tiles = [ImageOps.expand(to_pil(im), border=(0, 0, pad, pad), fill="white") for im in images]
    tiles += [Image.new(tiles[0].mode, tiles[0].size, "white")] * (rows * nrow - b)
    grid = ImageOps.expand(make_image_grid(tiles, rows, nrow), border=(pad, pad, 0, 0), fill="white")
    grid = grid.convert("L") if c == 1 else grid
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale > 1 else grid


def save_grid(images: torch.Tensor, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, **kwargs).save(path)
    return path


def show_rows(rows: dict[str, torch.Tensor], captions: list[str] | None = None, size: float = 1.2,
              columns: dict[str, list[int]] | None = None, title: str | None = None):
    """Plot several batches [F, C, H, W] in [0, 1] as labelled rows (matplotlib); returns the figure.

    ``captions`` (one per column) go above the top row, e.g. the interpolation weights.
    ``columns`` places a shorter row's images in chosen columns, e.g. ``{"inputs": [0, -1]}``
    puts a walk's two input images under its first and last frame; other rows fill from the left.
    Empty cells keep an image's shape, so that captions and rows stay aligned. ``title`` goes
    above everything, clear of the captions; the figure is widened for long row labels.
    """
    import matplotlib.pyplot as plt

    columns = columns or {}
    ncol = max(len(r) for r in rows.values())
    unknown = set(columns) - set(rows)
    if unknown:
        raise ValueError(f"columns names rows that are not there: {sorted(unknown)}")
    label_width = 0.09 * max(len(label) for label in rows)   # inches for the row labels at font size 9
    width = max(size * ncol + label_width, 0.1 * len(title or "") + 0.5)   # and for the title at size 10
    height = size * len(rows) + 0.3 + (0.3 if title else 0.0)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(width, height), squeeze=False)
    for i, (label, images) in enumerate(rows.items()):
        where = [c % ncol for c in columns.get(label, range(len(images)))]
        if len(where) != len(images):
            raise ValueError(f"row {label!r} has {len(images)} images but columns gives {len(where)} places")
        shape = images.shape[-2:]
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j in where:
                im = images[where.index(j)].detach().float().clamp(0, 1).cpu()
                ax.imshow(im[0] if im.shape[0] == 1 else im.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            else:  # an invisible image of the same size: the cell keeps its shape
                ax.imshow(np.zeros(tuple(shape)), alpha=0.0, cmap="gray")
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if i == 0 and captions is not None and j < len(captions):
                ax.set_title(captions[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height) if title else None)
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


def plot_front(points, ax=None, short=None, title: str = "ISTD against Frechet distance"):
    """Each point's ISTD (s.e. over walks) against its Frechet distance (the seeds' spread), labelled.

    Points whose short label is "control" (the lambda = 0 runs, however trained) are grey crosses,
    labelled once ("controls").

    ``points``: objects with ``label``, ``istd``, ``istd_stderr``, ``frechet``, ``frechet_spread``
    (:func:`smoothlib.toy.front.front_points`); ``short(label)`` shortens a label for the plot.
    Lower left is better: smoother walks at a Frechet distance nearer the data's. Returns the axes.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 5))[1]
    labelled = set()
    for i, p in enumerate(points):
        label = short(p.label) if short else p.label
        control = label == "control"  # every control (however trained) in grey, labelled once
        color = "0.45" if control else f"C{i % 10}"
        ax.errorbar(p.frechet, p.istd, xerr=p.frechet_spread or None, yerr=p.istd_stderr, fmt="x" if control else "o",
                    capsize=3, color=color)
        if label not in labelled:
            labelled.add(label)
            ax.annotate(label + ("s" if control else ""), (p.frechet, p.istd), textcoords="offset points",
                        xytext=(5, 4) if i % 2 == 0 else (5, -10), fontsize=7, color=color)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if str(int(v))[0] in "2345" else ""))
    ax.set_xlabel("Frechet distance to held-out digits (log scale; lower: closer to the data)")
    ax.set_ylabel("ISTD (lower: smoother walks)")
    ax.set_title(title)
    return ax


def scrubber_html(rows: dict[str, torch.Tensor], captions: list[str] | None = None, size: int = 160,
                  interval_ms: int = 150) -> str:
    """A walk scrubber that needs no kernel: one slider (and Play) moving every row to the same frame.

    ``rows`` maps a label to frames [F, C, H, W] in [0, 1], all with the same F; ``captions``
    (F of them, e.g. the eta of each frame) show under the slider. The frames are embedded as PNG
    data URIs and a few lines of JavaScript swap them, so the page scrubs in a static HTML export,
    offline, as well as in Jupyter and Colab (``IPython.display.HTML(scrubber_html(...))``).
    Written by hand because ipywidgets' ``jslink`` needs the widget manager's JavaScript, which a
    static page would have to fetch from a CDN.
    """
    import base64
    import html
    import io
    import json
    import uuid

    counts = {len(frames) for frames in rows.values()}
    if len(counts) != 1:
        raise ValueError(f"every row needs the same number of frames, got {sorted(counts)}")
    (count,) = counts
    if captions is not None and len(captions) != count:
        raise ValueError(f"{len(captions)} captions for {count} frames")

    def uri(image: torch.Tensor) -> str:
        buf = io.BytesIO()
        to_pil(image).resize((size, size), Image.NEAREST).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    key = "scrub" + uuid.uuid4().hex[:8]
    frames = {label: [uri(im) for im in images] for label, images in rows.items()}
    figures = "".join(
        f'<figure style="display:inline-block;margin:4px;text-align:center">'
        f'<img id="{key}-{i}" src="{uris[0]}" width="{size}" height="{size}" alt="{html.escape(label)}, frame 0" '
        f'style="image-rendering:pixelated"><figcaption>{html.escape(label)}</figcaption></figure>'
        for i, (label, uris) in enumerate(frames.items()))
    labels = json.dumps(captions or [str(k) for k in range(count)]).replace("</", "<\\/")   # no "</script>" inside
    return f"""<div id="{key}">{figures}<div>
<button id="{key}-play">Play</button>
<input id="{key}-slider" type="range" min="0" max="{count - 1}" value="0" step="1" style="width:{max(2 * size, 240)}px">
<span id="{key}-label"></span></div>
<script>(function() {{
  const frames = {json.dumps(list(frames.values()))}, labels = {labels};
  const slider = document.getElementById("{key}-slider"), label = document.getElementById("{key}-label");
  function show(k) {{
    frames.forEach((row, i) => {{ document.getElementById("{key}-" + i).src = row[k]; }});
    label.textContent = labels[k];
  }}
  slider.addEventListener("input", () => show(+slider.value));
  let timer = null;
  document.getElementById("{key}-play").addEventListener("click", () => {{
    if (timer) {{ clearInterval(timer); timer = null; return; }}
    timer = setInterval(() => {{ slider.value = (+slider.value + 1) % {count}; show(+slider.value); }}, {interval_ms});
  }});
  show(0);
}})();</script></div>"""
