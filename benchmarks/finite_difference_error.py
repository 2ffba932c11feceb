"""How accurate the first-order (finite-difference) estimator is: r and its gradient, per step h and dtype.

    OMP_NUM_THREADS=1 python benchmarks/finite_difference_error.py           # docs/regularizer.md's two tables
    OMP_NUM_THREADS=1 python benchmarks/finite_difference_error.py --quick   # 16x16 latents, no cross-check

Tiny SD UNet (``smoothlib.testing.tiny_unet``, 4x32x32 latents) with a rank-4 LoRA of random weights
(``random_lora``, through ``smoothlib.lora.attach_lora``), SD 1.5's scheduler; x_0, eps, prompt embeddings
and u from seeded generators. r as ``smoothlib.train_step._first_order`` forms it: u = ``direction``, the
input shifted by ``shifted_input`` (norm h ||x_t||), one UNet call on the concatenation (default attention
kernel; CPU autocast for float16 / bfloat16), outputs upcast to float32, ``x0_and_eps``, then
``finite_difference_variation``. Central (script only): inputs x_t +- shift, r = ||x0_hat(+) - x0_hat(-)|| / 2s.

1. Table 1, r at t = 5, 300, 600, 950: reference ||J_eps u||, ``torch.func.jvp`` of x0_hat(x_t) along
   sqrt(1 - alpha_bar) u on a float64 copy of the UNet under the math SDPA kernel (CPU flash attention has
   no forward-AD formula); cell = max over the samples of |r_fd - ref| / ref (forward difference).
2. Table 2, gradient at t = 986 and 48: g = autograd gradient of sum(r^2) w.r.t. all LoRA weights (forward
   or central r); reference g_ref = the float64 gradient of sum(r^2) with r the float64 central difference
   at h = 1e-5, i.e. of sum(||J_eps u||^2); cell = ||g - g_ref|| / ||g_ref|| over all LoRA weights.
3. Check of g_ref (not with --quick): g_ref . v against (L(w + d v) - L(w - d v)) / 2d in float64, d = 1e-4,
   L = sum(||J_eps u||^2) by step 1's jvp, for two random unit directions v in LoRA-weight space.
* marks an h below the dtype's machine epsilon, which ``shifted_input`` refuses in training (measured here
by passing float32 as its ``compute_dtype``). Deterministic.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from smoothlib.prediction import per_sample, x0_and_eps
from smoothlib.regularizer import default_step, direction, finite_difference_variation, shifted_input
from smoothlib.testing import random_lora, tiny_scheduler, tiny_unet

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
H_R = ("1e-1", "3e-2", "1e-2", "1e-3", "3e-4", "1e-5")  # as the docs write them
H_GRAD = ("0.3", "0.1", "0.03", "0.01", "3.5e-4")


def setup(ts, size, seed):
    """UNet with LoRA (float32) and its float64 copy, and the samples: x_t, u, t, cond, alpha_bar."""
    unet = tiny_unet(0, sample_size=size)
    random_lora(unet)
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(ts)
    alpha_bar = tiny_scheduler().alphas_cumprod[t].float()
    x_0, eps = torch.randn(len(ts), 4, size, size, generator=g), torch.randn(len(ts), 4, size, size, generator=g)
    cond = torch.randn(len(ts), 8, 32, generator=g)
    x_t = per_sample(alpha_bar.sqrt(), x_0) * x_0 + per_sample((1 - alpha_bar).sqrt(), x_0) * eps
    return unet, copy.deepcopy(unet).double(), (x_t, direction(x_t, alpha_bar, g), t, cond, alpha_bar)


def lora_weights(unet):
    return [p for p in unet.parameters() if p.requires_grad]


def x0_hat(unet, x, t, cond, alpha_bar, dtype):
    with torch.autocast("cpu", dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16)):
        out = unet(x, t, encoder_hidden_states=cond).sample
    return x0_and_eps(out.to(x.dtype), x, alpha_bar)[0]


def r_estimate(unet, samples, h, dtype, central=False):
    """r per sample, forward or central difference, in the UNet's dtype (x_t cast to it)."""
    x_t, u, t, cond, alpha_bar = (v.to(next(unet.parameters()).dtype) if v.is_floating_point() else v
                                  for v in samples)
    check = dtype if h >= torch.finfo(dtype).eps else torch.float32  # measure refused h too (marked *)
    x_plus, s = shifted_input(x_t, u, alpha_bar, h, check)
    inputs = [shifted_input(x_t, -u, alpha_bar, h, check)[0], x_plus] if central else [x_t, x_plus]
    n = len(inputs)
    pred = x0_hat(unet, torch.cat(inputs), t.repeat(n), cond.repeat(n, 1, 1), alpha_bar.repeat(n), dtype)
    low, high = pred.chunk(n)
    return finite_difference_variation(low, high, 2 * s if central else s)


