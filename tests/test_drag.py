"""Drag editing (smoothlib.drag) on the toy world: the handle moves, the rest stays, bad input is refused."""
import pytest
import torch

import smoothlib as sl
from smoothlib.drag import drag_edit, patch, sample_features, track_points
from smoothlib.toy import load_heldout_digits

SIZES = dict(num_steps=10, step_size=0.05)
HANDLE, TARGET = (6, 6), (6, 9)   # on the stroke of the first held-out digit (a 0), 3 pixels to the right


@pytest.fixture(scope="module")
def world():
    return sl.load_world("toy")


@pytest.fixture(scope="module")
def image():
    return load_heldout_digits()[0][0]


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(16, 16)
    m[3:10, 3:13] = 1
    return m


@pytest.fixture(scope="module")
def dragged(world, image, mask):
    edited, record = drag_edit(world, image, sl.digit_prompt(0), [HANDLE], [TARGET], mask, iterations=20, **SIZES)
    recon, _ = drag_edit(world, image, sl.digit_prompt(0), [HANDLE], [TARGET], mask, iterations=0, **SIZES)
    return edited, record, recon


def test_the_handle_moves_toward_its_target(dragged):
    edited, record, _ = dragged
    d = record.distances[:, 0]
    assert d[0] == 3 and d[-1] < d[0], f"tracked handle-to-target distances {d.tolist()}"
    assert len(record.handles) == len(record.losses) + 1
    assert edited.shape == (1, 1, 16, 16) and 0 <= edited.min() and edited.max() <= 1


def test_outside_the_mask_stays_near_the_reconstruction(dragged, mask, image):
    edited, record, recon = dragged
    change = (edited - recon).abs()[0, 0]
    outside, inside = change[mask == 0].mean(), change[mask == 1].mean()
    assert outside < 0.05 and outside < inside, (outside.item(), inside.item())
    assert (recon[0] - image).abs().mean() < 0.03   # 0 iterations: the DDIM reconstruction of the input
    assert record.x_t.shape == record.x_t_original.shape == (1, 1, 16, 16)


def test_no_hook_is_left_on_the_unet(world, dragged):
    assert all(not block._forward_hooks for block in world.unet.up_blocks)


def test_tracking_finds_a_shifted_feature():
    features = torch.randn(1, 8, 10, 10)
    shifted = torch.roll(features, shifts=(1, 2), dims=(2, 3))
    found = track_points(shifted, features[0, :, 4, 4][None], torch.tensor([[4, 4]]), 3)
    assert found.tolist() == [[5, 6]]
    assert torch.allclose(sample_features(features, patch(torch.tensor([4, 4]), 1)),
                          features[0, :, 3:6, 3:6].flatten(1).T)


@pytest.mark.parametrize("handles, targets, mask, message", [
    ([(6, 6)], [(6, 16)], None, r"targets\[0\] = \(6, 16\) lies outside the 16x16 image"),
    ([(-1, 6)], [(6, 9)], None, r"handles\[0\] = \(-1, 6\) lies outside"),
    ([(6, 6), (7, 7)], [(6, 9)], None, "2 handles but 1 targets"),
    ([], [], None, "handles is empty"),
    ([(6, 6)], [(6, 9)], torch.zeros(16, 16), "mask is all zeros"),
    ([(6, 6)], [(6, 9)], torch.ones(8, 8), r"mask must have the image's shape \(16, 16\)"),
    ([(6, 6)], [(6, 9)], torch.ones(2, 16, 16), "mask must have the image's shape"),
])
def test_bad_input_names_the_argument(world, image, handles, targets, mask, message):
    with pytest.raises(ValueError, match=message):
        drag_edit(world, image, "a handwritten zero", handles, targets, mask, iterations=1, **SIZES)


@pytest.mark.parametrize("option, message", [
    (dict(t_fraction=0.0), "t_fraction must lie in"),
    (dict(iterations=-1), "iterations must be >= 0"),
    (dict(feature_layer=3), "feature_layer 3 is not an up block"),
])
def test_bad_settings_name_the_argument(world, image, option, message):
    settings = {**SIZES, "iterations": 1, **option}
    with pytest.raises(ValueError, match=message):
        drag_edit(world, image, "a handwritten zero", [(6, 6)], [(6, 9)], **settings)
