"""The shipped toy LoRAs as points of the ISTD-against-quality front, one point per recipe.

Each folder of ``data/toy_lora/`` holds a LoRA, the ``run.json`` that
``scripts/make_toy_lora.py`` wrote (its recipe) and the miniature Table 1's
scores (``scores_100walks_25steps.json``, :mod:`smoothlib.toy.evaluation`);
``data/toy_lora/base/`` holds the base model's scores alone. A recipe is
everything but the seed, so the seeds of one recipe make one point:

1. group the folders by :func:`recipe_key` (lambda, estimator, lazy interval, ranges
   of t, penalty form, and the levers in :data:`RECIPE_DEFAULTS`);
2. per recipe: ISTD = the mean over walks of the seeds' mean per-walk ISTD, with its
   standard error over the 100 walks; the Frechet distance and adherence averaged
   over seeds, with the seeds' spread (half their range; 0 for one seed);
3. the walks' mean adjacent distance ("mean step") beside it: ISTD / mean step does
   not fall when walks merely shrink;
4. each Smooth LoRA recipe against its own controls (:func:`control_of`), paired walk by
   walk, and whether it meets the goal (:func:`meets_goal`).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .assets import toy_lora_dir

SCORES = "scores_100walks_25steps.json"
"""The miniature Table 1's scores file in each folder (100 walks, 25 DDIM steps)."""

RECIPE_DEFAULTS = {"rank": 8, "learning_rate": 5e-4, "steps": 2000, "ema_decay": 0.0, "reg_sub_batch": None,
                   "reg_t_min": 0, "log_ratio": False, "lambda_warmup_steps": 0,
                   "lora_resnets": False}
"""Recipe settings beyond the regularizer's form, with the value of the runs that did not record them."""

TRAINING_LEVERS = ("rank", "learning_rate", "steps", "ema_decay", "lora_resnets")
"""The levers of :data:`RECIPE_DEFAULTS` that change a lambda = 0 run too: a recipe's control shares them."""


def recipe_key(run: dict) -> tuple:
    """What makes two runs the same recipe (all but the seed), from a ``run.json``."""
    return (run.get("lambda_reg", 0.0), run.get("estimator", "exact"), run.get("reg_every", 1),
            run.get("t_buckets", 1), run.get("relative", False),
            tuple((k, run.get(k, v)) for k, v in RECIPE_DEFAULTS.items()))


def recipe_label(key: tuple) -> str:
    """A table row's name for a recipe, e.g. "+ Smooth LoRA, lambda = 1, exact, a per t range (10), relative"."""
    lam, est, every, buckets, relative, levers = key
    levers = dict(levers)
    extra = "".join([f", rank {levers['rank']}" if levers["rank"] != 8 else "",
                     ", LoRA on the ResNets too" if levers["lora_resnets"] else "",
                     f", lr {levers['learning_rate']:g}" if levers["learning_rate"] != 5e-4 else "",
                     f", {levers['steps']} steps" if levers["steps"] != 2000 else "",
                     f", EMA {levers['ema_decay']:g}" if levers["ema_decay"] else "",
                     f", sub-batch {levers['reg_sub_batch']}" if levers["reg_sub_batch"] else "",
                     f", t >= {levers['reg_t_min']}" if levers["reg_t_min"] else "",
                     ", log ratio" if levers["log_ratio"] else "",
                     f", lambda warm-up {levers['lambda_warmup_steps']}" if levers["lambda_warmup_steps"] else ""])
    if lam == 0:
        return "+ LoRA, lambda = 0 (control)" + extra
    name = "exact" if est == "exact" else "first-order"
    return (f"+ Smooth LoRA, lambda = {lam:g}, {name}" + (f", lazy k = {every}" if every > 1 else "")
            + (f", a per t range ({buckets})" if buckets > 1 else "") + (", relative" if relative else "") + extra)


def short_label(label: str) -> str:
    """A plot label from :func:`recipe_label`'s: "lam 1, fo, tb10 rel" (fo: first order, ex: exact)."""
    if not label.startswith("+ Smooth"):
        return "control" if "control" in label else label
    for long, short in (("+ Smooth LoRA, lambda = ", "lam "), ("first-order", "fo"), ("exact", "ex"),
                        ("a per t range (10)", "tb10"), (", relative", " rel"), (", log ratio", " log"),
                        ("lambda warm-up ", "warm-up "), (", LoRA on the ResNets too", ", +resnets"), ("sub-batch ", "sub"),
                        (" steps", " st"), ("lazy k = ", "lazy")):
        label = label.replace(long, short)
    return label


CONTROL_KEY = recipe_key({})
"""The lambda = 0 control's recipe."""


def control_of(key: tuple) -> tuple:
    """The recipe of ``key``'s control: lambda = 0, trained the same way (the :data:`TRAINING_LEVERS`)."""
    levers = dict(key[5])
    return recipe_key({k: levers[k] for k in TRAINING_LEVERS})


