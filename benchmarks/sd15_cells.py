"""Peak memory of the course's Stable Diffusion cells that differentiate, on SD 1.5's architecture.

Each cell that takes a gradient through the UNet in the SD world is run once on SD 1.5's
UNet built from its config (random weights, no download), at 64x64 latents (512 px), in
float32 (the precision these cells run in: a float16 world is upcast for them):

- ``r``: notebook 02's scale-fact cell, ``variation_at`` (one VJP, any attention kernel);
- ``nti``: one inner step of null-text inversion (notebooks 04 shared with 2 images, 05 and 06),
  through the library's ``null_text_inversion`` with one step and one inner step;
- ``r-math``: the same VJP under the math attention kernel, for comparison.

Each configuration runs in a fresh process; the figure is the peak resident memory
above the loaded UNet (CPU) or the peak allocated memory above the weights (CUDA).

    python benchmarks/sd15_cells.py                    # CPU, batch 1 and 2
    python benchmarks/sd15_cells.py --device cuda      # on a GPU, unchanged
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from sd15_memory import SD15_UNET

CELLS = ("r", "nti", "r-math")


def one(cell: str, batch: int, size: int, device: str) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from smoothlib.attention import double_backward_attention
    from smoothlib.inversion import null_text_inversion
    from smoothlib.regularizer import variation_at
    from smoothlib.testing import tiny_scheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": size}).to(device).eval().requires_grad_(False)
    scheduler = tiny_scheduler()
    x_0 = torch.randn(batch, 4, size, size, device=device)
    cond = torch.randn(batch, 77, 768, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if cell == "r":
        variation_at(unet, scheduler, x_0, cond, torch.full((batch,), 500))
    elif cell == "r-math":
        with double_backward_attention(unet):
            variation_at(unet, scheduler, x_0, cond, torch.full((batch,), 500))
    else:
        null_text_inversion(unet, scheduler, x_0, cond, cond[:1], 7.5, num_steps=1, num_inner_steps=1,
                            shared=batch > 1, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
    return {"cell": cell, "batch": batch, "size": size, "seconds": round(time.perf_counter() - start, 1),
            "peak_gb": round(peak, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        cell, batch = a.one.split(",")
        print(json.dumps(one(cell, int(batch), a.size, a.device)))
        return
    print(f"| cell | batch | latent | seconds ({a.device}) | peak GB above the weights |")
    print("|---|---|---|---|---|")
    for cell in a.cells:
        for batch in a.batches:
            cmd = [sys.executable, __file__, "--one", f"{cell},{batch}", "--size", str(a.size), "--device", a.device]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            print(f"| {cell} | {batch} | {a.size}x{a.size} | {r['seconds']} | {r['peak_gb']} |", flush=True)


if __name__ == "__main__":
    main()
