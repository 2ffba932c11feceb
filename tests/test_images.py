import numpy as np
import pytest
import torch
from PIL import Image

from smoothlib.images import load_images, prepare_image, world_image_format


def _check(prepared, channels=3, size=(32, 32)):
    assert prepared.image.shape == (channels, *size)
    assert prepared.image.dtype == torch.float32
    assert 0 <= prepared.image.min() and prepared.image.max() <= 1


def test_rgba_is_composited_on_white_and_cropped():
    a = np.zeros((40, 64, 4), dtype=np.uint8)  # fully transparent black, 64 wide, 40 high
    p = prepare_image(Image.fromarray(a, "RGBA"), 32)
    _check(p)
    assert torch.allclose(p.image, torch.ones_like(p.image))  # transparent -> white
    text = str(p)
    assert "converted mode RGBA to RGB (alpha composited on white)" in text
    assert "centre-cropped 64x40 to 40x40" in text and "resized 40x40 to 32x32" in text
    assert p.original_size == (64, 40) and p.original_mode == "RGBA"


def test_centre_crop_keeps_the_middle():
    a = np.zeros((32, 96), dtype=np.uint8)
    a[:, 32:64] = 255  # a white middle third
    p = prepare_image(Image.fromarray(a, "L"), 32, channels=1)
    assert torch.equal(p.image, torch.ones(1, 32, 32))
    assert p.steps == ["centre-cropped 96x32 to 32x32"]


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "1"])
def test_modes_accepted(mode):
    im = Image.new("RGB", (37, 23), (200, 100, 50)).convert(mode)
    p = prepare_image(im, (32, 32))
    _check(p)
    assert f"converted mode {mode} to RGB" in str(p)


def test_16_bit_rescaled_and_grayscale_world():
    a = np.full((20, 20), 65535 // 2, dtype=np.uint16)
    p = prepare_image(Image.fromarray(a), 16, channels=1)
    _check(p, 1, (16, 16))
    assert p.original_mode.startswith("I;16")
    assert "converted mode I;16 to grayscale (L) for a 1-channel world (16-bit rescaled to 8-bit)" in str(p)
    assert p.image.mean().item() == pytest.approx(128 / 255, abs=1 / 255)


def test_rgb_of_right_size_is_used_as_is():
    a = (np.arange(32 * 32 * 3) % 256).astype(np.uint8).reshape(32, 32, 3)
    p = prepare_image(a, 32)
    assert p.steps == [] and str(p) == "used as is"
    assert torch.equal(p.image, torch.from_numpy(a).permute(2, 0, 1).float() / 255)


def test_path_tensor_and_float_array(tmp_path):
    path = tmp_path / "x.png"
    Image.new("P", (50, 70)).save(path)
    _check(prepare_image(path, 32))
    assert "read" in prepare_image(str(path), 32).steps[0]
    t = torch.rand(3, 40, 40)
    p = prepare_image(t, 32)
    _check(p)
    assert "quantised to 8 bit" in str(p)
    _check(prepare_image(np.random.rand(10, 12, 1), 32))


@pytest.mark.parametrize("source, match", [
    (Image.fromarray(np.zeros((8, 8), dtype=np.float32), "F"), "mode F"),
    (np.zeros((2, 8, 8, 3), dtype=np.uint8), "one image"),
    (np.full((8, 8), 2.0), r"outside \[0, 1\]"),
    (np.full((8, 8), 300, dtype=np.int32), "0..255"),
])
def test_refused_with_clear_message(source, match):
    with pytest.raises(ValueError, match=match):
        prepare_image(source, 32)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        prepare_image(tmp_path / "missing.png", 32)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        prepare_image(bad, 32)
    with pytest.raises(TypeError, match="PIL image"):
        prepare_image(3.0, 32)


def test_load_images_for_a_world():
    from types import SimpleNamespace
    pixel_world = SimpleNamespace(vae=None, latent_shape=(1, 16, 16), image_size=(16, 16))
    batch, reports = load_images([Image.new("RGBA", (30, 20)), np.zeros((16, 16), np.uint8)], pixel_world)
    assert world_image_format(pixel_world) == ((16, 16), 1)
    assert batch.shape == (2, 1, 16, 16) and len(reports) == 2
    assert "grayscale" in str(reports[0])
