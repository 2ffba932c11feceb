"""Inverting real images: DDIM inversion, null-text inversion (single and shared), reconstruction.

DDIM inversion (Dhariwal & Nichol 2021; Mokady et al. 2023) runs the deterministic DDIM update
backwards from the encoded image x_0 to x_T with the conditional prompt c and guidance 1
(:func:`smoothlib.ddim.ddim_invert`). Sampling back from x_T with guidance w = 7.5 does not
retrace that path: the guided noise estimate

    eps_w(x_t, t) = eps(x_t, t, null) + w (eps(x_t, t, c) - eps(x_t, t, null))

differs from the eps(x_t, t, c) used to invert, and the errors add up over the steps.

Null-text inversion (Mokady et al., CVPR 2023, Algorithm 1) keeps x_T and c and fits the
unconditional ("null") embedding per step so the guided chain lands on the inverted one.
With the DDIM-inversion trajectory x*_T, ..., x*_0 and x_T = x*_T, for the sampling steps
i = 0 .. N-1 (t_i from most to least noisy):

1. null_i starts from null_{i-1} (from the empty prompt's embedding at i = 0);
2. up to 10 times: x_prev = DDIM step of x_t with eps_w(., null_i); loss = ||x_prev - x*_{t-1}||^2
   (mean over elements); one Adam step on null_i with lr 1e-2 (1 - i / 100); stop early once
   loss < 1e-5 + i * 2e-5;
3. x_{t-1} = DDIM step of x_t with the optimised null_i; keep null_i for step i.

The shared variant (Smooth Diffusion's real-image interpolation, Guo et al. CVPR 2024) fits
one null_i for two (or more) images on the sum of their losses, so every frame of a walk
between them can be sampled with the same null embeddings.

Precision: in float16 the gradients of the null embedding underflow, so both the fit and
every sampling pass that uses its embeddings run the UNet in float32
(:func:`smoothlib.device.in_float32`, as the authors' release does); a float16 world
(Stable Diffusion on CUDA) gets this without asking, and its weights are exactly float16
again afterwards.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .device import in_float32
from .images import as_world_images
from .ddim import ddim_invert, ddim_schedule, ddim_step, model_output, prepare_inputs
from .metrics import reconstruction_metrics
from .prediction import prediction_type_of

Tensor = torch.Tensor

METHODS = ("ddim", "nti")


@dataclass
class Inversion:
    """What sampling needs to reconstruct inverted images.

    ``x_T`` [B, C, h, w]; ``cond`` the prompt embeddings [B, L, D]; ``null_embeddings`` one
    tensor per sampling step ([B, L, D], or [1, L, D] when shared), or ``None`` after plain
    DDIM inversion, where ``uncond`` (the empty prompt, [1, L, D]) is used at every step.
    """
    x_T: Tensor
    cond: Tensor
    uncond: Tensor
    null_embeddings: list[Tensor] | None
    guidance_scale: float
    num_steps: int
    method: str
    trajectory: list[Tensor] = field(default_factory=list, repr=False)
    """The DDIM inversion path [x_0, ..., x_T]."""
    losses: Tensor | None = None
    """NTI only: the last loss of each step, [N, B] ([N, 1] when shared)."""

    @property
    def unconds(self) -> list[Tensor] | Tensor:
        """The unconditional embedding(s) to sample with: the per-step null embeddings, or ``uncond``."""
        return self.null_embeddings if self.null_embeddings is not None else self.uncond


@torch.no_grad()
def null_text_inversion(unet, scheduler, x_0: Tensor, cond: Tensor, uncond: Tensor,
                        guidance_scale: float = 7.5, num_steps: int = 50, num_inner_steps: int = 10,
                        early_stop_epsilon: float = 1e-5, shared: bool = False,
                        progress: bool = True) -> Inversion:
    """Null-text inversion of a batch of clean latents x_0 [B, C, h, w] (see the module recipe).

    Args:
        cond: prompt embeddings [B or 1, L, D] (each image's caption).
        uncond: the starting null embedding [1, L, D] (the empty prompt's).
        shared: fit one null embedding per step for the whole batch, on the sum of the
            images' losses (for interpolation between them); otherwise one per image,
            each with its own early stop, exactly as if inverted one at a time.
    Returns an :class:`Inversion` with the per-step null embeddings and final losses, in float32
    (a half-precision UNet runs in float32 for the duration; see the module docstring).
    """
    with in_float32(unet):
        return _null_text_inversion(unet, scheduler, x_0, cond, uncond, guidance_scale, num_steps,
                                    num_inner_steps, early_stop_epsilon, shared, progress)


def _null_text_inversion(unet, scheduler, x_0, cond, uncond, guidance_scale, num_steps, num_inner_steps,
                         early_stop_epsilon, shared, progress) -> Inversion:
    x, cond, uncond = prepare_inputs(unet, x_0, cond, uncond)
    if uncond.shape[0] != 1:
        raise ValueError(f"uncond must be one embedding [1, L, D], got {tuple(uncond.shape)}")
    b, channels = x.shape[0], x.shape[1]
    cond = cond.expand(b, *cond.shape[1:])
    prediction_type = prediction_type_of(scheduler)
    x_T, trajectory = ddim_invert(unet, scheduler, x, cond, None, 1.0, num_steps, progress=False,
                                  return_trajectory=True)
    rows = 1 if shared else b
    null = uncond.expand(rows, *uncond.shape[1:]).clone()
    nulls, losses, x = [], [], x_T
    steps = ddim_schedule(scheduler, num_steps)
    for i, s in enumerate(tqdm(steps, desc="null-text inversion", disable=not progress, leave=False)):
        target = trajectory[num_steps - i - 1]
        t_in = torch.full((b,), s.t, device=x.device, dtype=torch.long)
        out_c = unet(x, t_in, encoder_hidden_states=cond).sample[:, :channels]
        null = null.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=1e-2 * (1 - i / 100))
        threshold = early_stop_epsilon + i * 2e-5
        active = torch.ones(rows, dtype=torch.bool, device=x.device)
        for _ in range(num_inner_steps):
            with torch.enable_grad():
                out_u = unet(x, t_in, encoder_hidden_states=null.expand(b, *null.shape[1:])).sample[:, :channels]
                out = out_u + guidance_scale * (out_c - out_u)
                x_prev = ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev, prediction_type)
                per_image = (x_prev - target).pow(2).flatten(1).mean(dim=1)
                loss = per_image.sum(0, keepdim=True) if shared else per_image
                (grad,) = torch.autograd.grad(loss.sum(), null)  # rows are independent: sum = per-row gradients
            before = null.detach().clone()
            null.grad = grad
            optimizer.step()
            null[~active] = before[~active]  # rows that already stopped keep their embedding
            active &= loss.detach() >= threshold
            if not active.any():
                break
        null = null.detach()
        nulls.append(null.clone())
        losses.append(loss.detach().double().cpu())
        out = model_output(unet, x, s.t, cond, null, guidance_scale)
        x = ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev, prediction_type)
    return Inversion(x_T, cond, uncond, nulls, guidance_scale, num_steps, "nti", trajectory, torch.stack(losses))


@torch.no_grad()
def sample_with_null_text(unet, scheduler, x_T: Tensor, cond: Tensor | list[Tensor],
                          unconds: Tensor | list[Tensor], guidance_scale: float = 7.5,
                          num_steps: int = 50, progress: bool = True) -> Tensor:
    """Guided DDIM sampling whose embeddings may change from step to step.

    ``cond`` and ``unconds`` are each one tensor [B or 1, L, D] used at every step, or a list
    of N such tensors, one per step (null-text inversion's embeddings; editing's prompt switch).
    Returns x_0. With per-step null embeddings a half-precision UNet runs in float32 here, as
    it did to fit them (module docstring), and x_0 is float32.
    """
    per_step_nulls = isinstance(unconds, (list, tuple))
    with in_float32(unet) if per_step_nulls else nullcontext():
        return _sample_with_null_text(unet, scheduler, x_T, cond, unconds, guidance_scale, num_steps, progress)


@torch.no_grad()
def _sample_with_null_text(unet, scheduler, x_T, cond, unconds, guidance_scale, num_steps, progress) -> Tensor:
    conds = cond if isinstance(cond, (list, tuple)) else [cond] * num_steps
    nulls = unconds if isinstance(unconds, (list, tuple)) else [unconds] * num_steps
    for name, seq in (("cond", conds), ("unconds", nulls)):
        if len(seq) != num_steps:
            raise ValueError(f"{len(seq)} {name} embeddings for {num_steps} steps; invert and sample "
                             "with the same num_steps")
    prediction_type = prediction_type_of(scheduler)
    x, _, _ = prepare_inputs(unet, x_T, conds[0], nulls[0])
    p = next(unet.parameters())
    for i, s in enumerate(tqdm(ddim_schedule(scheduler, num_steps), desc="DDIM sampling",
                               disable=not progress, leave=False)):
        out = model_output(unet, x, s.t, conds[i].to(p), nulls[i].to(p), guidance_scale)
        x = ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev, prediction_type)
    return x


# --------------------------------------------------------------------------- worlds


def _images_and_cond(world, images, prompts) -> tuple[Tensor, Tensor]:
    images = as_world_images(images, world)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) not in (1, images.shape[0]):
        raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images; pass one prompt or one per image")
    cond = world.encode_prompt(prompts)
    return world.encode(images), cond.expand(images.shape[0], *cond.shape[1:])


@torch.no_grad()
def invert(world, images, prompts: str | list[str], method: str = "nti", guidance_scale: float = 7.5,
           num_steps: int = 50, shared: bool = False, progress: bool = True, **nti_options) -> Inversion:
    """Invert real images in a World: ``method`` "ddim" (guidance 1, prompt-conditioned) or "nti".

    ``images``: a tensor [B, C, H, W] (or [C, H, W]) in [0, 1], any float dtype, or sources for
    :func:`smoothlib.images.load_images`; NaN or inf is refused, and a tensor not of the world's
    channels and size is converted as :func:`smoothlib.images.as_world_images` says (e.g. RGB
    to grayscale on the toy world). ``guidance_scale`` is the one the
    reconstruction will use (NTI fits its null embeddings for it). ``shared=True`` (NTI only)
    fits one set of null embeddings for all images.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; use one of {METHODS}")
    x_0, cond = _images_and_cond(world, images, prompts)
    uncond = world.uncond_embedding(1)
    if method == "nti":
        return null_text_inversion(world.unet, world.scheduler, x_0, cond, uncond, guidance_scale, num_steps,
                                   shared=shared, progress=progress, **nti_options)
    if shared:
        raise ValueError("shared=True applies to null-text inversion; use method='nti'")
    x_T, trajectory = ddim_invert(world.unet, world.scheduler, x_0, cond, None, 1.0, num_steps,
                                  progress=progress, return_trajectory=True)
    return Inversion(x_T, cond, uncond, None, guidance_scale, num_steps, "ddim", trajectory)


@torch.no_grad()
def reconstruct(world, inversion: Inversion, progress: bool = True) -> Tensor:
    """Sample the inverted images back (guided, with the inversion's null embeddings): [B, C, H, W] in [0, 1]."""
    x_0 = sample_with_null_text(world.unet, world.scheduler, inversion.x_T, inversion.cond, inversion.unconds,
                                inversion.guidance_scale, inversion.num_steps, progress)
    return world.decode(x_0)


@dataclass
class ReconstructionReport:
    """Per-image reconstruction metrics by method ("vae" = encode-decode only, "ddim", "nti")."""
    per_image: dict[str, dict[str, Tensor]]
    reconstructions: dict[str, Tensor] | None = None

    def means(self) -> dict[str, dict[str, float]]:
        return {m: {k: v.mean().item() for k, v in d.items()} for m, d in self.per_image.items()}

    def table(self) -> str:
        """The means as a Markdown table (the layout of the paper's Table 2)."""
        means = self.means()
        keys = [k for k in ("mse", "lpips", "ssim", "psnr") if any(k in d for d in means.values())]
        lines = ["| method | " + " | ".join(k.upper() for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join(f"{d.get(k, float('nan')):.4f}" for k in keys) + " |"
                  for m, d in means.items()]
        return "\n".join(lines)


def reconstruction_protocol(world, images: Tensor, prompts: list[str], methods=METHODS,
                            guidance_scale: float = 7.5, num_steps: int = 50, batch_size: int = 4,
                            lpips=None, keep_images: bool = False, progress: bool = True,
                            **nti_options) -> ReconstructionReport:
    """The paper's Table 2: invert N images with their captions, reconstruct, and score.

    1. encode-decode only ("vae", latent worlds only): the ceiling any inversion can reach;
    2. for each method: invert (DDIM: prompt, guidance 1; NTI: fitted for ``guidance_scale``),
       sample back with guidance ``guidance_scale``, decode;
    3. MSE ([-1, 1]), PSNR, SSIM (and LPIPS with an ``lpips`` callable) per image against the input.
    ``images`` [N, C, H, W] in [0, 1] (checked and converted as in :func:`invert`; the converted
    images are the reference), ``prompts`` one caption per image; batches of ``batch_size``.
    ``nti_options`` (``num_inner_steps``, ``early_stop_epsilon``) go to :func:`null_text_inversion`.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or len(prompts) != images.shape[0]:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"need images [N, C, H, W] and one prompt each; got {shape} and {len(prompts)} prompts")
    images = as_world_images(images, world)
    names = (["vae"] if world.vae is not None else []) + list(methods)
    outputs: dict[str, list[Tensor]] = {m: [] for m in names}
    starts = range(0, len(prompts), batch_size)
    batches = [(images[i:i + batch_size], prompts[i:i + batch_size]) for i in starts]
    for batch, captions in tqdm(batches, desc="reconstruction", disable=not progress):
        if world.vae is not None:
            with torch.no_grad():
                outputs["vae"].append(world.decode(world.encode(batch)).cpu())
        for m in methods:
            inv = invert(world, batch, captions, m, guidance_scale, num_steps, progress=False,
                         **(nti_options if m == "nti" else {}))
            outputs[m].append(reconstruct(world, inv, progress=False).cpu())
    recon = {m: torch.cat(v) for m, v in outputs.items()}
    per_image = {m: reconstruction_metrics(r, images.cpu().float(), lpips) for m, r in recon.items()}
    return ReconstructionReport(per_image, recon if keep_images else None)
