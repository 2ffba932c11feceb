"""Drag editing: move image content from handle points to target points by optimising one latent.

Smooth Diffusion (Guo et al., CVPR 2024, Figure 6) drags with DragDiffusion (Shi et al., CVPR 2024)
on top of its Smooth LoRA. One image x_0, K pairs of handle h_i and target g_i (row, col) in image
pixels, an optional mask M (1 where the image may change), the prompt c:

1. DDIM-invert x_0 with c and guidance 1 for n = round(t_fraction N) of N steps: x_t^0 at the
   timestep t of sampling step N - n (the path x_0, ..., x_t^0 is kept in the record).
2. Features: F(x) is the output of ``unet.up_blocks[feature_layer]`` at (x, t, c), resized
   bilinearly to the latent grid h x w; a "feature pixel" is a latent pixel (image pixel p sits at
   p h / H; the toy world: the same pixel). Handles and targets are rounded to that grid.
   F0 = F(x_t^0), and F0_i = F0 at the original handle h_i^0.
3. x_t starts at x_t^0; up to ``iterations`` times:
   a. stop once every handle is within STOP_DISTANCE (1) feature pixel of its target;
   b. motion supervision, over the handles not yet there, d_i = (g_i - h_i) / ||g_i - h_i||:
      L = sum_i sum_{q in Omega(h_i, radius)} |F_{q + d_i}(x_t) - sg(F_q(x_t))|_1
          + lambda_mask ||(x_t - x_t^0) (1 - M)||_1,
      Omega(h, r) the (2r + 1)^2 grid points around h, F at q + d_i read bilinearly
      (``grid_sample``), |.|_1 the mean over channels (DragDiffusion's scaling), sg stop-gradient;
   c. one Adam step on x_t (lr ``step_size``);
   d. point tracking with the features of the new x_t:
      h_i <- argmin_{q in Omega(h_i, tracking_radius)} ||F_q(x_t) - F0_i||_1.
4. Denoise x_t with DDIM over the remaining N - n steps (``guidance_scale``, the empty prompt as
   the unconditional branch) and decode.

Hyperparameters, DragDiffusion's Stable Diffusion values in brackets: t_fraction 0.6 [0.7: 35 of 50
steps], num_steps 50, iterations 80 [80], step_size 0.01 [0.01], feature_layer -2, the third of SD's
four decoder blocks [the same], radius 1 [1], tracking_radius 3 [3], lambda_mask 0.1 [0.1],
guidance_scale 1 [1].

Left out of DragDiffusion, on purpose: its per-image LoRA fine-tuning before the drag (the Smooth
LoRA is the object of study here, so the model stays as loaded; the comparison is base against
Smooth LoRA), its reference-latent control (self-attention to the inverted path while denoising;
step 4 is plain DDIM), and its mask term on the one-step-denoised latent (here on x_t, as
step 3b writes it). All of it runs the UNet in float32 (:func:`smoothlib.device.in_float32`):
the latent's gradients underflow in float16.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ddim import ddim_schedule, ddim_step, model_output
from .device import in_float32
from .images import as_world_images
from .prediction import prediction_type_of

Tensor = torch.Tensor

STOP_DISTANCE = 1.0
"""Feature pixels: the drag stops once every tracked handle is this close to its target."""


@dataclass
class DragRecord:
    """What a drag did. Points are (row, col) in image pixels, rounded to the feature grid."""
    handles: list[Tensor]
    """The tracked handles [K, 2], one entry per iteration (entry 0: the start)."""
    targets: Tensor
    losses: list[float] = field(default_factory=list)
    """The loss of step 3b at each iteration."""
    x_t: Tensor | None = None
    """The optimised latent (float32)."""
    x_t_original: Tensor | None = None
    """x_t^0, the inverted latent."""
    t: int = 0
    """The timestep of x_t."""
    trajectory: list[Tensor] = field(default_factory=list, repr=False)
    """The inversion path [x_0, ..., x_t^0]."""

    @property
    def distances(self) -> Tensor:
        """Handle-to-target distance [iterations + 1, K] in image pixels."""
        return torch.stack([(h - self.targets).norm(dim=1) for h in self.handles])


@contextmanager
def feature_hook(unet, feature_layer: int):
    """Inside the block, ``store["features"]`` is the last output of ``unet.up_blocks[feature_layer]``."""
    blocks = unet.up_blocks
    if not -len(blocks) <= feature_layer < len(blocks):
        raise ValueError(f"feature_layer {feature_layer} is not an up block of this UNet: it has {len(blocks)} "
                         f"(use {-len(blocks)} .. {len(blocks) - 1})")
    store = {}

    def keep(module, inputs, output):
        store["features"] = output[0] if isinstance(output, tuple) else output

    handle = blocks[feature_layer].register_forward_hook(keep)
    try:
        yield store
    finally:
        handle.remove()


def unet_features(unet, x: Tensor, t: int, cond: Tensor, feature_layer: int = -2) -> Tensor:
    """F(x) of step 2: the up block's output at (x, t, cond), resized to x's grid [B, C_f, h, w]."""
    with feature_hook(unet, feature_layer) as store:
        unet(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), encoder_hidden_states=cond)
    features = store["features"].float()
    if features.shape[-2:] != x.shape[-2:]:
        features = F.interpolate(features, size=x.shape[-2:], mode="bilinear", align_corners=True)
    return features


def sample_features(features: Tensor, points: Tensor) -> Tensor:
    """Features [1, C, h, w] read bilinearly at float grid points [P, 2] (row, col): [P, C]."""
    h, w = features.shape[-2:]
    xy = torch.stack([points[:, 1] * 2 / max(w - 1, 1) - 1, points[:, 0] * 2 / max(h - 1, 1) - 1], dim=-1)
    grid = xy.to(features).view(1, -1, 1, 2)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, :, :, 0].T


def patch(center: Tensor, radius: int) -> Tensor:
    """Omega(center, radius): the (2 radius + 1)^2 grid points around ``center`` [2], [P, 2] (float)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    return center.float() + torch.stack([rows.flatten(), cols.flatten()], dim=1)