def jvp_reference(unet64, samples):
    """||J_eps u|| per sample in float64 by forward-mode autodiff (math attention kernel)."""
    x_t, u, t, cond, alpha_bar = (v.double() if v.is_floating_point() else v for v in samples)
    f = lambda x: x0_and_eps(unet64(x, t, encoder_hidden_states=cond).sample, x, alpha_bar)[0]
    with sdpa_kernel(SDPBackend.MATH):
        _, jv = torch.func.jvp(f, (x_t,), (per_sample((1 - alpha_bar).sqrt(), x_t) * u,))
    return torch.linalg.vector_norm(jv.flatten(1), dim=1)


def gradient(unet, samples, h, dtype, central):
    r = r_estimate(unet, samples, h, dtype, central)
    grads = torch.autograd.grad(r.pow(2).sum(), lora_weights(unet))
    return torch.cat([g.flatten() for g in grads]).double()


def fmt(x, h, dtype):
    """Two digits, "*" where h is below the dtype's machine epsilon."""
    text = f"{x:.0f}" if x >= 100 else f"{x:.2g}" if x >= 0.01 else f"{x:.1e}".replace("e-0", "e-")
    return text + ("*" if h < torch.finfo(dtype).eps else "")


def table_r(size):
    unet, unet64, samples = setup([5, 300, 600, 950], size, seed=1)
    ref = jvp_reference(unet64, samples)
    rows = ["| h | float32 | float16 autocast | bfloat16 autocast |", "| --- | --- | --- | --- |"]
    with torch.no_grad():
        for label in H_R:
            h = float(label)
            errors = [(r_estimate(unet, samples, h, dtype).double() - ref).abs() / ref for dtype in DTYPES.values()]
            cells = [fmt(e.max().item(), h, dtype) for e, dtype in zip(errors, DTYPES.values())]
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def table_grad(size, cross_check):
    unet, unet64, samples = setup([986, 48], size, seed=2)
    ref = gradient(unet64, samples, 1e-5, torch.float64, central=True)
    head = " | ".join(f"{name} {kind}" for name in DTYPES for kind in ("forward", "central"))
    rows = [f"| h | {head} |", "| --- " * 7 + "|"]
    for label in H_GRAD:
        h = float(label)
        cells = [fmt(((gradient(unet, samples, h, dtype, c) - ref).norm() / ref.norm()).item(), h, dtype)
                 for dtype in DTYPES.values() for c in (False, True)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows + ([""] + check_reference(unet64, samples, ref) if cross_check else [])


def check_reference(unet64, samples, ref, d=1e-4):
    """Step 3: g_ref . v against a float64 central difference of sum(||J u||^2) along unit v."""
    weights, g, rows = lora_weights(unet64), torch.Generator().manual_seed(3), []
    w = torch.nn.utils.parameters_to_vector(weights).detach().clone()
    for _ in range(2):
        v = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        v, loss = v / v.norm(), []
        with torch.no_grad():
            for sign in (1, -1):
                torch.nn.utils.vector_to_parameters(w + sign * d * v, weights)
                loss.append(jvp_reference(unet64, samples).pow(2).sum().item())
            torch.nn.utils.vector_to_parameters(w, weights)
        fd, proj = (loss[0] - loss[1]) / (2 * d), (ref @ v).item()
        rows.append(f"cross-check: g_ref . v = {proj:.6g}, central difference of sum(||J u||^2) along v = "
                    f"{fd:.6g}, relative difference {abs(proj - fd) / abs(fd):.1e}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16x16 latents, no cross-check of the reference")
    args = parser.parse_args()
    size, start = (16 if args.quick else 32), time.perf_counter()
    print("default h: " + ", ".join(f"{n} {default_step(d):.2g}" for n, d in DTYPES.items()) + "\n")
    print(f"Relative error of r against ||J u|| (float64 jvp), worst of 4 samples, {size}x{size}:\n")
    print("\n".join(table_r(size)) + "\n")
    print(f"Relative error of grad sum(r^2) w.r.t. the LoRA weights against float64, 2 samples, {size}x{size}:\n")
    print("\n".join(table_grad(size, cross_check=not args.quick)) + "\n")
    print(f"(* h below the dtype's machine epsilon: refused by shifted_input in training)  "
          f"{time.perf_counter() - start:.0f} s, torch {torch.__version__}")


if __name__ == "__main__":
    main()