@dataclass
class FrontPoint:
    """One recipe on the front."""
    label: str
    names: list[str]
    """Its folders (one per seed)."""
    istd: float
    istd_stderr: float
    frechet: float
    frechet_spread: float
    """Half the range of the seeds' Frechet distances (0 for one seed)."""
    adherence: float
    """The mean over seeds."""
    mean_step: float | None
    per_walk: list[float]
    key: tuple | None = None
    """:func:`recipe_key` (None for the base)."""
    seed_adherence: list[float] | None = None
    """Each seed's adherence."""


def mean_per_walk(scores: list[dict]) -> list[float]:
    """Walk by walk, the mean over seeds of the per-walk ISTD in ``scores`` (one scores record per seed)."""
    import torch

    return torch.tensor([s["per_walk"] for s in scores], dtype=torch.float64).mean(0).tolist()


def _point(label: str, names: list[str], scores: list[dict], key: tuple | None) -> FrontPoint:
    walks = mean_per_walk(scores)
    mean = sum(walks) / len(walks)
    se = math.sqrt(sum((w - mean) ** 2 for w in walks) / (len(walks) - 1) / len(walks))
    frechets = [s["frechet"] for s in scores]
    steps = [s.get("mean_step") for s in scores]
    return FrontPoint(label, names, mean, se, sum(frechets) / len(frechets), (max(frechets) - min(frechets)) / 2,
                      sum(s["adherence"] for s in scores) / len(scores),
                      None if None in steps else sum(steps) / len(steps), walks, key,
                      [s["adherence"] for s in scores])


def front_points(folder: Path | None = None) -> list[FrontPoint]:
    """The base and every recipe with scores under ``folder`` (default ``data/toy_lora/``), base first."""
    folder = Path(folder) if folder is not None else toy_lora_dir()
    groups = defaultdict(list)
    for run_dir in sorted(d for d in folder.iterdir() if (d / SCORES).is_file() and (d / "run.json").is_file()):
        run = json.loads((run_dir / "run.json").read_text())
        groups[recipe_key(run)].append((run_dir.name, json.loads((run_dir / SCORES).read_text())))
    points = []
    if (folder / "base" / SCORES).is_file():
        points.append(_point("base", ["base"], [json.loads((folder / "base" / SCORES).read_text())], None))
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][0] != 0, str(kv[0]))):
        points.append(_point(recipe_label(key), [n for n, _ in members], [s for _, s in members], key))
    return points


def reduction_share(model: list[float], reference: list[float], control: list[float],
                    draws: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """What share of ``reference``'s ISTD reduction ``model`` keeps, on the same walks, with a 95 % interval.

    share = mean(control - model) / mean(control - reference), per-walk scores of one model each
    (seed-means, :func:`mean_per_walk`); the interval is the 2.5 and 97.5 % quantiles over ``draws``
    resamplings of the walks (a paired bootstrap: the seeds' spread is not in it).
    Returns (share, low, high).
    """
    import torch

    m, r, c = (torch.tensor(x, dtype=torch.float64) for x in (model, reference, control))
    if not m.shape == r.shape == c.shape:
        raise ValueError(f"paired scores must be the same walks: got {m.numel()}, {r.numel()} and {c.numel()}")
    share = ((c - m).mean() / (c - r).mean()).item()
    i = torch.randint(0, m.numel(), (draws, m.numel()), generator=torch.Generator().manual_seed(seed))
    shares = (c[i] - m[i]).mean(1) / (c[i] - r[i]).mean(1)
    low, high = torch.quantile(shares, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return share, low, high


GOAL = {"istd_change": -0.40, "frechet_ratio": 1.10, "min_adherence": 0.99, "min_seeds": 2}
"""Smooth without the quality cost: ISTD at least 40 % below the controls' (the seeds' mean, paired walk
by walk), a Frechet distance within 10 % of theirs, adherence >= 0.99 for every seed, at least two seeds."""


@dataclass
class Standing:
    """A Smooth LoRA recipe against its controls (lambda = 0, trained the same way)."""
    point: FrontPoint
    control: FrontPoint
    istd_change: float
    """mean(ISTD - control's) / mean(control's ISTD), walk by walk (:func:`~smoothlib.toy.evaluation.paired_change`)."""
    istd_change_stderr: float
    frechet_ratio: float
    """The Frechet distance over the controls'."""


def standings(points: list[FrontPoint]) -> list[Standing]:
    """Every Smooth LoRA recipe (lambda > 0) among ``points`` whose controls are among them too."""
    from .evaluation import paired_change

    controls = {p.key: p for p in points if p.key is not None and p.key[0] == 0}
    out = []
    for p in points:
        control = controls.get(control_of(p.key)) if p.key is not None and p.key[0] > 0 else None
        if control is not None:
            change, se = paired_change(p.per_walk, control.per_walk)
            out.append(Standing(p, control, change, se, p.frechet / control.frechet))
    return out


def meets_goal(s: Standing) -> bool:
    """Whether a recipe meets :data:`GOAL` against its controls."""
    return (len(s.point.names) >= GOAL["min_seeds"] and s.istd_change <= GOAL["istd_change"]
            and s.frechet_ratio <= GOAL["frechet_ratio"]
            and min(s.point.seed_adherence or [s.point.adherence]) >= GOAL["min_adherence"])
