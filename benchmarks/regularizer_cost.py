"""What the Step-wise Variation Regularizer costs, and what range of r to expect.

    python benchmarks/regularizer_cost.py            # cost table, then r over t
    python benchmarks/regularizer_cost.py --quick    # fewer repeats
    OMP_NUM_THREADS=1 python benchmarks/regularizer_cost.py --repeats 5 --no-r   # the docs' table
    OMP_NUM_THREADS=1 python benchmarks/regularizer_cost.py --repeats 5 --no-r --models data/toy   # the shipped toy UNet only
    OMP_NUM_THREADS=1 python benchmarks/regularizer_cost.py --repeats 9 --no-r --models data/toy --settings "first order" "exact, every"

Cost: one training step (``smoothlib.training_step`` + ``loss.backward()`` +
AdamW step on rank-8 LoRA weights) for each setting, as a ratio to the plain
LoRA step measured in the same run, configurations interleaved so that machine
load hits them alike:

* plain: lambda = 0 (no double backward), PyTorch's default attention kernel;
* plain, math attention: the same under the math SDPA kernel that the
  regularizer needs, to separate the kernel's cost from the double backward's;
* plain, checkpointing: lambda = 0 with the UNet's gradient checkpointing;
* exact, every step: lambda = 1, the release's setting (exact estimator);
* exact, lazy k = 4: the regularizer on one step in four with weight 4; time
  is the mean over a window of four steps (peak memory: the window's peak);
* exact, sub-batch half: the regularizer on the first half of each batch;
* first order: ``estimator="finite_difference"`` (a second forward, ordinary
  backward, default attention kernel) every step, on a sub-batch (a quarter, half,
  five eighths, three quarters of each batch: StyleGAN2's path-length batch shrink, every step
  regularized), lazy k = 4, with gradient checkpointing, and both.

``--settings WORD ...`` times only the settings whose name contains a word (the plain
step always runs: it is every ratio's base).

Time is the median over repeats after one warm-up. Memory is the peak of tensor
storage allocated during one step (one window of four for lazy) and alive at
once, counted op by op by :class:`PeakTensorMemory` (CPU and CUDA alike; weights
and optimizer state that exist before the step, allocator caching and
non-tensor memory are not counted); on CUDA ``torch.cuda.max_memory_allocated``
is printed too.

r over t: mean r = ||d <x0_hat, y> / d eps|| in three timestep buckets for the
same (untrained, randomly initialised) UNets, beside the prefactor
(1 - alpha_bar_t) / sqrt(alpha_bar_t).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
import weakref

import peft
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from smoothlib.attention import double_backward_attention
from smoothlib.prediction import x0_and_eps
from smoothlib.regularizer import StepVariationRegularizer, direction, step_variation
from smoothlib.testing import tiny_scheduler, tiny_unet
from smoothlib.train_step import training_step

LORA = peft.LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                       target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def toy_unet():
    """A ~1M-parameter text-conditioned UNet on 1-channel 16x16 pixels (the course's toy scale)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
        layers_per_block=1, norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def toy_world_unet():
    """The toy world's shipped UNet (``data/toy/unet``, trained weights): what ``make_toy_lora.py`` trains on."""
    from diffusers import UNet2DConditionModel

    from smoothlib.toy import data_dir

    return UNet2DConditionModel.from_pretrained(data_dir() / "toy" / "unet")


def with_lora(unet):
    unet.requires_grad_(False)
    unet.add_adapter(LORA)
    return unet.train()


MODELS = {
    # name: (UNet factory, latent shape [C, H, W], batch size)
    "tiny SD UNet, 4x32x32 latents, batch 2": (lambda: tiny_unet(sample_size=32), (4, 32, 32), 2),
    "toy UNet, 1x16x16 pixels, batch 16": (toy_unet, (1, 16, 16), 16),
    "toy world UNet (data/toy), 1x16x16 pixels, batch 16": (toy_world_unet, (1, 16, 16), 16),
}

FD = "finite_difference"
SETTINGS = {
    # name: (lambda, regularizer factory, steps per measurement, math attention for the whole step,
    #        gradient checkpointing)
    "plain LoRA step": (0.0, lambda B: None, 1, False, False),
    "plain, math attention": (0.0, lambda B: None, 1, True, False),
    "plain, checkpointing": (0.0, lambda B: None, 1, False, True),
    "exact, every step": (1.0, lambda B: StepVariationRegularizer(), 1, False, False),
    "exact, lazy k = 4": (1.0, lambda B: StepVariationRegularizer(every=4), 4, False, False),
    "exact, sub-batch half": (1.0, lambda B: StepVariationRegularizer(sub_batch=B // 2), 1, False, False),
    "first order, every step": (1.0, lambda B: StepVariationRegularizer(estimator=FD), 1, False, False),
    "first order, sub-batch quarter": (1.0, lambda B: StepVariationRegularizer(estimator=FD, sub_batch=B // 4), 1,
                                       False, False),
    "first order, sub-batch half": (1.0, lambda B: StepVariationRegularizer(estimator=FD, sub_batch=B // 2), 1,
                                    False, False),
    "first order, sub-batch five eighths": (1.0, lambda B: StepVariationRegularizer(estimator=FD, sub_batch=5 * B // 8),
                                            1, False, False),
    "first order, sub-batch three quarters": (1.0, lambda B: StepVariationRegularizer(estimator=FD, sub_batch=3 * B // 4),
                                              1, False, False),
    "first order, lazy k = 4": (1.0, lambda B: StepVariationRegularizer(estimator=FD, every=4), 4, False, False),
    "first order, checkpointing": (1.0, lambda B: StepVariationRegularizer(estimator=FD), 1, False, True),
    "first order, lazy k = 4, checkpointing": (1.0, lambda B: StepVariationRegularizer(estimator=FD, every=4), 4,
                                               False, True),
}


def make_step(unet, shape, B, lam, reg, math_attention=False, checkpointing=False, seed=0):
    device = next(unet.parameters()).device
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, *shape, generator=g).to(device)
    cond = torch.randn(B, 8, unet.config.cross_attention_dim, generator=g).to(device)
    sch = tiny_scheduler()

    def step():
        if checkpointing:  # settings share one UNet: switch per step
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        if math_attention:  # what the kernel switch alone costs, without the double backward
            with double_backward_attention(unet):
                out = training_step(unet, x0, cond, sch, reg, lam, generator=g)
        else:
            out = training_step(unet, x0, cond, sch, reg, lam, generator=g)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(fn, n, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the block and alive at the same time.

    Every op's output storage is counted when it appears and uncounted when it
    is freed; storages the op received (in-place ops, views) are not new. What
    existed before the block (weights, optimizer state) is not counted, nor is
    allocator caching or anything that is not a tensor. Sees the backward pass
    too (dispatch modes follow autograd into its threads).
    """

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _free(self, key):
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                 if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in given and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


def peak_memory(fn, n, device):
    """(peak tensor bytes allocated during n steps, CUDA max_memory_allocated or None)."""
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tracker = PeakTensorMemory()
    with tracker:
        for _ in range(n):
            fn()
    if device.type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated()
    return tracker.peak, cuda_peak


def cost_table(repeats: int, device: torch.device, models: dict, settings: dict = SETTINGS):
    for model_name, (factory, shape, B) in models.items():
        unet = with_lora(factory()).to(device)
        n_params = sum(p.numel() for p in unet.parameters())
        steps = {name: (make_step(unet, shape, B, lam, make_reg(B), math, ckpt), k)
                 for name, (lam, make_reg, k, math, ckpt) in settings.items()}
        times = {name: [] for name in steps}
        for name, (fn, k) in steps.items():  # warm-up
            timed(fn, k, device)
        for _ in range(repeats):
            for name, (fn, k) in steps.items():
                times[name].append(timed(fn, k, device))
        mem = {name: peak_memory(fn, k, device) for name, (fn, k) in steps.items()}
        base_t = statistics.median(times["plain LoRA step"])
        base_m = mem["plain LoRA step"][0]
        print(f"\n{model_name} ({n_params / 1e6:.2f} M parameters), {repeats} repeats")
        print("| setting | step time | x plain | peak tensor memory | x plain |" +
              (" CUDA max allocated |" if device.type == "cuda" else ""))
        print("| --- | --- | --- | --- | --- |" + (" --- |" if device.type == "cuda" else ""))
        for name in steps:
            t = statistics.median(times[name])
            m, cm = mem[name]
            row = f"| {name} | {t * 1e3:.0f} ms | {t / base_t:.2f} | {m / 2**20:.1f} MiB | {m / base_m:.2f} |"
            if cm is not None:
                row += f" {cm / 2**20:.1f} MiB |"
            print(row)


def r_over_t(device: torch.device, models: dict, per_bucket: int = 48, batch: int = 16):
    """Mean r in t buckets [0, 333), [333, 666), [666, 1000), with the prefactor (1 - alpha_bar_t)/sqrt(alpha_bar_t)."""
    sch = tiny_scheduler()
    alphas_cumprod = sch.alphas_cumprod.to(device)
    buckets = [(0, 333), (333, 666), (666, 1000)]
    for model_name, (factory, shape, _) in models.items():
        unet = with_lora(factory()).to(device)
        g = torch.Generator().manual_seed(0)
        print(f"\nr over t, {model_name.split(',')[0]} (random init, LoRA at identity), "
              f"{per_bucket} samples per bucket")
        print("| t | mean r | min r | max r | mean (1 - alpha_bar_t)/sqrt(alpha_bar_t) | r / prefactor |")
        print("| --- | --- | --- | --- | --- | --- |")
        for lo, hi in buckets:
            rs, pre = [], []
            for _ in range(per_bucket // batch):
                t = torch.randint(lo, hi, (batch,), generator=g).to(device)
                x0 = torch.randn(batch, *shape, generator=g).to(device)
                eps = torch.randn(batch, *shape, generator=g).to(device).requires_grad_()
                alpha_bar_t = alphas_cumprod[t]
                alpha_bar = alpha_bar_t.reshape(-1, 1, 1, 1)
                x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
                with double_backward_attention(unet):
                    out = unet(x_t, t, encoder_hidden_states=torch.randn(batch, 8, unet.config.cross_attention_dim,
                                                                   generator=g).to(device)).sample
                x0_hat = x0_and_eps(out, x_t, alpha_bar_t)[0]
                r = step_variation(x0_hat, eps, direction(x0_hat, alpha_bar_t, g)).detach()
                rs.append(r)
                pre.append((1 - alpha_bar_t) / alpha_bar_t.sqrt())
            r, p = torch.cat(rs), torch.cat(pre)
            print(f"| [{lo}, {hi}) | {r.mean():.3f} | {r.min():.3f} | {r.max():.3f} | {p.mean():.3f} | "
                  f"{(r / p).mean():.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer r samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-r", action="store_true", help="skip the r-over-t table")
    parser.add_argument("--models", nargs="+", metavar="WORD", help="only the models whose name contains one "
                        f"of these words (names: {'; '.join(MODELS)})")
    parser.add_argument("--settings", nargs="+", metavar="WORD", help="only the settings whose name contains one of "
                        "these words (the plain LoRA step, the ratios' base, always runs)")
    args = parser.parse_args()
    models = {n: m for n, m in MODELS.items() if not args.models or any(w in n for w in args.models)}
    if not models:
        parser.error(f"no model name contains {args.models}; names: {'; '.join(MODELS)}")
    device = torch.device(args.device)
    repeats = 3 if args.quick else args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} threads")
    settings = {n: s for n, s in SETTINGS.items()
                if n == "plain LoRA step" or not args.settings or any(w in n for w in args.settings)}
    cost_table(repeats, device, models, settings)
    if not args.no_r:
        r_over_t(device, models, per_bucket=16 if args.quick else 48)


if __name__ == "__main__":
    main()
