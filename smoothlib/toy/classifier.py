"""A quality measure for the toy world that needs nothing from the network.

A small CNN digit classifier, trained by this project on the toy's training
split (``scripts/make_toy_world.py``), gives the toy's analogues of the paper's
two quality numbers:

- :func:`prompt_adherence`: the share of generated images classified as the
  prompted digit (the analogue of CLIP score);
- :func:`frechet_distance`: the Frechet distance between Gaussian fits of real
  and generated images in the classifier's 64-dimensional penultimate feature
  space (the analogue of FID, Heusel et al. 2017).

Images are [B, 1, 16, 16] tensors; say which range they use with
``value_range="01"`` ([0, 1], what :meth:`World.decode` returns; the default)
or ``value_range="pm1"`` ([-1, 1], the toy model's raw samples).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..metrics import frechet_from_features
from .assets import classifier_file, rebuild_hint
from .data import IMAGE_SIZE

FEATURE_DIM = 64
VALUE_RANGES = ("01", "pm1")


class DigitClassifier(nn.Module):
    """Four 3 x 3 convolutions (32, 32, 64, 64 channels, two 2 x 2 max-pools), a 64-d feature layer, 10 logits.

    Takes images in [0, 1]; :meth:`features` returns the penultimate activations.
    """

    def __init__(self):
        super().__init__()
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.body = nn.Sequential(conv(1, 32), conv(32, 32), nn.MaxPool2d(2),
                                  conv(32, 64), conv(64, 64), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Dropout(0.3), nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def check_images(images: torch.Tensor, value_range: str = "01") -> torch.Tensor:
    """Validate [B, 1, 16, 16] images in ``value_range`` and return them as float32 in [0, 1]."""
    if value_range not in VALUE_RANGES:
        raise ValueError(f"value_range must be one of {VALUE_RANGES}, got {value_range!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected toy images of shape [B, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], got {shape}")
    images = images.detach().float().cpu()
    if value_range == "pm1":
        images = images / 2 + 0.5
    lo, hi = images.min().item(), images.max().item()
    if lo < -0.05 or hi > 1.05:
        raise ValueError(f"images are not in the {'[-1, 1]' if value_range == 'pm1' else '[0, 1]'} range "
                         f"(min {lo:.3g}, max {hi:.3g}); pass the right value_range")
    return images.clamp(0, 1)


def load_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The trained classifier from ``data/classifier/model.safetensors``, frozen, in eval mode (cached)."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else classifier_file()
    key = str(path.resolve())
    if key not in _CACHE:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; {rebuild_hint()}")
        model = DigitClassifier()
        model.load_state_dict(load_file(path))
        _CACHE[key] = model.eval().requires_grad_(False)
    return _CACHE[key]


_CACHE: dict[str, DigitClassifier] = {}


@torch.no_grad()
def predict_digits(images: torch.Tensor, value_range: str = "01", classifier=None) -> torch.Tensor:
    """The classifier's digit (0-9) for each image."""
    classifier = classifier or load_classifier()
    return torch.cat([classifier(b).argmax(1) for b in check_images(images, value_range).split(512)])


def prompt_adherence(images: torch.Tensor, labels, value_range: str = "01", classifier=None) -> float:
    """Share of ``images`` classified as their prompted digit ``labels`` (our analogue of CLIP score)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return (predict_digits(images, value_range, classifier) == labels).float().mean().item()


@torch.no_grad()
def digit_features(images: torch.Tensor, value_range: str = "01", classifier=None) -> torch.Tensor:
    """Penultimate features [B, 64] (float64) of the classifier."""
    classifier = classifier or load_classifier()
    return torch.cat([classifier.features(b) for b in check_images(images, value_range).split(512)]).double()


def frechet_distance(real_images: torch.Tensor, generated_images: torch.Tensor, value_range: str = "01",
                     classifier=None) -> float:
    """Frechet distance of real vs generated images in the classifier's feature space (our analogue of FID).

    Like FID it is biased upwards for small sets: compare numbers computed on equally many images.
    """
    return frechet_from_features(digit_features(real_images, value_range, classifier),
                                 digit_features(generated_images, value_range, classifier))
