"""The ISTD-against-quality front of the shipped toy LoRAs: recipes, their controls, the points."""
import json
import math

from smoothlib.toy.assets import toy_lora_dir
from smoothlib.toy.front import CONTROL_KEY, SCORES, control_of, front_points, recipe_key, recipe_label, reduction_share


def test_a_recipe_is_all_but_the_seed_and_its_control_is_trained_the_same_way():
    smooth = {"lambda_reg": 1.0, "estimator": "finite_difference", "t_buckets": 10, "relative": True,
              "reg_sub_batch": 12, "seed": 0}
    assert recipe_key(smooth) == recipe_key({**smooth, "seed": 1})
    assert control_of(recipe_key(smooth)) == CONTROL_KEY == recipe_key({"lambda_reg": 0.0, "seed": 3})
    ema = {**smooth, "ema_decay": 0.999}
    assert control_of(recipe_key(ema)) == recipe_key({"lambda_reg": 0.0, "ema_decay": 0.999}) != CONTROL_KEY
    assert recipe_label(recipe_key(ema)).endswith(", EMA 0.999, sub-batch 12")
    assert recipe_label(control_of(recipe_key(ema))) == "+ LoRA, lambda = 0 (control), EMA 0.999"
    # the penalty's form and lambda's warm-up change nothing at lambda = 0: those recipes share the plain control
    log = {**smooth, "relative": False, "log_ratio": True, "lambda_warmup_steps": 1000}
    assert recipe_key(log) != recipe_key(smooth) and control_of(recipe_key(log)) == CONTROL_KEY
    assert recipe_label(recipe_key(log)).endswith("(10), sub-batch 12, log ratio, lambda warm-up 1000")


def test_the_control_point_is_the_mean_of_its_seeds_scores_files():
    folders = [d for d in toy_lora_dir().iterdir() if (d / "run.json").is_file()
               and recipe_key(json.loads((d / "run.json").read_text())) == CONTROL_KEY]
    scores = [json.loads((d / SCORES).read_text()) for d in folders]
    assert len(scores) == 2
    walks = [sum(w) / len(w) for w in zip(*(s["per_walk"] for s in scores))]
    mean = sum(walks) / len(walks)
    se = math.sqrt(sum((w - mean) ** 2 for w in walks) / (len(walks) - 1) / len(walks))
    point = next(p for p in front_points() if p.key == CONTROL_KEY)
    assert sorted(point.names) == sorted(d.name for d in folders)
    assert math.isclose(point.istd, mean, rel_tol=1e-12) and math.isclose(point.istd_stderr, se, rel_tol=1e-9)
    frechets = [s["frechet"] for s in scores]
    assert math.isclose(point.frechet, sum(frechets) / 2) and math.isclose(point.frechet_spread, abs(frechets[0] - frechets[1]) / 2)


def test_reduction_share_is_the_ratio_of_paired_drops_with_a_bootstrap_interval():
    import torch

    g = torch.Generator().manual_seed(0)
    control = (0.3 + 0.1 * torch.rand(100, generator=g)).tolist()
    reference = [c * 0.45 for c in control]
    exactly = [c - 0.9 * (c - r) for c, r in zip(control, reference)]
    share, low, high = reduction_share(exactly, reference, control)
    assert math.isclose(share, 0.9, rel_tol=1e-12) and math.isclose(low, 0.9, rel_tol=1e-9) and math.isclose(high, 0.9, rel_tol=1e-9)
    noisy = [m + 0.02 * float(torch.randn((), generator=g)) for m in exactly]
    share, low, high = reduction_share(noisy, reference, control)
    hand = sum(c - m for c, m in zip(control, noisy)) / sum(c - r for c, r in zip(control, reference))
    assert math.isclose(share, hand, rel_tol=1e-12) and low < share < high and high - low < 0.2


def test_the_goal_is_judged_against_each_recipes_own_controls_on_every_seed():
    from smoothlib.toy.front import FrontPoint, meets_goal, standings

    long = {"steps": 8000}
    control_key, smooth_key = recipe_key({"lambda_reg": 0.0, **long}), recipe_key({"lambda_reg": 0.3, "t_buckets": 10, **long})
    walks = [0.30 + 0.001 * i for i in range(100)]

    def point(key, scale, frechet, adherence):
        w = [scale * x for x in walks]
        return FrontPoint("p", [f"s{i}" for i in range(len(adherence))], sum(w) / 100, 0.01, frechet, 0.0,
                          sum(adherence) / len(adherence), 0.5, w, key, adherence)

    plain = point(CONTROL_KEY, 2.0, 20.0, [1.0, 1.0])            # another recipe's control: not this one's
    control = point(control_key, 1.0, 40.0, [1.0, 1.0])
    good = point(smooth_key, 0.55, 43.9, [1.0, 0.995])
    (st,) = standings([plain, control, good])
    assert st.control is control and math.isclose(st.istd_change, -0.45) and math.isclose(st.frechet_ratio, 43.9 / 40)
    assert meets_goal(st)
    for bad in (point(smooth_key, 0.61, 43.9, [1.0, 1.0]),         # ISTD only 39 % lower
                point(smooth_key, 0.55, 44.1, [1.0, 1.0]),         # Frechet 10.25 % higher
                point(smooth_key, 0.55, 43.9, [1.0, 0.985]),       # one seed's adherence below 0.99 (mean 0.9925)
                point(smooth_key, 0.55, 43.9, [1.0])):             # one seed
        (st,) = standings([control, bad])
        assert not meets_goal(st)
    assert standings([plain, good]) == []                          # no controls trained the same way: not judged
