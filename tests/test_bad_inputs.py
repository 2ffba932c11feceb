"""Bad inputs: each one is refused with a message naming what is wrong, or handled as documented.

One test (or parametrised group) per case; tiny tensors and tmp_path files, so the file runs in seconds.
"""
import ast
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file

import smoothlib as sl
from smoothlib.data import CaptionedImageFolder, read_captions
from smoothlib.images import as_world_images, prepare_image
from smoothlib.lora import LoraLoadError, load_smooth_lora

ROOT = Path(__file__).resolve().parents[1]

# A pixel-space world of the toy world's format; its UNet fails the test if anything reaches it.
FAKE_TOY = SimpleNamespace(vae=None, latent_shape=(1, 16, 16), image_size=(16, 16),
                           unet=None, encode_prompt=lambda p: pytest.fail("the input check came too late"))


def _png(path, size=(8, 8), colour=128):
    Image.new("L", size, colour).save(path)
    return path


def _captions(folder, rows, name="metadata.jsonl"):
    (folder / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return folder / name


def _within(seconds, fn, *args, **kwargs):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            result["error"] = err
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked for over {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


# --------------------------------------------------------------------------- folders and files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_in_image_folder_is_skipped_without_opening(tmp_path):
    _png(tmp_path / "good.png")
    os.mkfifo(tmp_path / "listed.png")      # named by the caption file
    os.mkfifo(tmp_path / "unlisted.png")    # only lying in the folder
    _captions(tmp_path, [{"file_name": "good.png", "text": "a"}, {"file_name": "listed.png", "text": "b"}])
    ds = _within(10, CaptionedImageFolder, tmp_path, resolution=8)
    assert len(ds) == 1 and ds.uncaptioned == []
    (path, reason), = ds.skipped
    assert path.endswith("listed.png") and "FIFO" in reason and "not opened" in reason
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, prepare_image, tmp_path / "listed.png", 8)
    with pytest.raises(ValueError, match="is a folder"):
        prepare_image(tmp_path, 8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_as_caption_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "metadata.jsonl")
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, read_captions, tmp_path)


def test_images_missing_from_caption_file_are_counted_with_a_warning(tmp_path):
    for name in ("a.png", "b.png", "c.jpg"):
        _png(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    _captions(tmp_path, [{"file_name": "a.png", "text": "a"}])
    with pytest.warns(UserWarning, match=r"2 image file\(s\) .* not used: b.png, c.jpg"):
        ds = CaptionedImageFolder(tmp_path, resolution=8)
    assert len(ds) == 1 and [p.name for p in ds.uncaptioned] == ["b.png", "c.jpg"]


# --------------------------------------------------------------------------- caption files


def test_caption_file_with_utf8_bom_is_read(tmp_path):
    _png(tmp_path / "a.png")
    line = json.dumps({"file_name": "a.png", "text": "ein Bär"}, ensure_ascii=False)
    (tmp_path / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode("utf-8"))
    assert read_captions(tmp_path) == [(tmp_path / "a.png", "ein Bär")]


def test_latin1_caption_file_names_file_and_line(tmp_path):
    text = '{"file_name": "a.png", "text": "plain"}\n{"file_name": "b.png", "text": "caf\u00e9"}\n'
    (tmp_path / "metadata.jsonl").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: not UTF-8 .*iconv"):
        read_captions(tmp_path)


def test_bad_json_line_names_file_and_line(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n\n{"file_name": "b.png", text}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:3: not valid JSON"):
        read_captions(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('["a.png", "a caption"]\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: each line needs 'file_name'"):
        read_captions(tmp_path)


def test_null_caption_is_an_error_not_the_text_None(tmp_path):
    _captions(tmp_path, [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "caption": None}])
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: the 'caption' is null, not a string"):
        read_captions(tmp_path)


def test_caption_with_line_separator_character_stays_one_line(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "one\u2028two"}\n', encoding="utf-8")
    assert read_captions(tmp_path)[0][1] == "one\u2028two"


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.png", "sub/../../outside.png"])
def test_file_name_outside_the_data_folder_is_refused(tmp_path, name):
    root = tmp_path / "data"
    root.mkdir()
    _png(tmp_path / "outside.png")
    _captions(root, [{"file_name": name, "text": "x"}])
    with pytest.raises(ValueError, match="points outside the data folder"):
        CaptionedImageFolder(root, resolution=8)
    assert read_captions(root, allow_outside_root=True)[0][0] == Path(os.path.normpath(root / name))


def test_file_name_inside_the_folder_with_dotdot_is_fine(tmp_path):
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "a.png")
    _captions(tmp_path, [{"file_name": "sub/../a.png", "text": "x"}])
    assert len(CaptionedImageFolder(tmp_path, resolution=8)) == 1


# --------------------------------------------------------------------------- image preparation


def test_narrow_chw_tensor_is_read_as_chw():
    red = torch.zeros(3, 8, 4)  # [C, H, W], 4 wide: its last axis looks like RGBA channels
    red[0] = 1
    image = prepare_image(red, (8, 4)).image
    assert torch.allclose(image[0], torch.ones(8, 4)) and image[1:].abs().max() == 0


def test_hwc_tensor_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"looks like \[H, W, C\]: pass t.permute\(2, 0, 1\)"):
        prepare_image(torch.rand(8, 8, 3), 8)
    with pytest.raises(ValueError, match=r"looks like \[C, H, W\]: pass a.transpose\(1, 2, 0\)"):
        prepare_image(np.random.rand(3, 8, 8), 8)


def test_bfloat16_tensor_is_accepted():
    t = torch.rand(3, 8, 8)
    p = prepare_image(t.bfloat16(), 8)
    assert p.image.dtype == torch.float32 and p.image.shape == (3, 8, 8)
    assert (p.image - t).abs().max() < 0.01  # bfloat16 rounding plus 8-bit quantisation
    world = SimpleNamespace(vae=None, latent_shape=(3, 8, 8), image_size=(8, 8))
    assert as_world_images(t.bfloat16(), world).dtype == torch.float32


def test_nan_image_is_refused_by_prepare_image():
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_image(torch.full((3, 8, 8), float("nan")), 8)


def test_exif_orientation_is_applied_as_in_training(tmp_path):
    a = np.zeros((20, 40), dtype=np.uint8)
    a[:, 20:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to show
    Image.fromarray(a).save(tmp_path / "photo.png", exif=exif)
    p = prepare_image(tmp_path / "photo.png", 20, channels=1)
    assert "EXIF orientation (6)" in str(p)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "photo.png"))
    assert torch.equal(p.image, prepare_image(upright, 20, channels=1).image)
    assert p.image[0, :5].mean() == 0 and p.image[0, -5:].mean() == 1  # top black, bottom white
    _captions(tmp_path, [{"file_name": "photo.png", "text": "x"}])
    item = CaptionedImageFolder(tmp_path, resolution=20, random_crop=False)[0]["pixel_values"]
    assert torch.equal((item[0] + 1) / 2, p.image[0])


