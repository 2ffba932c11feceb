"""Walks exported as files a reader opens: the GIF and MP4 written by smoothlib.export, read back by Pillow and imageio."""
import pytest
import torch
from PIL import Image

from smoothlib.export import export_walk, walk_images


def _walk(frames=5, channels=1, side=16):
    eta = torch.linspace(0, 1, frames).reshape(-1, 1, 1, 1)
    return (eta * torch.ones(frames, channels, side, side)).clamp(0, 1)


def test_gif_has_every_frame_forward_and_back_at_the_asked_size(tmp_path):
    path = export_walk(_walk(5), tmp_path / "walk.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 + 3  # 0 1 2 3 4, then 3 2 1: a loop without a seam
        assert gif.size == (128, 128)  # 16 px enlarged 8 times
        assert gif.info["duration"] == 100
        gif.seek(4)
        last = gif.convert("L").getpixel((0, 0))
        gif.seek(0)
        assert gif.convert("L").getpixel((0, 0)) == 0 and last == 255


def test_mp4_opens_with_its_frame_count_and_a_codec_friendly_size(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    path = export_walk(_walk(6, channels=3, side=20), tmp_path / "walk.mp4", fps=8, boomerang=False, size=100)
    reader = imageio.get_reader(path, format="ffmpeg")
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == 6
    assert frames[0].shape == (112, 112, 3)  # 100 rounded up to a multiple of 16
    assert frames[0].mean() < 10 and frames[-1].mean() > 245  # black to white, as the walk


def test_bad_walks_and_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="use a .gif or .mp4"):
        export_walk(_walk(), tmp_path / "walk.avi")
    with pytest.raises(ValueError, match=r"frames must be a tensor \[F, C, H, W\]"):
        export_walk(torch.zeros(3, 16, 16), tmp_path / "walk.gif")
    with pytest.raises(ValueError, match="at least 2 frames"):
        walk_images(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="fps must be an integer > 0"):
        export_walk(_walk(), tmp_path / "walk.gif", fps=0)


def test_image_grid_puts_each_image_in_its_cell_with_white_padding():
    from smoothlib.viz import image_grid

    images = torch.rand(5, 3, 4, 6)
    grid = torch.from_numpy(__import__("numpy").array(image_grid(images, nrow=3, pad=2))).permute(2, 0, 1) / 255
    assert grid.shape == (3, 2 + 2 * (4 + 2), 2 + 3 * (6 + 2))
    for i, image in enumerate(images):
        y, x = 2 + (i // 3) * 6, 2 + (i % 3) * 8
        assert (grid[:, y:y + 4, x:x + 6] - image).abs().max() <= 1 / 255 + 1e-6
    assert grid[:, :2].min() == 1 and grid[:, 8:, 2 + 2 * 8:].min() == 1  # the border, and the empty sixth cell
