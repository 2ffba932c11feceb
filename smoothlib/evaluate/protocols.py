"""The two protocols of the paper's tables, scored item by item on a loaded world.

Table 1 (smoothness beside quality), for the model the world holds now:

1. items p = 0..P-1: a prompt and a seed each, the same for every model compared;
2. the ISTD protocol (:func:`smoothlib.walks.istd_protocol`) on this process's items: two seeded
   noises per item, F slerp frames, guided DDIM, frames in [0, 1], population std of the
   adjacent Euclidean distances;
3. per walk: ISTD, its mean adjacent step, the distance between its end frames, and the world's
   quality on the same frames (:mod:`smoothlib.evaluate.quality`);
4. per model (:func:`summarize_istd`, after the walks of all processes are merged): the means,
   ISTD's standard error, ISTD / mean step, the quality.

Table 2 (reconstruction), for the model the world holds now:

1. items: images [N, C, H, W] in [0, 1] with one caption each;
2. per method ("ddim", "nti"): :func:`smoothlib.inversion.reconstruction_protocol` on this
   process's images (invert, sample back with guidance w, decode), timed;
3. per image: MSE on [-1, 1], PSNR, SSIM (LPIPS with a callable), and the seconds per image;
   latent worlds add "vae" (encode-decode only, the ceiling);
4. per model (:func:`summarize_reconstruction`): the means over images.
"""
from __future__ import annotations

import math
import time

import torch

from ..inversion import METHODS, reconstruction_protocol
from ..metrics import adjacent_distances
from ..walks import istd_protocol
from .quality import model_quality, walk_quality


def istd_records(world, prompts: list[str], seeds: list[int], indices: list[int], num_frames: int = 11,
                 guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 8,
                 progress: bool = True) -> list[dict]:
    """Steps 2-3 of Table 1 for the items ``indices``: one record per walk."""
    if not indices:
        return []
    mine = [prompts[i] for i in indices]
    result = istd_protocol(world, mine, seeds=[seeds[i] for i in indices], num_frames=num_frames,
                           guidance_scale=guidance_scale, num_steps=num_steps, batch_size=batch_size,
                           return_frames=True, progress=progress)
    frames = result.frames.float().cpu()
    step = adjacent_distances(frames).mean(1)
    ends = (frames[:, -1] - frames[:, 0]).flatten(1).norm(dim=1)
    quality = walk_quality(world, frames, mine)
    return [{"index": i, "prompt": p, "seed": seeds[i], "istd": s.item(), "mean_step": m.item(),
             "end_distance": e.item(), **q}
            for i, p, s, m, e, q in zip(indices, mine, result.scores, step, ends, quality)]


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    x = torch.tensor(values, dtype=torch.float64)
    return x.mean().item(), (x.std(correction=1).item() / math.sqrt(x.numel()) if x.numel() > 1 else float("nan"))


def summarize_istd(world, walks: list[dict]) -> dict:
    """Step 4 of Table 1 from the merged walks (their features are consumed by the quality)."""
    istd, stderr = _mean_and_stderr([w["istd"] for w in walks])
    step = sum(w["mean_step"] for w in walks) / len(walks)
    return {"istd": istd, "istd_stderr": stderr, "mean_step": step,
            "end_distance": sum(w["end_distance"] for w in walks) / len(walks),
            "istd_per_step": istd / step if step > 0 else float("nan"),
            **model_quality(world, walks), "num_walks": len(walks)}


def reconstruction_records(world, images: torch.Tensor, prompts: list[str], indices: list[int],
                           methods=METHODS, guidance_scale: float = 7.5, num_steps: int = 50,
                           batch_size: int = 4, lpips=None, progress: bool = True) -> list[dict]:
    """Steps 2-3 of Table 2 for the images ``indices``: one record per image, a dict of metrics per method."""
    if not indices:
        return []
    mine, captions = images[indices], [prompts[i] for i in indices]
    records = [{"index": i, "prompt": c} for i, c in zip(indices, captions)]
    for m in methods:
        start = time.perf_counter()
        report = reconstruction_protocol(world, mine, captions, methods=(m,), guidance_scale=guidance_scale,
                                         num_steps=num_steps, batch_size=batch_size, lpips=lpips,
                                         progress=progress)
        seconds = (time.perf_counter() - start) / len(indices)
        for name, metrics in report.per_image.items():
            if name in records[0]:
                continue   # "vae" comes with every method's call; keep the first
            for k, r in enumerate(records):
                r[name] = {key: v[k].item() for key, v in metrics.items()}
                if name == m:
                    r[name]["seconds"] = seconds
    return records


def summarize_reconstruction(world, images: list[dict]) -> dict:
    """Step 4 of Table 2: per method, the mean of each metric over the images."""
    methods = [k for k in images[0] if k not in ("index", "prompt")]
    return {m: {key: sum(r[m][key] for r in images) / len(images) for key in images[0][m]} for m in methods} \
        | {"num_images": len(images)}
