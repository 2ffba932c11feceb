"""Captioned image folders for training, with bad files skipped and counted, never fatal.

Two caption layouts are read:

* the release's: a JSONL file of ``{"file_name": ..., "caption": ...}`` lines;
* Hugging Face's imagefolder: ``metadata.jsonl`` in the image folder, with
  ``file_name`` and ``text`` (or ``caption``).

A caption file is UTF-8 (a byte-order mark is accepted), one JSON object per line; a
``file_name`` is relative to the image folder and may not leave it (no absolute paths, no
``..`` above it) unless ``allow_outside_root=True``; a caption is a string (``""`` for none).
A line that breaks these rules is an error naming the file and line.

Each image is turned upright by its EXIF orientation, converted to RGB where that is safe
(grayscale, palette, 16-bit; transparency is composited on white), its shorter side resized
to the training resolution, then cropped to a square (random crop as in the release, or
centre crop), and scaled to [-1, 1]. Listed files that are missing, are not regular files
(folders, FIFOs, devices: never opened) or cannot be decoded are skipped and counted in
``skipped``; image files in the folder that the caption file does not list are counted in
``uncaptioned`` with a warning. An empty data set is an error.
"""
from __future__ import annotations

import json
import os
import random
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

CAPTION_KEYS = ("caption", "text")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File suffixes counted as images when looking for files the caption file does not list."""

_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_problem(path) -> str | None:
    """Why ``path`` is not a readable regular file: ``None`` if it is one, ``"missing"``, or what is there.

    Decided by ``stat`` alone, so nothing is opened: opening a FIFO would wait for a writer forever.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"not accessible ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")


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


def caption_file(root: Path, captions: str | Path | None = None) -> Path:
    """The caption file: ``captions``, or ``root/metadata.jsonl``."""
    return Path(captions) if captions is not None else Path(root) / "metadata.jsonl"


def _image_path(root: Path, name, where: str, allow_outside_root: bool) -> Path:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'file_name' must be a non-empty string, got {json.dumps(name)}")
    rel = os.path.normpath(name)
    if not allow_outside_root and (os.path.isabs(rel) or rel == os.pardir or rel.startswith(os.pardir + os.sep)):
        raise ValueError(f"{where}: file_name {name!r} points outside the data folder {root}; file names "
                         "must be relative to the folder, with no '..' that leaves it (pass "
                         "allow_outside_root=True only if you trust the caption file)")
    return Path(os.path.normpath(os.path.join(root, name)))


def read_captions(root: Path, captions: str | Path | None = None,
                  allow_outside_root: bool = False) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from a JSONL file (default: ``root/metadata.jsonl``).

    The file's rules are in the module docstring; any line that breaks them raises a
    ValueError naming ``file:line``.
    """
    root, path = Path(root), caption_file(root, captions)
    problem = file_problem(path)
    if problem == "missing":
        raise FileNotFoundError(f"no caption file at {path}: give a JSONL of "
                                '{"file_name": ..., "caption": ...} lines, or put metadata.jsonl in the folder')
    if problem:
        raise ValueError(f"the caption file {path} is {problem}, not a regular file; it was not opened")
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{raw[err.start]:02x}); save the caption file as "
                         "UTF-8, e.g. `iconv -f latin1 -t utf-8 old.jsonl > new.jsonl` for a Latin-1 file") from None
    pairs = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): it also splits at U+2028 inside captions
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg}, column {err.colno}); each line must be one "
                             'object such as {"file_name": "a.png", "caption": "a cat"}') from None
        key = next((k for k in CAPTION_KEYS if k in row), None) if isinstance(row, dict) else None
        if key is None or "file_name" not in row:
            raise ValueError(f"{where}: each line needs 'file_name' and 'caption' (or 'text')")
        caption = row[key]
        if not isinstance(caption, str):
            raise ValueError(f"{where}: the {key!r} is {json.dumps(caption)}, not a string; write the caption "
                             'as text ("" for an empty caption)')
        pairs.append((_image_path(root, row["file_name"], where, allow_outside_root), caption))
    if not pairs:
        raise ValueError(f"the caption file {path} holds no caption lines (it is empty or blank); write one "
                         '{"file_name": "a.png", "caption": "a cat"} object per line')
    return pairs


def uncaptioned_images(root: Path, pairs: list[tuple[Path, str]]) -> list[Path]:
    """Image files (by :data:`IMAGE_SUFFIXES`) under ``root`` that no caption line names; none is opened."""
    listed = {os.path.abspath(p) for p, _ in pairs}
    found = []
    for folder, _, names in os.walk(root):
        found += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES
                  and os.path.abspath(os.path.join(folder, n)) not in listed
                  and file_problem(os.path.join(folder, n)) is None]
    return sorted(found)


class CaptionedImageFolder(torch.utils.data.Dataset):
    """Images with captions, ready for training: items are ``{"pixel_values", "caption"}``.

    Args:
        root: the image folder.
        resolution: square output size in pixels.
        captions: the JSONL file (default: ``root/metadata.jsonl``); its rules are in the module docstring.
        random_crop: random (training, as the release) or centre crop.
        check: decode every image once now, so unreadable files are skipped up
            front and counted exactly ("auto": when there are at most 50,000).
            Missing and non-regular files are skipped in any case.
        seed: seeds the random crops.
        allow_outside_root: accept ``file_name`` entries that leave ``root`` (absolute paths,
            ``..``); off by default, so a caption file cannot make training read other files.

    ``skipped`` lists (path, reason) of listed files not used; ``uncaptioned`` the image files
    in ``root`` the caption file does not list (not used; a warning names the first few).
    """

    def __init__(self, root: str | Path, resolution: int = 512, captions: str | Path | None = None,
                 random_crop: bool = True, check: bool | str = "auto", seed: int = 0,
                 allow_outside_root: bool = False):
        self.root, self.resolution, self.random_crop = Path(root), resolution, random_crop
        pairs = read_captions(self.root, captions, allow_outside_root)
        if check == "auto":
            check = len(pairs) <= 50_000
        self.skipped: list[tuple[str, str]] = []
        self.items = [(p, c) for p, c in pairs if self._usable(p, decode=check)]
        self.uncaptioned = uncaptioned_images(self.root, pairs)
        if self.uncaptioned:
            names = ", ".join(str(p.relative_to(self.root)) for p in self.uncaptioned[:5])
            warnings.warn(f"{len(self.uncaptioned)} image file(s) in {self.root} have no line in "
                          f"{caption_file(self.root, captions)} and are not used: {names}"
                          f"{' ...' if len(self.uncaptioned) > 5 else ''}; add them to the caption file "
                          "or move them out of the folder", stacklevel=2)
        if not self.items:
            raise ValueError(f"no usable images in {self.root} ({len(self.skipped)} skipped: "
                             f"{self.skipped[:3]}{' ...' if len(self.skipped) > 3 else ''})")
        self.rng = random.Random(seed)

    def _usable(self, path: Path, decode: bool) -> bool:
        problem = file_problem(path)
        if problem:
            reason = problem if problem == "missing" else f"{problem}, not an image file; not opened"
            self.skipped.append((str(path), reason))
            return False
        if not decode:
            return True
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
