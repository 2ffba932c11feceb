"""Downstream tasks on the trained toy model: inversion, null-text inversion, walks, editing."""
import pytest
import torch

import smoothlib as sl
from smoothlib.inversion import invert, reconstruct
from smoothlib.toy import TOY_GUIDANCE, digit_prompt, load_heldout_digits
from smoothlib.toy.classifier import predict_digits


@pytest.fixture(scope="module")
def world():
    return sl.load_world("toy")


@pytest.fixture(scope="module")
def digits():
    images, labels = load_heldout_digits()
    idx = torch.tensor([0, 120, 260, 400])
    return images[idx], [digit_prompt(int(d)) for d in labels[idx]]


def mse_pm1(a, b):
    return ((a - b) * 2).pow(2).mean().item()  # MSE on [-1, 1]


def test_ddim_inversion_reconstructs_real_digits_and_improves_with_steps(world, digits):
    images, prompts = digits
    errors = {}
    for n in (10, 25, 50):
        inv = invert(world, images, prompts, "ddim", guidance_scale=1.0, num_steps=n, progress=False)
        errors[n] = mse_pm1(reconstruct(world, inv, progress=False), images)
    assert errors[50] < 0.005, errors  # measured 0.0015 on 8 held-out digits
    assert errors[10] > errors[25] > errors[50], errors


def test_null_text_inversion_beats_ddim_inversion_under_guidance(world, digits):
    images, prompts = digits[0][:2], digits[1][:2]
    ddim = invert(world, images, prompts, "ddim", guidance_scale=TOY_GUIDANCE, num_steps=20, progress=False)
    nti = invert(world, images, prompts, "nti", guidance_scale=TOY_GUIDANCE, num_steps=20, progress=False)
    e_ddim = mse_pm1(reconstruct(world, ddim, progress=False), images)
    e_nti = mse_pm1(reconstruct(world, nti, progress=False), images)
    assert e_nti < 0.5 * e_ddim, (e_nti, e_ddim)  # measured 0.037 vs 0.165


def test_walk_endpoints_are_the_endpoint_samples(world):
    x_a, x_b = sl.seeded_noise(world, 3, 2)
    frames = sl.noise_walk(world, x_a, x_b, digit_prompt(5), num_frames=4, guidance_scale=TOY_GUIDANCE,
                           num_steps=10, progress=False)
    ends = sl.sample_frames(world, torch.stack([x_a, x_b]), world.encode_prompt(digit_prompt(5)), None,
                            TOY_GUIDANCE, 10, progress=False)
    torch.testing.assert_close(frames[[0, -1]], ends, rtol=0, atol=1e-5)
    assert predict_digits(frames).tolist() == [5, 5, 5, 5]
    c = sl.prompt_walk(world, digit_prompt(1), digit_prompt(7), x_a, num_frames=3, guidance_scale=TOY_GUIDANCE,
                       num_steps=10, progress=False)
    assert predict_digits(c[[0, -1]]).tolist() == [1, 7]


def test_editing_a_three_into_an_eight(world):
    images, labels = load_heldout_digits()
    three = images[(labels == 3).nonzero()[0, 0]]
    assert predict_digits(three[None]).item() == 3
    edited = sl.edit(world, three, digit_prompt(3), digit_prompt(8), ratio=0.8, guidance_scale=TOY_GUIDANCE,
                     num_steps=20, progress=False)
    assert predict_digits(edited).item() == 8
