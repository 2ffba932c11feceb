"""Captioned image folders for training, with bad files skipped and counted, never fatal.

Two caption layouts are read:

* the release's: a JSONL file of ``{"file_name": ..., "caption": ...}`` lines;
* Hugging Face's imagefolder: ``metadata.jsonl`` in the image folder, with
  ``file_name`` and ``text`` (or ``caption``).

Each image is converted to RGB where that is safe (grayscale, palette,
16-bit; transparency is composited on white), its shorter side resized to the
training resolution, then cropped to a square (random crop as in the release,
or centre crop), and scaled to [-1, 1]. Files that are missing or cannot be
decoded are skipped and counted in ``skipped``; an empty data set is an error.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

CAPTION_KEYS = ("caption", "text")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white.

    Raises ValueError for modes with no safe conversion (e.g. multi-band float data).
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise ValueError("floating-point images (mode F) have no defined pixel range; convert them to 8-bit first")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, resolution: int, random_crop: bool = True,
                    rng: random.Random | None = None) -> Image.Image:
    """Resize the shorter side to ``resolution``, then crop a ``resolution`` square."""
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    if random_crop:
        rng = rng or random
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
    else:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float tensor [3, H, W] in [-1, 1]."""
    a = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 127.5 - 1.0
    return a.permute(2, 0, 1)


def read_captions(root: Path, captions: str | Path | None = None) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from a JSONL file (default: ``root/metadata.jsonl``)."""
    path = Path(captions) if captions is not None else root / "metadata.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no caption file at {path}: give a JSONL of "
                                '{"file_name": ..., "caption": ...} lines, or put metadata.jsonl in the folder')
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        key = next((k for k in CAPTION_KEYS if k in row), None)
        if "file_name" not in row or key is None:
            raise ValueError(f"{path}:{n}: each line needs 'file_name' and 'caption' (or 'text')")
        pairs.append((root / row["file_name"], str(row[key])))
    return pairs


class CaptionedImageFolder(torch.utils.data.Dataset):
    """Images with captions, ready for training: items are ``{"pixel_values", "caption"}``.

    Args:
        root: the image folder.
        resolution: square output size in pixels.
        captions: the JSONL file (default: ``root/metadata.jsonl``).
        random_crop: random (training, as the release) or centre crop.
        check: decode every image once now, so unreadable files are skipped up
            front and counted exactly ("auto": when there are at most 50,000).
        seed: seeds the random crops.
    """

    def __init__(self, root: str | Path, resolution: int = 512, captions: str | Path | None = None,
                 random_crop: bool = True, check: bool | str = "auto", seed: int = 0):
        self.root, self.resolution, self.random_crop = Path(root), resolution, random_crop
        pairs = read_captions(self.root, captions)
        if check == "auto":
            check = len(pairs) <= 50_000
        self.skipped: list[tuple[str, str]] = []
        self.items = [(p, c) for p, c in pairs if not check or self._readable(p)]
        if not self.items:
            raise ValueError(f"no usable images in {self.root} ({len(self.skipped)} skipped: "
                             f"{self.skipped[:3]}{' ...' if len(self.skipped) > 3 else ''})")
        self.rng = random.Random(seed)

    def _readable(self, path: Path) -> bool:
        try:
            with Image.open(path) as im:
                to_rgb(ImageOps.exif_transpose(im))
            return True
        except Exception as e:  # noqa: BLE001 - any decoding failure means: skip and count
            self.skipped.append((str(path), f"{type(e).__name__}: {e}"))
            return False

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, caption = self.items[i]
        with Image.open(path) as im:
            image = to_rgb(ImageOps.exif_transpose(im))
        image = resize_and_crop(image, self.resolution, self.random_crop, self.rng)
        return {"pixel_values": image_to_tensor(image), "caption": caption}
