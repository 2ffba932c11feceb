"""The quality measured beside ISTD on the same frames, per world.

- toy world: prompt adherence (the share of frames the digit classifier reads as the prompted
  digit, the analogue of CLIP score) and the Frechet distance of the frames' classifier features
  to the 500 held-out digits (the analogue of FID), as in :mod:`smoothlib.toy.evaluation`;
- any other world: nothing beyond ISTD and the walks' scale (no CLIP or Inception model is
  loaded or downloaded), which :data:`NO_QUALITY` says in the report.

Per walk, :func:`walk_quality` keeps the adherence and the frames' features, so walks scored by
different processes can be merged; :func:`model_quality` turns the merged walks into the numbers.
"""
from __future__ import annotations

import torch

from .models import EvalInputError

TOY_QUALITY = ("prompt adherence (share of frames the digit classifier reads as the prompted digit) and the "
               "Frechet distance of the frames' classifier features to the 500 held-out digits")
NO_QUALITY = ("none: ISTD and the walks' scale only (no image-quality model is loaded in this world; "
              "compare FID / CLIP score with a tool of your choice on the same prompts and seeds)")


def quality_note(world) -> str:
    """What the quality columns measure in ``world``."""
    return TOY_QUALITY if world.name == "toy" else NO_QUALITY


def digit_labels(prompts: list[str]) -> list[int]:
    """The digit each toy prompt names ("a handwritten seven" -> 7); a prompt naming none raises."""
    from ..toy.data import DIGIT_NAMES

    labels = []
    for p in prompts:
        named = [d for d, name in enumerate(DIGIT_NAMES) if name in p.lower().split()]
        if len(named) != 1:
            raise EvalInputError(f"--prompts: the toy world's prompt {p!r} must name exactly one digit "
                                 f"({', '.join(DIGIT_NAMES)}) for prompt adherence")
        labels.append(named[0])
    return labels


def walk_quality(world, frames: torch.Tensor, prompts: list[str]) -> list[dict]:
    """Per walk (frames [P, F, C, H, W] in [0, 1]): {"adherence", "features" [F, 64]}; empty dicts off the toy world."""
    if world.name != "toy":
        return [{} for _ in prompts]
    from ..toy.classifier import digit_features, predict_digits

    labels = torch.tensor(digit_labels(prompts)).repeat_interleave(frames.shape[1])
    images = frames.flatten(0, 1)
    hits = (predict_digits(images) == labels).double().reshape(frames.shape[:2]).mean(1)
    feats = digit_features(images).reshape(*frames.shape[:2], -1)
    return [{"adherence": h.item(), "features": f.tolist()} for h, f in zip(hits, feats)]


def model_quality(world, walks: list[dict]) -> dict:
    """The model's quality from its merged walks: {"adherence", "frechet"} on the toy world, else {}.

    Adherence is the mean of the walks' shares (every walk has the same number of frames, so it
    is the share over all frames); the features leave the walks here.
    """
    if world.name != "toy":
        return {}
    from ..metrics import frechet_from_features
    from ..toy.classifier import digit_features
    from ..toy.data import load_heldout_digits

    real, _ = load_heldout_digits()
    generated = torch.tensor([f for w in walks for f in w.pop("features")], dtype=torch.float64)
    return {"adherence": sum(w["adherence"] for w in walks) / len(walks),
            "frechet": frechet_from_features(digit_features(real), generated)}
