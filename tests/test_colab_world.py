"""The Stable Diffusion stand-in as Colab loads it: float16, the Hub's layout, a release-format Smooth LoRA."""
import json

import pytest
import torch

import smoothlib as sl
from smoothlib.testing import SD15_MODEL_INDEX, save_tiny_sd15


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return save_tiny_sd15(tmp_path_factory.mktemp("sd_world"))


def test_the_stand_in_has_the_hub_layout(stand_in):
    folder, lora = stand_in
    assert json.loads((folder / "model_index.json").read_text()) == SD15_MODEL_INDEX
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    for part, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        assert (folder / part / f"{name}.safetensors").is_file()
    assert lora.name == "smooth_lora.safetensors"


def test_float16_world_with_a_settable_smooth_lora(stand_in, no_network):
    folder, lora = stand_in
    world = sl.load_world(folder, dtype="fp16", smooth_lora=lora.parent)
    assert world.dtype == torch.float16 and next(world.unet.parameters()).dtype == torch.float16
    assert world.smooth_lora == str(lora.parent)
    report = world.load_smooth_lora()
    assert "attention-processor" in report.format and report.tensors == 64
    text = repr(world)
    assert len(text.splitlines()) <= 3 and "float16" in text and "64x64" in text and "loaded" in text
    assert "UNet2DConditionModel" not in text


def test_null_text_inversion_in_float16_matches_float32(stand_in):
    """The float16 world upcasts for null-text inversion; its reconstruction matches a float32 world's.

    Stated tolerance: the reconstruction error (MSE to the input) within 2 % relative of the float32
    world's, and the two reconstructions within 0.03 of each other per pixel on average ([0, 1] range).
    What remains is float16's own: the prompt embeddings, the VAE and the image encoding run in float16
    (inputs differ by about 2e-4), and this random, untrained stand-in amplifies such differences far
    more than a trained model would. With identical inputs the upcast fit is exact
    (tests/test_inversion.py).
    """
    folder, lora = stand_in
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = {}
    for dtype in ("fp16", "fp32"):
        world = sl.load_world(folder, dtype=dtype, smooth_lora=lora)
        world.load_smooth_lora()
        inv = sl.invert(world, images, "a photograph of a cat", "nti", 7.5, 6, progress=False)
        assert all(n.dtype == torch.float32 for n in inv.null_embeddings)
        assert next(world.unet.parameters()).dtype == world.dtype   # given back after the fit
        out[dtype] = (inv, sl.reconstruct(world, inv, progress=False))
    (inv16, rec16), (inv32, rec32) = out["fp16"], out["fp32"]
    mse16, mse32 = sl.mse(rec16, images).item(), sl.mse(rec32, images).item()
    assert abs(mse16 - mse32) < 0.02 * mse32, (mse16, mse32)
    assert (rec16 - rec32).abs().mean() < 0.03
    assert inv16.losses.max() < 1.02 * inv32.losses.max() + 1e-5   # the fit went as far in either world


def test_r_over_t_in_float16_matches_float32(stand_in):
    folder, _ = stand_in
    x_0 = torch.randn(2, 4, 32, 32)
    cond = torch.randn(2, 77, 32)
    r = {}
    for dtype in ("fp16", "fp32"):
        world = sl.load_world(folder, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        r[dtype] = sl.regularizer.variation_at(world.unet, world.scheduler, x_0.to(world.dtype), cond.to(world.dtype),
                                               torch.tensor([100, 700]), g)
        assert next(world.unet.parameters()).dtype == world.dtype
    torch.testing.assert_close(r["fp16"], r["fp32"], rtol=2e-2, atol=0)
