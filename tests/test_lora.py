"""smoothlib.lora against independent references: hand-merged W + up @ down, and diffusers' own loader."""
import copy
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from smoothlib.hub import HubAccessError
from smoothlib.lora import (LoraLoadError, attach_lora, attention_projections, load_smooth_lora, lora_disabled,
                            lora_enabled, lora_parameters, remove_lora, save_lora, set_lora_strength)
from smoothlib.testing import random_lora, tiny_pipeline, tiny_unet

RANK = 4


# --------------------------------------------------------------------------- helpers


def release_key(layer: str, half: str) -> str:
    """'...attn1.to_out.0' -> '...attn1.processor.to_out_lora.down.weight' (the release's naming)."""
    block, proj = layer.rsplit(".attn", 1)[0], layer.split(".attn", 1)[1]
    attn, proj = proj.split(".", 1)
    proj = proj.removesuffix(".0")
    return f"{block}.attn{attn}.processor.{proj}_lora.{half}.weight"


def release_lora(unet, rank=RANK, scale=0.1, seed=1):
    """A release-format LoRA (unprefixed keys, down [r, in], up [out, r]) for every attention projection."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in attention_projections(unet):
        layer = unet.get_submodule(name)
        sd[release_key(name, "down")] = scale * torch.randn(rank, layer.in_features, generator=g)
        sd[release_key(name, "up")] = scale * torch.randn(layer.out_features, rank, generator=g)
    return sd


def hand_merged(unet, sd, strength=1.0):
    """Independent reference: a copy of the base UNet with W <- W + strength * up @ down, layer by layer."""
    merged = copy.deepcopy(unet)
    with torch.no_grad():
        for name in attention_projections(merged):
            down, up = sd[release_key(name, "down")], sd[release_key(name, "up")]
            merged.get_submodule(name).weight += strength * up @ down
    return merged


def run(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    c = torch.randn(2, 6, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), c).sample


def assert_pristine(unet, reference_state):
    """No adapter left behind and every tensor as before."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    assert not getattr(unet, "peft_config", None)
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    state = unet.state_dict()
    assert state.keys() == reference_state.keys()
    assert all(torch.equal(state[k], v) for k, v in reference_state.items())



@pytest.fixture
def unet():
    return tiny_unet()


@pytest.fixture
def release_file(unet, tmp_path):
    path = tmp_path / "smooth_lora.safetensors"
    save_file(release_lora(unet), str(path))
    return path


# --------------------------------------------------------------------------- loading the release's format


def test_release_format_equals_hand_merged_weights(unet, release_file):
    reference = hand_merged(unet, load_file(str(release_file)))
    base_out = run(unet)
    report = load_smooth_lora(unet, release_file)
    assert (report.layers, report.tensors, report.ranks, report.alphas) == (32, 64, (RANK,), (float(RANK),))
    assert report.format == "attention-processor"
    out = run(unet)
    torch.testing.assert_close(out, run(reference), rtol=0, atol=1e-5)
    assert (out - base_out).abs().max() > 1e-2  # the LoRA really changes the output
    unet.fuse_lora()  # peft's merged weights equal the hand-merged ones
    for name in attention_projections(reference):
        torch.testing.assert_close(unet.get_submodule(name).base_layer.weight,
                                   reference.get_submodule(name).weight, rtol=0, atol=1e-6)


