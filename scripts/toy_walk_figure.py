"""The README's picture: slerp walks between two noises, base vs Smooth LoRA, with their adjacent distances.

    python scripts/toy_walk_figure.py --out docs/img/toy_walks.png

Walks 0..9 of the miniature Table 1's items (digit p, seed p), 11 frames, 50 DDIM
steps, guidance 4; shown: the ``--show`` walks whose base ISTD is largest (the
jumpiest), each as a base row and a Smooth LoRA row, with the adjacent-distance
plot beside them.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img/toy_walks.png")
    p.add_argument("--lora", default="smooth", help="a shipped toy LoRA name (smooth, control, smooth-s1, ...)")
    p.add_argument("--walks", type=int, default=10)
    p.add_argument("--show", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args(argv)

    import smoothlib as sl
    from smoothlib.toy import TOY_GUIDANCE, load_toy_world
    from smoothlib.toy.evaluation import walk_items

    prompts, seeds = walk_items(a.walks)
    run = {}
    with torch.no_grad():
        for label, lora in (("base", None), ("smooth", a.lora)):
            run[label] = sl.istd_protocol(load_toy_world(lora), prompts, seeds=seeds, guidance_scale=TOY_GUIDANCE,
                                          num_steps=a.steps, return_frames=True, progress=False)
    picks = run["base"].scores.argsort(descending=True)[:a.show].tolist()
    fig = plt.figure(figsize=(11, 1.6 * a.show * 2 / 2 + 0.4))
    grid = fig.add_gridspec(2 * a.show, 14)
    for k, i in enumerate(picks):
        for j, label in enumerate(("base", "smooth")):
            frames = run[label].frames[i]
            for f in range(11):
                ax = fig.add_subplot(grid[2 * k + j, f])
                ax.imshow(frames[f, 0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if f == 0:
                    ax.set_ylabel(f"{label}\n{prompts[i].split()[-1]}", rotation=0, ha="right", va="center", fontsize=8)
        ax = fig.add_subplot(grid[2 * k:2 * k + 2, 11:])
        for label in ("base", "smooth"):
            d = sl.adjacent_distances(run[label].frames[i])
            ax.plot(range(1, 11), d, "o-", ms=3, label=f"{label}, ISTD {d.std(correction=0):.2f}")
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"slerp walks, base vs Smooth LoRA ({a.lora}); right: distances between adjacent frames", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=80)
    print(f"wrote {a.out}; walks {picks}; base ISTD {run['base'].mean:.3f}, smooth {run['smooth'].mean:.3f} "
          f"over {a.walks} walks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
