"""The toy world's miniature Table 1: smoothness (ISTD) beside quality (prompt adherence, Frechet distance).

Smooth Diffusion (Guo et al., CVPR 2024, Table 1) reports ISTD next to FID and CLIP score,
because a model can "win" ISTD by ceasing to make good images. The toy analogue, for
any model loaded in the toy world (the base, or the base with a LoRA):

1. items p = 0..P-1: the prompt "a handwritten <digit p mod 10>" and seed p, the same
   for every model compared (10 digits, P / 10 walks each);
2. the ISTD protocol (:func:`smoothlib.walks.istd_protocol`): two seeded
   noises per item, 11 slerp points, guided DDIM (50 steps, guidance ``TOY_GUIDANCE``),
   Euclidean distances of adjacent frames in [0, 1], population std per walk, mean;
3. beside ISTD, the walk's scale: the mean adjacent distance (the pixel-space analogue of
   PPL) and the distance between a walk's two end frames (how different two noises make
   the same prompt's image). A model that shrinks every walk also shrinks ISTD, so a
   lower ISTD reads as smoother only if these stay near the control's;
4. on the very same P x 11 frames: prompt adherence (share classified as the prompted
   digit) and the Frechet distance of their classifier features to the 500 held-out
   digits. The frames of one walk are correlated, so the Frechet number is only
   comparable between models measured on the same items, which is how it is used.

Differences between two models are paired item by item (:func:`paired_change`),
which removes most of the item-to-item spread from the comparison.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .data import digit_prompt
from .model import TOY_GUIDANCE

Tensor = torch.Tensor


@dataclass
class ToyScores:
    """One model's ISTD (mean and standard error over walks), adherence and Frechet distance."""
    istd: float
    istd_stderr: float
    adherence: float
    frechet: float
    num_pairs: int
    num_steps: int
    guidance_scale: float
    per_walk: list[float] = field(default_factory=list, repr=False)
    mean_step: float = float("nan")
    """Mean Euclidean distance between adjacent frames, over all walks (pixels in [0, 1])."""
    end_distance: float = float("nan")
    """Mean Euclidean distance between each walk's first and last frame."""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"ISTD {self.istd:.4f} +- {self.istd_stderr:.4f}, adherence {self.adherence:.3f}, "
                f"Frechet {self.frechet:.1f}, mean step {self.mean_step:.3f}, end distance {self.end_distance:.3f} "
                f"({self.num_pairs} walks, {self.num_steps} DDIM steps, "
                f"guidance {self.guidance_scale:g})")


def walk_items(num_pairs: int = 100) -> tuple[list[str], list[int]]:
    """The shared items: prompts "a handwritten <p mod 10>" and seeds p, for p < ``num_pairs``."""
    if num_pairs < 2:
        raise ValueError(f"need at least 2 walks for a mean with an error bar, got {num_pairs}")
    return [digit_prompt(p % 10) for p in range(num_pairs)], list(range(num_pairs))


@torch.no_grad()
def smoothness_and_quality(world, num_pairs: int = 100, num_steps: int = 50,
                           guidance_scale: float = TOY_GUIDANCE, batch_size: int = 110,
                           progress: bool = True, return_frames: bool = False):
    """Score the world's current model (LoRA as loaded) on the shared items; see the module docstring.

    Returns :class:`ToyScores`, or ``(scores, frames [P, 11, 1, 16, 16])`` with ``return_frames``.
    """
    from ..metrics import adjacent_distances
    from ..walks import istd_protocol
    from .classifier import frechet_distance, prompt_adherence
    from .data import load_heldout_digits

    prompts, seeds = walk_items(num_pairs)
    result = istd_protocol(world, prompts, seeds=seeds, guidance_scale=guidance_scale, num_steps=num_steps,
                           batch_size=batch_size, return_frames=True, progress=progress)
    frames = result.frames
    images = frames.flatten(0, 1)
    labels = torch.tensor([p % 10 for p in range(num_pairs)]).repeat_interleave(frames.shape[1])
    real, _ = load_heldout_digits()
    scores = ToyScores(istd=result.mean, istd_stderr=result.stderr, adherence=prompt_adherence(images, labels),
                       frechet=frechet_distance(real, images), num_pairs=num_pairs, num_steps=num_steps,
                       guidance_scale=guidance_scale, per_walk=result.scores.tolist(),
                       mean_step=adjacent_distances(frames).mean().item(),
                       end_distance=(frames[:, -1] - frames[:, 0]).flatten(1).norm(dim=1).mean().item())
    return (scores, frames) if return_frames else scores


def paired_change(model: list[float], reference: list[float]) -> tuple[float, float]:
    """Relative change of mean ISTD, model vs reference on the same walks, with its standard error.

    Returns (mean(model - reference) / mean(reference), s.e. of that ratio from the paired
    differences' sample std / sqrt(P)).
    """
    a, b = torch.tensor(model, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"paired scores must be the same walks: got {a.numel()} and {b.numel()}")
    d, base = a - b, b.mean()
    return (d.mean() / base).item(), (d.std(correction=1) / math.sqrt(d.numel()) / base).item()
