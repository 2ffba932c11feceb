import json

import numpy as np
import pytest
import torch
from PIL import Image

from smoothlib.data import CaptionedImageFolder, to_rgb


def _folder(tmp_path, layout="metadata"):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows = [("rgb.png", "a red thing"), ("gray.png", "a gray thing"), ("rgba.png", "a clear thing"),
            ("deep.png", "a 16-bit thing"), ("corrupt.jpg", "broken"), ("missing.png", "gone")]
    key = "text" if layout == "metadata" else "caption"
    name = "metadata.jsonl" if layout == "metadata" else "captions.jsonl"
    (tmp_path / name).write_text("\n".join(json.dumps({"file_name": f, key: c}) for f, c in rows))
    return tmp_path / name


@pytest.mark.parametrize("layout", ["metadata", "release"])
def test_folder_converts_and_skips(tmp_path, layout):
    captions = _folder(tmp_path, layout)
    ds = CaptionedImageFolder(tmp_path, resolution=16, captions=captions if layout == "release" else None)
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert {p.split("/")[-1] for p, _ in ds.skipped} == {"corrupt.jpg", "missing.png"}
    for item in ds:
        x = item["pixel_values"]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert -1 <= x.min() and x.max() <= 1


def test_transparency_goes_on_white_and_16_bit_is_scaled():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="mode F"):
        to_rgb(Image.new("F", (4, 4)))


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "nope.png", "text": "x"}))
    with pytest.raises(ValueError, match="no usable images"):
        CaptionedImageFolder(tmp_path, resolution=16)
    with pytest.raises(FileNotFoundError, match="no caption file"):
        CaptionedImageFolder(tmp_path / "elsewhere", resolution=16)
