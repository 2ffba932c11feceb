"""The toy world's quality measure: digit classifier, prompt adherence, Frechet distance."""
import numpy as np
import pytest
import torch

from smoothlib.metrics import frechet_from_features
from smoothlib.toy import classifier as clf
from smoothlib.toy import load_heldout_digits

HELDOUT_ACCURACY_BOUND = 0.95  # measured 0.984 (docs/toy_world.md)


@pytest.fixture(scope="module")
def heldout():
    return load_heldout_digits()


def test_heldout_digits_are_the_shipped_split(heldout):
    images, labels = heldout
    assert images.shape == (500, 1, 16, 16) and labels.shape == (500,)
    assert 0 <= images.min() and images.max() <= 1
    assert set(labels.tolist()) == set(range(10))


def test_classifier_accuracy_on_heldout_digits(heldout):
    images, labels = heldout
    assert clf.prompt_adherence(images, labels) > HELDOUT_ACCURACY_BOUND


def test_value_range_pm1_gives_the_same_predictions(heldout):
    images, _ = heldout
    a = clf.predict_digits(images[:64], value_range="01")
    b = clf.predict_digits(images[:64] * 2 - 1, value_range="pm1")
    assert torch.equal(a, b)


def test_frechet_real_vs_real_is_much_smaller_than_real_vs_noise(heldout):
    images, _ = heldout
    real = clf.frechet_distance(images[0::2], images[1::2])  # halves with every digit
    noise = clf.frechet_distance(images[0::2], torch.rand(250, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert 0 <= real < noise / 10


def test_frechet_from_features_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2 + 1  # N(1, 4 I): distance 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert frechet_from_features(a, b) == pytest.approx(6.0, rel=0.1)
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bad", [torch.rand(4, 3, 16, 16), torch.rand(4, 1, 28, 28), torch.rand(1, 16, 16)])
def test_wrong_image_shape_raises_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"\[B, 1, 16, 16\]"):
        clf.prompt_adherence(bad, torch.zeros(len(bad)))


def test_wrong_value_range_raises(heldout):
    images, labels = heldout
    with pytest.raises(ValueError, match="value_range"):
        clf.prompt_adherence(images[:4] * 2 - 1, labels[:4])  # [-1, 1] images declared as [0, 1]
    with pytest.raises(ValueError, match="value_range must be"):
        clf.prompt_adherence(images[:4], labels[:4], value_range="0-255")


def test_label_count_must_match(heldout):
    images, labels = heldout
    with pytest.raises(ValueError, match="labels"):
        clf.prompt_adherence(images[:4], labels[:3])
