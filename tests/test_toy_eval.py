"""The miniature Table 1's measurement: shared items, paired changes, scores on real frames."""
import math

import pytest
import torch

import smoothlib as sl
from smoothlib.metrics import istd_per_walk
from smoothlib.toy.evaluation import paired_change, smoothness_and_quality, walk_items


def test_items_cover_every_digit_with_fixed_seeds():
    prompts, seeds = walk_items(20)
    assert seeds == list(range(20))
    assert prompts[:10] == [sl.toy.digit_prompt(d) for d in range(10)] and prompts[10:] == prompts[:10]
    with pytest.raises(ValueError, match="at least 2"):
        walk_items(1)


def test_paired_change_is_the_relative_mean_difference_with_paired_error():
    ref = [1.0, 2.0, 3.0, 4.0]
    model = [0.9, 1.7, 2.9, 3.5]  # differences -0.1, -0.3, -0.1, -0.5
    change, se = paired_change(model, ref)
    assert change == pytest.approx(-0.25 / 2.5)
    d = torch.tensor([-0.1, -0.3, -0.1, -0.5], dtype=torch.float64)
    assert se == pytest.approx(d.std(correction=1).item() / math.sqrt(4) / 2.5)
    assert paired_change(ref, ref) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same walks"):
        paired_change([1.0, 2.0], [1.0, 2.0, 3.0])


def test_scores_are_measured_on_the_walk_frames():
    world = sl.load_world("toy")
    scores, frames = smoothness_and_quality(world, num_pairs=2, num_steps=4, progress=False, return_frames=True)
    assert frames.shape == (2, 11, 1, 16, 16)
    assert scores.per_walk == pytest.approx(istd_per_walk(frames).tolist())
    assert scores.istd == pytest.approx(sum(scores.per_walk) / 2)
    assert 0 <= scores.adherence <= 1 and scores.frechet > 0
    steps = (frames[:, 1:] - frames[:, :-1]).double().flatten(2).norm(dim=2)  # [2 walks, 10]
    assert scores.mean_step == pytest.approx(steps.mean().item())
    ends = (frames[:, 10] - frames[:, 0]).flatten(1).norm(dim=1)
    assert scores.end_distance == pytest.approx(ends.mean().item(), rel=1e-5)
    assert scores.mean_step * 10 >= scores.end_distance - 1e-6  # a path is no shorter than its chord
    again = smoothness_and_quality(world, num_pairs=2, num_steps=4, progress=False)
    assert again.per_walk == scores.per_walk  # same seeds, same walks
    assert "ISTD" in str(scores) and scores.to_dict()["num_pairs"] == 2
