"""Peak memory and time of one Smooth LoRA step on Stable Diffusion 1.5's UNet architecture.

Builds the UNet from SD 1.5's config with random weights (no download), attaches
the release's LoRA (rank 8 on every attention projection), and runs one training
step, plain (lambda = 0) or regularized (lambda = 1), at a given latent size and
batch. Each configuration runs in a fresh process, so the peak resident memory
(CPU) or the peak allocated memory (CUDA) belongs to that step alone.

    python benchmarks/sd15_memory.py                       # CPU: 16x16 to 40x40 latents, batch 1
    python benchmarks/sd15_memory.py --sizes 64 --device cuda --dtype bf16

On the CPU the numbers are the memory of the math attention kernel the
regularizer needs; a GPU step with the same kernel holds the same tensors.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)


def one(size: int, batch: int, lam: float, device: str, dtype: str) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from smoothlib.lora import attach_lora
    from smoothlib.regularizer import StepVariationRegularizer
    from smoothlib.testing import tiny_scheduler
    from smoothlib.train_step import training_step

    torch.manual_seed(0)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    unet = UNet2DConditionModel(**SD15_UNET).to(device, dt)
    unet.requires_grad_(False)
    params = attach_lora(unet, rank=8)
    for p in params:
        p.data = p.data.float()
    unet.train()
    x_0 = torch.randn(batch, 4, size, size, device=device)
    emb = torch.randn(batch, 77, 768, device=device)
    reg = StepVariationRegularizer() if lam > 0 else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.autocast(device_type=device, dtype=dt, enabled=dt != torch.float32):
        out = training_step(unet, x_0, emb, tiny_scheduler(), reg, lam)
    out.loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak_gb = (torch.cuda.max_memory_allocated() - base) / 2**30
        what = "CUDA peak allocated above the weights"
    else:
        peak_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
        what = "CPU peak RSS above the loaded model"
    return {"size": size, "batch": batch, "lambda": lam, "dtype": dtype, "seconds": round(seconds, 2),
            "peak_gb": round(peak_gb, 2), "measures": what}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 40])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        size, lam = a.one.split(",")
        print(json.dumps(one(int(size), a.batch, float(lam), a.device, a.dtype)))
        return
    print("| latent | batch | dtype | plain s | plain GB | regularized s | regularized GB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for size in a.sizes:
        rows = {}
        for lam in (0.0, 1.0):
            cmd = [sys.executable, __file__, "--one", f"{size},{lam}", "--batch", str(a.batch),
                   "--device", a.device, "--dtype", a.dtype]
            rows[lam] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        p0, p1 = rows[0.0], rows[1.0]
        print(f"| {size}x{size} | {a.batch} | {a.dtype} | {p0['seconds']} | {p0['peak_gb']} | {p1['seconds']} | "
              f"{p1['peak_gb']} | {p1['peak_gb'] / max(p0['peak_gb'], 1e-9):.1f}x |", flush=True)
    print(f"\n(memory: {p1['measures']})")


if __name__ == "__main__":
    main()