def motion_loss(features: Tensor, handles: Tensor, targets: Tensor, radius: int) -> Tensor:
    """Step 3b's first term for the handles farther than STOP_DISTANCE from their targets."""
    loss = features.new_zeros(())
    for h, g in zip(handles.float(), targets.float()):
        if (g - h).norm() <= STOP_DISTANCE:
            continue
        d = (g - h) / (g - h).norm()
        q = patch(h, radius)
        moved, here = sample_features(features, q + d), sample_features(features, q).detach()
        loss = loss + (moved - here).abs().mean(dim=1).sum()
    return loss


def track_points(features: Tensor, references: Tensor, handles: Tensor, tracking_radius: int) -> Tensor:
    """Step 3d: each handle [K, 2] (long) moves to the grid point within ``tracking_radius`` whose
    features [1, C, h, w] are nearest (L1) to its reference feature (``references`` [K, C])."""
    h, w = features.shape[-2:]
    moved = []
    for point, ref in zip(handles, references):
        r0, r1 = max(int(point[0]) - tracking_radius, 0), min(int(point[0]) + tracking_radius + 1, h)
        c0, c1 = max(int(point[1]) - tracking_radius, 0), min(int(point[1]) + tracking_radius + 1, w)
        window = features[0, :, r0:r1, c0:c1]
        cost = (window - ref[:, None, None]).abs().sum(dim=0)
        k = int(cost.flatten().argmin())
        moved.append(torch.tensor([r0 + k // (c1 - c0), c0 + k % (c1 - c0)]))
    return torch.stack(moved)


def invert_partial(unet, scheduler, x_0: Tensor, cond: Tensor, num_steps: int, n: int):
    """Step 1: n of the N DDIM inversion steps (guidance 1) from x_0: (x_t, t, [x_0, ..., x_t])."""
    prediction_type = prediction_type_of(scheduler)
    steps = ddim_schedule(scheduler, num_steps)[::-1][:n]
    x, path = x_0, [x_0]
    for s in steps:
        x = ddim_step(x, model_output(unet, x, s.t, cond), s.alpha_bar_prev, s.alpha_bar_t, prediction_type)
        path.append(x)
    return x, steps[-1].t, path


def grid_points(points, name: str, image_size: tuple[int, int], latent_size: tuple[int, int]) -> Tensor:
    """(row, col) image pixels [K, 2] -> feature-grid points (long), checked to lie inside the image."""
    points = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2) if len(points) else torch.zeros(0, 2)
    if len(points) == 0:
        raise ValueError(f"{name} is empty: pass at least one (row, col) point")
    (H, W), (h, w) = image_size, latent_size
    for i, (row, col) in enumerate(points.tolist()):
        if not (0 <= row < H and 0 <= col < W):
            raise ValueError(f"{name}[{i}] = ({row:g}, {col:g}) lies outside the {H}x{W} image "
                             f"(rows 0 .. {H - 1}, columns 0 .. {W - 1})")
    scale = torch.tensor([h / H, w / W])
    return (points * scale).round().long().clamp(torch.zeros(2, dtype=torch.long), torch.tensor([h - 1, w - 1]))


def latent_mask(mask, image_size: tuple[int, int], latent_size: tuple[int, int]) -> Tensor:
    """The mask [H, W] (or [1, H, W], [1, 1, H, W]) in image pixels -> 0/1 on the latent grid [1, 1, h, w]."""
    if mask is None:
        return torch.ones(1, 1, *latent_size)
    mask = torch.as_tensor(mask).float()
    if mask.ndim < 2 or tuple(mask.shape[-2:]) != tuple(image_size) or mask[..., 0, 0].numel() != 1:
        raise ValueError(f"mask must have the image's shape {tuple(image_size)} (one channel), "
                         f"got {tuple(mask.shape)}")
    mask = mask.reshape(1, 1, *image_size)
    if not (mask > 0).any():
        raise ValueError("mask is all zeros: nothing may change; pass mask=None to let the whole image move")
    return (F.adaptive_max_pool2d(mask, latent_size) > 0).float()


def drag_edit(world, image, prompt: str, handles, targets, mask=None, *, t_fraction: float = 0.6,
              num_steps: int = 50, iterations: int = 80, step_size: float = 0.01, feature_layer: int = -2,
              radius: int = 1, tracking_radius: int = 3, lambda_mask: float = 0.1,
              guidance_scale: float = 1.0) -> tuple[Tensor, DragRecord]:
    """Drag ``image`` so that the content at ``handles`` moves to ``targets`` (module recipe).

    Args:
        image: one image [C, H, W] or [1, C, H, W] in [0, 1] (or a source
            :func:`smoothlib.images.load_images` reads).
        prompt: the image's caption c (inversion, features and denoising).
        handles, targets: K points each, (row, col) in image pixels.
        mask: [H, W] in image pixels, nonzero where the image may change; None: everywhere.
    Returns the edited image [1, C, H, W] in [0, 1] and a :class:`DragRecord`.
    """
    H, W = world.image_size
    latent_size = tuple(world.latent_shape[1:])
    if not 0 < t_fraction <= 1:
        raise ValueError(f"t_fraction must lie in (0, 1] (DragDiffusion: 0.7), got {t_fraction}")
    n = int(round(t_fraction * num_steps))
    if num_steps < 1 or n < 1:
        raise ValueError(f"num_steps {num_steps} with t_fraction {t_fraction} inverts {n} steps; need at least 1")
    for name, value in (("iterations", iterations), ("radius", radius), ("tracking_radius", tracking_radius)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if len(handles) != len(targets):
        raise ValueError(f"{len(handles)} handles but {len(targets)} targets; pass one target per handle")
    h_0 = grid_points(handles, "handles", (H, W), latent_size)
    goal = grid_points(targets, "targets", (H, W), latent_size)
    m = latent_mask(mask, (H, W), latent_size)
    image = as_world_images(image, world, "the image")
    if image.shape[0] != 1:
        raise ValueError(f"drag_edit works on one image; got a batch of {image.shape[0]}")
    to_image = torch.tensor([H / latent_size[0], W / latent_size[1]])
    with in_float32(world.unet):
        p = next(world.unet.parameters())
        cond = world.encode_prompt(prompt).to(p.device, torch.float32)
        uncond = world.uncond_embedding().to(p.device, torch.float32)
        x_0 = world.encode(image).to(p.device, torch.float32)
        with torch.no_grad():
            x_t0, t, path = invert_partial(world.unet, world.scheduler, x_0, cond, num_steps, n)
        x_t, m = x_t0.clone().requires_grad_(True), m.to(x_t0)
        optimizer = torch.optim.Adam([x_t], lr=step_size)
        with torch.enable_grad():
            features = unet_features(world.unet, x_t, t, cond, feature_layer)
        references = sample_features(features.detach(), h_0.float())
        handles_now, record = h_0.clone(), DragRecord([h_0 * to_image], goal * to_image, t=t, trajectory=path)
        for _ in range(iterations):
            if ((handles_now - goal).float().norm(dim=1) <= STOP_DISTANCE).all():
                break
            with torch.enable_grad():
                loss = (motion_loss(features, handles_now, goal, radius)
                        + lambda_mask * ((x_t - x_t0) * (1 - m)).abs().sum())
                (x_t.grad,) = torch.autograd.grad(loss, x_t)
            optimizer.step()
            with torch.enable_grad():
                features = unet_features(world.unet, x_t, t, cond, feature_layer)
            handles_now = track_points(features.detach(), references, handles_now, tracking_radius)
            record.losses.append(loss.item())
            record.handles.append(handles_now * to_image)
        record.x_t, record.x_t_original = x_t.detach(), x_t0
        with torch.no_grad():
            x = x_t.detach()
            prediction_type = prediction_type_of(world.scheduler)
            for s in ddim_schedule(world.scheduler, num_steps)[num_steps - n:]:
                out = model_output(world.unet, x, s.t, cond, uncond, guidance_scale)
                x = ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev, prediction_type)
            edited = world.decode(x)
    return edited, record


def image_features(world, image, prompt: str, *, t_fraction: float = 0.6, num_steps: int = 50,
                   feature_layer: int = -2) -> Tensor:
    """Steps 1 and 2 for any image: F(x_t^0) [1, C_f, h, w], to locate points after a drag."""
    image = as_world_images(image, world, "the image")
    with in_float32(world.unet), torch.no_grad():
        p = next(world.unet.parameters())
        cond = world.encode_prompt(prompt).to(p.device, torch.float32)
        x_t, t, _ = invert_partial(world.unet, world.scheduler, world.encode(image).to(p.device, torch.float32),
                                   cond, num_steps, max(int(round(t_fraction * num_steps)), 1))
        return unet_features(world.unet, x_t, t, cond, feature_layer)
