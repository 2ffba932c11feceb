"""The toy world's miniature Table 1 (and lambda sweep): ISTD, prompt adherence and Frechet distance.

    python scripts/toy_table.py --runs runs/toy_lora            # measure what is missing, print the table
    python scripts/toy_table.py --runs runs/toy_lora --only smooth-s1 --no-table   # one model (for parallel lanes)

Models: the base (``base``) and every LoRA run folder under ``--runs`` written by
``scripts/make_toy_lora.py`` (or a folder such as ``data/toy_lora`` holding shipped
LoRAs with their ``run.json``). Each model is scored once on the shared items
(:mod:`smoothlib.toy.evaluation`: 100 walks = 10 digits x 10 seeds, 11 slerp frames,
25 DDIM steps by default (the paper uses 50), guidance 4) and its scores are cached in
``<run>/scores_<P>walks_<S>steps.json`` (``..._g<G>.json`` with another ``--guidance``).
"step / ends": the walks' mean adjacent distance and mean end-to-end distance (a lower
ISTD from walks that merely shrank is not smoothness; "-" for scores cached before these
were recorded). Rows with the same lambda, estimator, lazy interval, t ranges and penalty form are grouped over seeds;
changes are paired walk by walk, against the base and against the recipe's lambda = 0
control (the mean of its seeds' per-walk scores; a control trained the same way, with the same rank,
LoRA layers, learning rate, steps and EMA: :func:`smoothlib.toy.front.control_of`).

Each model is measured by ``smoothlib-eval``'s protocol (:mod:`smoothlib.evaluate.protocols`); this
script adds what is particular to the run folders: their ``run.json`` labels, seeds grouped into one
row, and the training wall time. For any other set of LoRAs, ``smoothlib-eval istd`` (docs/evaluation.md).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402


def measure(folder: Path | None, cache: Path, pairs: int, steps: int, guidance: float, progress: bool) -> dict:
    """One model's scores through smoothlib-eval's Table 1 protocol, in the record layout of ``ToyScores``."""
    from smoothlib.evaluate import istd_records, summarize_istd
    from smoothlib.toy import load_toy_world
    from smoothlib.toy.evaluation import walk_items

    world = load_toy_world(folder / "pytorch_lora_weights.safetensors" if folder is not None else None)
    prompts, seeds = walk_items(pairs)
    start = time.perf_counter()
    walks = istd_records(world, prompts, seeds, list(range(pairs)), guidance_scale=guidance, num_steps=steps,
                         batch_size=110, progress=progress)
    s = summarize_istd(world, walks)
    record = {**{k: s[k] for k in ("istd", "istd_stderr", "adherence", "frechet", "mean_step", "end_distance")},
              "num_pairs": pairs, "num_steps": steps, "guidance_scale": guidance,
              "per_walk": [w["istd"] for w in walks], "eval_wall_s": round(time.perf_counter() - start, 1)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record))
    print(f"{folder or 'base'}: ISTD {s['istd']:.4f} +- {s['istd_stderr']:.4f}, adherence {s['adherence']:.3f}, "
          f"Frechet {s['frechet']:.1f}", flush=True)
    return record


def walk_scale(records: list[dict]) -> str:
    """Mean adjacent distance / mean end-to-end distance, or a dash for scores cached before they were recorded."""
    if any(r.get("mean_step") is None for r in records):
        return "-"
    step = sum(r["mean_step"] for r in records) / len(records)
    return f"{step:.2f} / {sum(r['end_distance'] for r in records) / len(records):.2f}"


def table(base: dict, runs: dict[str, tuple[dict, dict]]) -> str:
    from smoothlib.toy.evaluation import paired_change
    from smoothlib.toy.front import control_of, mean_per_walk, recipe_key, recipe_label

    groups = defaultdict(list)
    for name, (run, scores) in sorted(runs.items()):
        groups[recipe_key(run)].append((name, run, scores))
    controls = {key: mean_per_walk([s for _, _, s in members]) for key, members in groups.items() if key[0] == 0}
    lines = ["| model | seeds | ISTD (per seed) | vs base | vs control | step / ends | adherence | Frechet | train wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| base | | {base['istd']:.4f} (s.e. {base['istd_stderr']:.4f}) | | | {walk_scale([base])} | "
             f"{base['adherence']:.3f} | {base['frechet']:.1f} | |"]
    for key in sorted(groups, key=lambda k: (k[0] != 0, k[1] != "exact", k[2], k[3], k[4], str(k[5]), k[0])):
        members = groups[key]
        walks = mean_per_walk([s for _, _, s in members])
        seeds = ", ".join(str(run.get("seed")) for _, run, _ in members)
        per_seed = " / ".join(f"{s['istd']:.4f}" for _, _, s in members) if len(members) > 1 else "one seed"
        vb, vb_se = paired_change(walks, base["per_walk"])
        vc = ""
        if control_of(key) in controls and key[0] != 0:
            c, c_se = paired_change(walks, controls[control_of(key)])
            vc = f"{100 * c:+.1f} % ({100 * c_se:.1f})"
        adh = sum(s["adherence"] for _, _, s in members) / len(members)
        fre = sum(s["frechet"] for _, _, s in members) / len(members)
        wall = sum(run.get("wall_s", 0) for _, run, _ in members) / len(members) / 60
        lines.append(f"| {recipe_label(key)} | {seeds} | {sum(walks) / len(walks):.4f} ({per_seed}) | "
                     f"{100 * vb:+.1f} % ({100 * vb_se:.1f}) | {vc} | {walk_scale([s for _, _, s in members])} | "
                     f"{adh:.3f} | {fre:.1f} | {wall:.0f} min |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from smoothlib.toy import TOY_GUIDANCE
    from smoothlib.toy.assets import toy_lora_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["runs/toy_lora"], help="folders holding LoRA run folders")
    p.add_argument("--only", nargs="*", default=None, help="measure only these models (names, 'base')")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (the paper: 50; 25 halves the CPU time)")
    p.add_argument("--guidance", type=float, default=TOY_GUIDANCE,
                   help=f"classifier-free guidance scale of the walks (default {TOY_GUIDANCE:g}, the toy's default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--remeasure", action="store_true", help="ignore cached scores")
    p.add_argument("--table", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    guidance_tag = "" if a.guidance == TOY_GUIDANCE else f"_g{a.guidance:g}"
    cache_name = f"scores_{a.pairs}walks_{a.steps}steps{guidance_tag}.json"

    def cached(folder: Path | None, cache: Path, name: str):
        if cache.exists() and not a.remeasure:
            return json.loads(cache.read_text())
        wanted = a.only is None or name in a.only
        return measure(folder, cache, a.pairs, a.steps, a.guidance, a.progress) if wanted else None

    root = Path(a.runs[0])
    base_cache = root / "base" / cache_name
    shipped_base = toy_lora_dir() / "base" / cache_name
    if not base_cache.exists() and shipped_base.exists() and not a.remeasure:
        base_cache = shipped_base   # the base's scores, shipped beside the LoRAs'
    base = cached(None, base_cache, "base")
    runs = {}
    for folder in (Path(r) for r in a.runs):
        for run_dir in sorted(d for d in folder.iterdir() if (d / "pytorch_lora_weights.safetensors").exists()):
            scores = cached(run_dir, run_dir / cache_name, run_dir.name)
            if scores is not None:
                runs[run_dir.name] = (json.loads((run_dir / "run.json").read_text()), scores)
    if a.table and base is not None:
        print(f"\nToy world, {a.pairs} walks x 11 frames, {a.steps} DDIM steps, guidance {a.guidance:g}; "
              "changes paired walk by walk (s.e. in brackets)\n")
        print(table(base, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