# --------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("form", [list, tuple, np.array, torch.tensor])
def test_slerp_t_as_a_sequence_gives_every_frame(form):
    a, b = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    ts = [0.0, 0.25, 0.75, 1.0]  # exact in float32 too, so every form gives the same frames
    frames = sl.slerp(a, b, form(ts))
    assert frames.shape == (4, 2, 4, 4)
    assert torch.equal(frames, sl.slerp(a, b, torch.tensor(ts)))
    assert sl.lerp(a, b, form(ts)).shape == (4, 2, 4, 4)
    assert torch.equal(sl.slerp(a, b, np.float64(0.25)), frames[1])  # a numpy scalar is one frame


def test_slerp_between_opposite_ends_is_refused():
    v = torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match="nearly opposite directions"):
        sl.slerp(v, -v, 0.5)
    with pytest.raises(ValueError, match="nearly opposite directions"):
        sl.slerp(v, -3 * v + 1e-4 * torch.randn(2, 4, 4), [0.0, 0.5])


def test_slerp_of_nan_ends_and_empty_t_are_refused():
    a = torch.randn(3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        sl.slerp(a, torch.tensor([1.0, float("nan"), 0.0]), 0.5)
    with pytest.raises(ValueError, match="t is empty"):
        sl.slerp(a, torch.randn(3), [])


# --------------------------------------------------------------------------- metrics


def test_metrics_accept_lists_of_tensors():
    frames = torch.rand(5, 1, 4, 4)
    assert torch.equal(sl.istd(list(frames)), sl.istd(frames))
    walks = [list(frames), list(frames.flip(0))]  # a list of walks, each a list of frames
    assert torch.equal(sl.istd_per_walk(walks), sl.istd_per_walk(torch.stack([frames, frames.flip(0)])))
    assert torch.equal(sl.adjacent_distances(list(frames)), sl.adjacent_distances(frames))
    x, y = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    assert torch.equal(sl.mse(list(x), list(y)), sl.mse(x, y))
    assert torch.equal(sl.ssim(list(x), y), sl.ssim(x, y))


def test_metrics_refuse_ragged_lists_and_arrays_clearly():
    with pytest.raises(ValueError, match="differ in shape"):
        sl.istd([torch.rand(1, 4, 4), torch.rand(1, 4, 5), torch.rand(1, 4, 4)])
    with pytest.raises(TypeError, match="torch.from_numpy"):
        sl.istd(np.random.rand(5, 1, 4, 4))


# --------------------------------------------------------------------------- inversion and editing


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_image_is_refused_at_inversion_and_editing(bad):
    image = torch.rand(1, 16, 16)
    image[0, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite values in images"):
        sl.invert(FAKE_TOY, image, "x")
    with pytest.raises(ValueError, match="NaN or infinite values in the image"):
        sl.edit(FAKE_TOY, image, "x", "y")
    with pytest.raises(ValueError, match="NaN or infinite values in image_b"):
        sl.image_walk(FAKE_TOY, torch.rand(1, 16, 16), image, "x")


def test_rgb_image_on_a_grayscale_pixel_world_is_converted():
    from smoothlib.testing import tiny_world
    toy = tiny_world(sample_size=16, in_channels=1, name="toy-like")  # the toy world's format: 1 x 16 x 16 pixels
    rgb = torch.rand(3, 16, 16)
    images = as_world_images(rgb, toy)
    assert images.shape == (1, 1, 16, 16)
    assert torch.equal(images[0], prepare_image(rgb, 16, channels=1).image)  # the prepare path's conversion
    inv = sl.invert(toy, rgb, "a digit", "ddim", num_steps=2, progress=False)
    assert inv.x_T.shape == (1, 1, 16, 16) and torch.isfinite(inv.x_T).all()
    gray = torch.rand(1, 16, 16, dtype=torch.float64)
    assert torch.equal(as_world_images(gray, toy)[0], gray.float())  # the world's own format: used as is


# --------------------------------------------------------------------------- model files


@pytest.mark.parametrize("content, match", [
    ("", "is empty"),
    ("   \n", "is empty"),
    ('{"unet": ["diffusers", "UNet2DConditionModel"],', r"is not valid JSON \(.* line 1"),
    ("[1, 2]", "holds a JSON list"),
    ('{"_class_name": "StableDiffusionPipeline"}',
     r"does not describe .*\(no unet, vae, text_encoder, tokenizer, scheduler\)"),
])
def test_broken_model_index_is_a_clear_error(tmp_path, content, match):
    (tmp_path / "model_index.json").write_text(content)
    with pytest.raises(ValueError, match=f"model_index.json {match}"):
        sl.load_world(tmp_path)


@pytest.fixture
def tiny_unet():
    from smoothlib.testing import tiny_unet
    return tiny_unet()


def _release_lora(unet, rank=2):
    sd = {}
    for name in sl.attention_projections(unet):
        layer = unet.get_submodule(name)
        block, rest = name.split(".attn", 1)
        attn, proj = rest.split(".", 1)
        stem = f"{block}.attn{attn}.processor.{proj.removesuffix('.0')}_lora"
        sd[f"{stem}.down.weight"] = 0.1 * torch.randn(rank, layer.in_features)
        sd[f"{stem}.up.weight"] = 0.1 * torch.randn(layer.out_features, rank)
    return sd


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lora_with_nan_or_inf_is_refused_naming_file_and_tensor(tiny_unet, tmp_path, bad):
    sd = _release_lora(tiny_unet)
    key = sorted(sd)[3]
    sd[key][0, 0] = bad
    save_file(sd, str(tmp_path / "diverged.safetensors"))
    with pytest.raises(LoraLoadError, match=rf"diverged.safetensors: tensor '{key}' holds NaN or infinite"):
        load_smooth_lora(tiny_unet, tmp_path / "diverged.safetensors")
    assert not getattr(tiny_unet, "peft_config", None)  # nothing was applied


def test_lora_weights_are_safetensors_only(tiny_unet, tmp_path):
    torch.save(_release_lora(tiny_unet), tmp_path / "lora.pt")
    with pytest.raises(LoraLoadError, match="pickle"):
        load_smooth_lora(tiny_unet, tmp_path / "lora.pt")
    with pytest.raises(LoraLoadError, match="pickle"):  # a folder holding only pickle
        load_smooth_lora(tiny_unet, tmp_path)
    (tmp_path / "disguised.safetensors").write_bytes((tmp_path / "lora.pt").read_bytes())
    with pytest.raises(LoraLoadError, match="not a valid safetensors file"):
        load_smooth_lora(tiny_unet, tmp_path / "disguised.safetensors")


def test_no_code_path_unpickles_or_runs_remote_code():
    """No torch.load / pickle.load call and no trust_remote_code=True anywhere in the library."""
    found = []
    for path in sorted((ROOT / "smoothlib").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in ("load", "loads")
                    and isinstance(func.value, ast.Name) and func.value.id in ("torch", "pickle", "dill")):
                found.append(f"{path.name}:{node.lineno} {func.value.id}.{func.attr}")
            found += [f"{path.name}:{node.lineno} trust_remote_code" for kw in node.keywords
                      if kw.arg == "trust_remote_code"
                      and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)]
    assert not found, found


def test_images_without_pixels_and_a_size_of_zero_are_refused():
    from PIL import Image

    from smoothlib.images import prepare_image
    with pytest.raises(ValueError, match="no pixels"):
        prepare_image(Image.new("RGB", (0, 0)), 8)
    with pytest.raises(ValueError, match="no pixels|shape"):
        prepare_image(np.zeros((0, 8), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="size must be"):
        prepare_image(Image.new("RGB", (4, 4)), 0)


def test_an_empty_caption_file_is_named(tmp_path):
    from smoothlib.data import read_captions
    (tmp_path / "metadata.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="metadata.jsonl holds no caption lines"):
        read_captions(tmp_path)


def test_lerp_refuses_non_finite_ends():
    import smoothlib as sl
    with pytest.raises(ValueError, match="finite"):
        sl.lerp(torch.tensor([float("nan"), 1.0]), torch.ones(2), [0.0, 1.0])
