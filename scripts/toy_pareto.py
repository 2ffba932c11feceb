"""The toy world's ISTD-against-quality front: every shipped LoRA recipe as a labelled point.

    python scripts/toy_pareto.py                  # docs/img/toy_pareto.png and a table of the points
    python scripts/toy_pareto.py --runs runs/toy_lora --out build/pareto.png   # unshipped runs too

Reads the miniature Table 1's scores that ``scripts/toy_table.py`` wrote beside each LoRA
(:func:`smoothlib.toy.front.front_points`: seeds of one recipe make one point; ISTD with its
standard error over the 100 walks, the Frechet distance with the seeds' spread) and draws them
(:func:`smoothlib.viz.plot_front`). The table adds the changes against each recipe's lambda = 0 controls
(trained the same way: :func:`smoothlib.toy.front.control_of`),
paired walk by walk, ISTD / mean step and adherence.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smoothlib.toy.evaluation import paired_change
    from smoothlib.toy.front import (CONTROL_KEY, control_of, front_points, meets_goal, recipe_key, reduction_share,
                                     short_label, standings)
    from smoothlib.viz import plot_front

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=[str(ROOT / "data" / "toy_lora")], help="folders of LoRA run folders")
    p.add_argument("--out", default=str(ROOT / "docs" / "img" / "toy_pareto.png"))
    a = p.parse_args(argv)
    points = [pt for folder in a.runs for pt in front_points(Path(folder))]
    control = next(pt for pt in points if pt.key == CONTROL_KEY)
    against = {id(st.point): st for st in standings(points)}   # each Smooth LoRA against its own controls
    print("| recipe | seeds | ISTD (s.e.) | vs control | ISTD / mean step | adherence | Frechet (seed spread) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for pt in points:
        vc = ""
        if id(pt) in against:
            vc = f"{100 * against[id(pt)].istd_change:+.1f} % ({100 * against[id(pt)].istd_change_stderr:.1f})"
        elif pt.key is None:   # the base, against the plain control
            c, se = paired_change(pt.per_walk, control.per_walk)
            vc = f"{100 * c:+.1f} % ({100 * se:.1f})"
        ratio = f"{pt.istd / pt.mean_step:.2f}" if pt.mean_step else "-"
        print(f"| {pt.label} | {len(pt.names)} | {pt.istd:.4f} ({pt.istd_stderr:.4f}) | {vc} | {ratio} | "
              f"{pt.adherence:.3f} | {pt.frechet:.1f} ({pt.frechet_spread:.1f}) |")
    corner = [f"{st.point.label} ({len(st.point.names)} seeds: ISTD {100 * st.istd_change:+.1f} % "
              f"(s.e. {100 * st.istd_change_stderr:.1f}), Frechet {100 * (st.frechet_ratio - 1):+.1f} %, "
              f"adherence {min(st.point.seed_adherence):.3f} or more)" for st in against.values() if meets_goal(st)]
    print("\nmeeting the goal (ISTD at least 40 % below its controls', Frechet within 10 % of theirs, "
          "adherence >= 0.99 for every seed, two seeds or more): " + ("; ".join(corner) or "none"))
    form = {"lambda_reg": 1.0, "t_buckets": 10, "relative": True}   # the exact lambda = 1, 2,000-step recipe
    exact = next((pt for pt in points if pt.key == recipe_key(form)), None)
    if exact is not None:  # what the first-order estimator's settings keep of the exact one's reduction
        print(f"\nshare of the ISTD reduction of {exact.label} (against the control; paired bootstrap, 95 %):")
        for pt in points:
            if pt.key is not None and pt.key[:5] == recipe_key({**form, "estimator": "finite_difference"})[:5] \
                    and control_of(pt.key) == CONTROL_KEY:
                share, low, high = reduction_share(pt.per_walk, exact.per_walk, control.per_walk)
                print(f"  {pt.label}: {100 * share:.0f} % ({100 * low:.0f} to {100 * high:.0f} %)")
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": (1, 1)})
    plot_front(points, ax, short=short_label, title="Toy world: ISTD against Frechet distance (100 walks, 25 DDIM steps)")
    # the right panel: the same points near the goal's corner, where the left one is crowded
    plot_front(points, zoom, short=short_label, title="near the goal's corner")
    zoom.set_xlim(0.9 * control.frechet, 1.5 * control.frechet)
    zoom.set_ylim(0.4 * control.istd, 1.1 * control.istd)
    for axes in (ax, zoom):
        axes.axvline(1.1 * control.frechet, color="grey", ls=":", lw=1)
        axes.axhline(0.6 * control.istd, color="grey", ls=":", lw=1)
        axes.text(1.1 * control.frechet, axes.get_ylim()[1], " Frechet +10 %", fontsize=7, va="top")
        axes.text(axes.get_xlim()[0], 0.6 * control.istd, " ISTD -40 % vs control", fontsize=7, va="bottom")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
