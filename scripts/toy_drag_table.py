"""Drag editing on the toy world: base vs Smooth LoRA vs control LoRA, on held-out digits.

    python scripts/toy_drag_table.py                  # 20 digits, about 5 minutes on 2 busy cores
    python scripts/toy_drag_table.py --digits 5       # a quick look

Protocol: every 25th of the 500 held-out digits (``--digits`` of them), captioned "a handwritten
<digit>". One drag per digit: the handle is the stroke pixel (value > 0.5) nearest the image's
centre, the target 3 pixels to its right (to its left where that leaves the image), the mask the
box of 3 pixels around both. :func:`smoothlib.drag.drag_edit` with ``--steps`` DDIM steps,
t_fraction 0.6, ``--iterations`` iterations, step size ``--step-size``, the other arguments its
defaults (guidance 1). Per model and digit:

- distance: where the handle's content went, found on the result independently of the drag's own
  tracking: the *base* model's features (:func:`smoothlib.drag.image_features`) of the input at the
  handle, matched (nearest L1) in the base model's features of the result within 5 pixels of the
  handle; its distance to the target in pixels (3 before the drag), and the same on the
  reconstruction (no drag: the metric's own error);
- outside, vs input / vs reconstruction: mean absolute pixel change (pixels in [0, 1]) outside the
  mask, against the input and against the same model's reconstruction (the drag with 0 iterations);
- adherence: whether the classifier still reads the caption's digit
  (:func:`smoothlib.toy.prompt_adherence`).

Means over digits with their standard errors in brackets.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

MODELS = {"base": None, "Smooth LoRA": "smooth", "control LoRA": "control"}
"""Row label -> shipped LoRA name ("smooth": the toy world's default Smooth LoRA; "control": lambda = 0)."""
SHIFT, MARGIN, SEARCH = 3, 3, 5


def toy_drag(image: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor]:
    """(handle, target, mask [H, W]) for one digit [1, H, W]: see the module docstring."""
    rows, cols = (image[0] > 0.5).nonzero(as_tuple=True)
    size = image.shape[-1]
    k = int(((rows - (size - 1) / 2) ** 2 + (cols - (size - 1) / 2) ** 2).argmin())
    handle = (int(rows[k]), int(cols[k]))
    col = handle[1] + SHIFT if handle[1] + SHIFT < size else handle[1] - SHIFT
    target = (handle[0], col)
    mask = torch.zeros(size, size)
    mask[max(handle[0] - MARGIN, 0):handle[0] + MARGIN + 1,
         max(min(handle[1], col) - MARGIN, 0):max(handle[1], col) + MARGIN + 1] = 1
    return handle, target, mask


def locate(features_in: torch.Tensor, features_out: torch.Tensor, handle: tuple[int, int]) -> torch.Tensor:
    """Where the input's feature at ``handle`` is nearest in the result's features, within SEARCH pixels."""
    from smoothlib.drag import track_points

    point = torch.tensor([handle])
    return track_points(features_out, features_in[0, :, handle[0], handle[1]][None], point, SEARCH)[0]


def measure(model: str, idx: torch.Tensor, a, tracker) -> dict[str, torch.Tensor]:
    from smoothlib.drag import drag_edit, image_features
    from smoothlib.toy import digit_prompt, load_heldout_digits, load_toy_world, predict_digits

    world = load_toy_world(MODELS[model])
    images, labels = load_heldout_digits()
    args = dict(num_steps=a.steps, t_fraction=0.6, step_size=a.step_size)
    rows = {k: [] for k in ("distance", "distance_recon", "outside_input", "outside_recon", "adherence", "tracked", "iterations")}
    for i in idx.tolist():
        image, label = images[i], int(labels[i])
        prompt = digit_prompt(label)
        handle, target, mask = toy_drag(image)
        edited, record = drag_edit(world, image, prompt, [handle], [target], mask, iterations=a.iterations, **args)
        recon, _ = drag_edit(world, image, prompt, [handle], [target], mask, iterations=0, **args)
        features = [image_features(tracker, x, prompt, num_steps=a.steps) for x in (image, edited[0], recon[0])]
        found, still = locate(features[0], features[1], handle), locate(features[0], features[2], handle)
        outside = (1 - mask).bool()
        rows["distance"].append((found - torch.tensor(target)).float().norm().item())
        rows["distance_recon"].append((still - torch.tensor(target)).float().norm().item())
        rows["outside_input"].append((edited[0, 0] - image[0]).abs()[outside].mean().item())
        rows["outside_recon"].append((edited[0, 0] - recon[0, 0]).abs()[outside].mean().item())
        rows["adherence"].append(float(predict_digits(edited).item() == label))
        rows["tracked"].append(record.distances[-1, 0].item())
        rows["iterations"].append(float(len(record.losses)))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()}


def cell(values: torch.Tensor, digits: int = 3) -> str:
    se = values.std(unbiased=True) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{values.mean():.{digits}f} ({se:.{digits}f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from smoothlib.toy import HELDOUT_SIZE, load_toy_world

    idx = torch.arange(0, HELDOUT_SIZE, 25)[: a.digits]
    tracker = load_toy_world(None)   # the base model's features locate the handle in every model's result
    results, start = {}, time.perf_counter()
    for model in MODELS:
        results[model] = measure(model, idx, a, tracker)
        print(f"{model}: done after {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nToy world, {len(idx)} held-out digits, one drag of {SHIFT} pixels each, {a.steps} DDIM steps, "
          f"t_fraction 0.6, {a.iterations} iterations, step size {a.step_size} ({a.threads} CPU thread(s), "
          f"{time.perf_counter() - start:.0f} s)\n")
    print("| model | handle to target (px, start 3) | the same, no drag | drag's own tracking (px) | outside mask, vs input "
          "| outside mask, vs reconstruction | adherence | iterations |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, r in results.items():
        print(f"| {model} | {cell(r['distance'], 2)} | {cell(r['distance_recon'], 2)} | {cell(r['tracked'], 2)} | {cell(r['outside_input'])} | "
              f"{cell(r['outside_recon'])} | {cell(r['adherence'], 2)} | {r['iterations'].mean():.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