def test_diffusers_load_lora_weights_silently_ignores_release_format(release_file):
    """The trap of the released file under diffusers 0.42: it loads as nothing; only a log line says so."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        pipe = tiny_pipeline()
        base_out = run(pipe.unet)
        pipe.load_lora_weights(str(release_file.parent), weight_name=release_file.name)  # no exception (weight_name: diffusers 0.36 asks for it offline)
    finally:
        diffusers_logger.removeHandler(handler)
    assert not getattr(pipe.unet, "peft_config", None)
    assert torch.equal(run(pipe.unet), base_out)  # the "smooth" model is the base model
    assert any("No LoRA keys associated to UNet2DConditionModel" in r.getMessage() for r in records)


def test_loaded_lora_is_frozen_and_named(unet, release_file):
    load_smooth_lora(unet, release_file.parent, adapter_name="mine")
    params = lora_parameters(unet, "mine")
    assert len(params) == 64 and not any(p.requires_grad for p in params)
    with pytest.raises(LoraLoadError, match="already has an adapter named 'mine'"):
        load_smooth_lora(unet, release_file, adapter_name="mine")


def test_strength_scales_the_update_and_zero_is_the_base(unet, release_file):
    sd = load_file(str(release_file))
    half, full = run(hand_merged(unet, sd, 0.5)), run(hand_merged(unet, sd))
    base_out = run(unet)
    load_smooth_lora(unet, release_file, strength=0.5)
    torch.testing.assert_close(run(unet), half, rtol=0, atol=1e-5)
    set_lora_strength(unet, 0.0)
    assert torch.equal(run(unet), base_out)
    set_lora_strength(unet, 1.0)
    torch.testing.assert_close(run(unet), full, rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in lora_parameters(unet))


def test_disable_enable_toggles(unet, release_file):
    base_out = run(unet)
    load_smooth_lora(unet, release_file)
    lora_out = run(unet)
    with lora_disabled(unet):
        assert torch.equal(run(unet), base_out)
    assert torch.equal(run(unet), lora_out)
    assert not any(p.requires_grad for p in lora_parameters(unet))
    with pytest.raises(RuntimeError, match="boom"), lora_disabled(unet):
        raise RuntimeError("boom")
    assert torch.equal(run(unet), lora_out)
    with lora_enabled(unet, False):
        assert torch.equal(run(unet), base_out)
    with lora_enabled(unet, True):
        assert torch.equal(run(unet), lora_out)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning",
                            "ignore:Adapter other was active:UserWarning")  # peft, on the second adapter
def test_remove_lora_gives_back_the_base_model_exactly(unet, release_file):
    before = copy.deepcopy(unet.state_dict())
    base_out = run(unet)
    load_smooth_lora(unet, release_file)
    attach_lora(unet, adapter_name="other")
    remove_lora(unet, "other")  # another adapter left: only "other" goes
    assert list(unet.peft_config) == ["smooth"]
    remove_lora(unet)
    assert torch.equal(run(unet), base_out)
    assert_pristine(unet, before)
    with pytest.raises(ValueError, match="no adapter 'smooth'"):
        remove_lora(unet)
    remove_lora(unet, missing_ok=True)  # nothing to remove, on purpose
    assert torch.equal(run(unet), base_out)
    load_smooth_lora(unet, release_file)  # and the name is free again


# --------------------------------------------------------------------------- clear errors, UNet unchanged


def _broken(kind, unet, sd):
    first_down = next(k for k in sd if k.endswith("down.weight"))
    if kind == "missing up":
        del sd[first_down.replace(".down.", ".up.")]
    elif kind == "missing layer":
        del sd[first_down], sd[first_down.replace(".down.", ".up.")]
    elif kind == "extra key":
        sd["down_blocks.0.attentions.0.transformer_blocks.7.attn1.processor.to_q_lora.down.weight"] = sd[first_down].clone()
    elif kind == "extra non-lora key":
        sd["text_model.embeddings.position_ids"] = torch.zeros(3)
    elif kind == "wrong shape":  # another architecture: cross-attention from 2048-d text, as in SDXL
        for k in [k for k in sd if ".attn2.processor.to_k_lora.down" in k]:
            sd[k] = torch.randn(RANK, 2048)
    return sd


@pytest.mark.parametrize("kind, message", [
    ("missing up", "1 missing"), ("missing layer", "1 missing"), ("extra key", "1 unexpected"),
    ("extra non-lora key", "1 unexpected"), ("wrong shape", "4 wrong shape"),
])
def test_bad_lora_is_a_clear_error_and_leaves_unet_unchanged(unet, tmp_path, kind, message):
    path = tmp_path / "bad.safetensors"
    save_file(_broken(kind, unet, release_lora(unet)), str(path))
    before = copy.deepcopy(unet.state_dict())
    with pytest.raises(LoraLoadError, match=message) as info:
        load_smooth_lora(unet, path)
    assert "UNet is unchanged" in str(info.value)
    assert_pristine(unet, before)


def test_partial_lora_loads_with_strict_false(unet, tmp_path):
    path = tmp_path / "partial.safetensors"
    save_file(_broken("missing layer", unet, release_lora(unet)), str(path))
    assert load_smooth_lora(unet, path, strict=False).layers == 31


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_pickle_file_is_refused(unet, tmp_path, suffix):
    path = tmp_path / f"lora{suffix}"
    torch.save(release_lora(unet), path)
    before = copy.deepcopy(unet.state_dict())
    with pytest.raises(LoraLoadError, match="pickle"):
        load_smooth_lora(unet, path)
    assert_pristine(unet, before)


def test_folder_with_only_pickle_is_refused(unet, tmp_path):
    torch.save(release_lora(unet), tmp_path / "pytorch_lora_weights.bin")
    with pytest.raises(LoraLoadError, match="pickle"):
        load_smooth_lora(unet, tmp_path)


def test_failure_after_injection_is_undone(unet, release_file, monkeypatch):
    import smoothlib.lora.io
    before = copy.deepcopy(unet.state_dict())

    def boom(*args):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(smoothlib.lora.io, "_copy_in", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_smooth_lora(unet, release_file)
    assert_pristine(unet, before)
    assert all(p.requires_grad for p in unet.parameters())  # peft's freezing undone too


# --------------------------------------------------------------------------- fresh LoRA, saving, other formats


def test_attach_lora_starts_at_the_base_and_trains(unet):
    base_out = run(unet)
    params = attach_lora(unet, rank=8)
    assert len(params) == 64 and all(p.requires_grad for p in params)
    assert sum(p.numel() for p in params) == 8 * sum(
        unet.get_submodule(n).in_features + unet.get_submodule(n).out_features
        for n in attention_projections(unet))
    assert torch.equal(run(unet), base_out)  # B = 0
    config = unet.peft_config["smooth"]
    assert (config.r, config.lora_alpha) == (8, 8)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 6, 32, generator=g)
    unet(x, 10, c).sample.square().mean().backward()
    trained = {n for n, p in unet.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    assert trained and all(".lora_B.smooth." in n for n in trained)  # B = 0 makes A's gradient 0 at first


def test_attach_lora_bad_targets_leave_unet_unchanged(unet):
    before = copy.deepcopy(unet.state_dict())
    with pytest.raises(ValueError, match="target_modules"):
        attach_lora(unet, rank=4, target_modules=("no_such_layer",))
    assert_pristine(unet, before)


def test_diffusers_save_roundtrips_through_plain_load_lora_weights(unet, tmp_path):
    random_lora(unet, rank=RANK)
    ours = run(unet)
    path = save_lora(unet, tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors"
    pipe = tiny_pipeline()
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=path.name)  # weight_name: diffusers 0.36 asks for it offline
    assert torch.equal(run(pipe.unet), ours)  # alpha = 2 != rank survived via the metadata
    fresh = tiny_unet()
    report = load_smooth_lora(fresh, path)
    assert (report.format, report.alphas) == ("diffusers/peft", (2.0,))
    assert torch.equal(run(fresh), ours)


def test_kohya_export_roundtrips_through_diffusers_and_ours(unet, tmp_path):
    random_lora(unet, rank=RANK)
    ours = run(unet)
    path = save_lora(unet, tmp_path / "webui.safetensors", format="kohya")
    sd = load_file(str(path))
    assert all(k.startswith("lora_unet_") for k in sd)
    assert sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"] == 2.0
    pipe = tiny_pipeline()
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)  # diffusers' own kohya converter
    torch.testing.assert_close(run(pipe.unet), ours, rtol=0, atol=1e-6)
    fresh = tiny_unet()
    assert load_smooth_lora(fresh, path).format == "kohya"
    torch.testing.assert_close(run(fresh), ours, rtol=0, atol=1e-6)


def test_release_export_roundtrips(unet, tmp_path):
    random_lora(unet, rank=RANK)
    ours = run(unet)
    set_lora_strength(unet, 0.3)  # a runtime setting: not saved
    path = save_lora(unet, tmp_path, format="release")
    assert path.name == "smooth_lora.safetensors"
    assert all(".processor." in k for k in load_file(str(path)))
    fresh = tiny_unet()
    load_smooth_lora(fresh, path)
    torch.testing.assert_close(run(fresh), ours, rtol=0, atol=1e-6)


def test_peft_keys_without_metadata_mean_scale_one(unet, tmp_path):
    sd = release_lora(unet)
    peft = {}
    for name in attention_projections(unet):
        peft[f"unet.{name}.lora_A.weight"] = sd[release_key(name, "down")]
        peft[f"unet.{name}.lora_B.weight"] = sd[release_key(name, "up")]
    save_file(peft, str(tmp_path / "peft.safetensors"))
    load_smooth_lora(unet, tmp_path / "peft.safetensors")
    torch.testing.assert_close(run(unet), run(hand_merged(tiny_unet(), sd)), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- Hub


def test_default_source_offline_gives_clear_message(unet, tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError) as info:
        load_smooth_lora(unet, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "shi-labs/smooth-diffusion-lora" in message and "smooth_lora.safetensors" in message
    assert "HF_HUB_OFFLINE" in message and "load_world('toy')" in message
    assert info.value.__cause__ is not None
    assert not getattr(unet, "peft_config", None)


# --------------------------------------------------------------------------- Stable Diffusion 1.5's real UNet


SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)


def sd15_release_lora(rank=8, text_dim=768):
    """The release's 256 keys and shapes, written from SD 1.5's layout (not read off a UNet)."""
    blocks = [(f"down_blocks.{b}.attentions.{a}", w) for b, w in enumerate((320, 640, 1280)) for a in range(2)]
    blocks += [("mid_block.attentions.0", 1280)]
    blocks += [(f"up_blocks.{b}.attentions.{a}", w) for b, w in zip((1, 2, 3), (1280, 640, 320)) for a in range(3)]
    sd = {}
    for block, width in blocks:
        for attn, context in (("attn1", width), ("attn2", text_dim)):
            for proj, fan_in in (("to_q", width), ("to_k", context), ("to_v", context), ("to_out", width)):
                stem = f"{block}.transformer_blocks.0.{attn}.processor.{proj}_lora"
                sd[f"{stem}.down.weight"] = torch.randn(rank, fan_in)
                sd[f"{stem}.up.weight"] = torch.randn(width, rank)
    return sd


@pytest.mark.slow
def test_sd15_unet_takes_the_release_shaped_lora(tmp_path):
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):  # the architecture without 3.4 GB of random init
        unet = UNet2DConditionModel(**SD15_UNET)
    unet.to_empty(device="cpu")  # uninitialised memory, only touched where the LoRA lands
    assert len(attention_projections(unet)) == 128

    wrong = tmp_path / "wrong_text_width.safetensors"  # cross-attention from 2048-d text, as in SDXL
    save_file(sd15_release_lora(text_dim=2048), str(wrong))
    with pytest.raises(LoraLoadError, match="32 wrong shape"):
        load_smooth_lora(unet, wrong)

    sd = sd15_release_lora()
    path = tmp_path / "smooth_lora.safetensors"
    save_file(sd, str(path))
    report = load_smooth_lora(unet, path)
    assert (report.tensors, report.layers, report.parameters) == (256, 128, 1_594_368)
    assert sum(p.numel() for p in lora_parameters(unet)) == 1_594_368
    for name in attention_projections(unet):
        layer = unet.get_submodule(name)
        assert torch.equal(layer.lora_A["smooth"].weight, sd[release_key(name, "down")])
        assert torch.equal(layer.lora_B["smooth"].weight, sd[release_key(name, "up")])
