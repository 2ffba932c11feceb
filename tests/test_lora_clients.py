"""Which client loads which saved file: diffusers' loaders, peft's oldest declared version, smoothlib's own.

References are independent of the code under test: W + (alpha / r) B A merged by hand from the trained
adapter's tensors, and the field list of peft 0.18's ``LoraConfig`` written out below.
"""
import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from smoothlib.lora import adapter_metadata, attention_projections, load_smooth_lora, save_lora
from smoothlib.lora.io import ADAPTER_METADATA_FIELDS
from smoothlib.testing import random_lora, tiny_pipeline, tiny_unet

RANK, ALPHA = 4, 2.0

PEFT_018_LORA_CONFIG_FIELDS = {
    # peft 0.18.0's LoraConfig dataclass fields with those of PeftConfig and PeftConfigMixin, read from
    # peft-0.18.0-py3-none-any.whl (peft/tuners/lora/config.py, peft/config.py); the oldest peft declared
    "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias",
    "use_rslora", "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern",
    "rank_pattern", "alpha_pattern", "megatron_config", "megatron_core", "trainable_token_indices",
    "loftq_config", "eva_config", "corda_config", "use_dora", "alora_invocation_tokens", "use_qalora",
    "qalora_group_size", "layer_replication", "runtime_config", "lora_bias", "target_parameters",
    "arrow_config", "ensure_weight_tying",
    "base_model_name_or_path", "revision", "peft_type", "task_type", "inference_mode", "auto_mapping",
    "peft_version",
}


def trained(unet, seed=3):
    """A rank-4 adapter with alpha 2 (scale 1/2) and random A, B, standing in for a trained LoRA."""
    random_lora(unet, rank=RANK, alpha=ALPHA, seed=seed)
    return unet


def hand_merged(lora_unet):
    """A fresh base UNet with W <- W + (alpha / r) B A for every adapted layer, from ``lora_unet``'s tensors."""
    merged = tiny_unet()
    with torch.no_grad():
        for name in attention_projections(merged):
            layer = lora_unet.get_submodule(name)
            down, up = layer.lora_A["smooth"].weight, layer.lora_B["smooth"].weight
            merged.get_submodule(name).weight += (ALPHA / RANK) * up @ down
    return merged


def run(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 6, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), c).sample


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One trained adapter saved in the three formats, its hand-merged reference and its output."""
    folder = tmp_path_factory.mktemp("lora")
    unet = trained(tiny_unet())
    files = {fmt: save_lora(unet, folder, format=fmt) for fmt in ("diffusers", "kohya", "release")}
    reference = hand_merged(unet)
    return files, run(reference), run(unet)


def header(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["lora_adapter_metadata"])


def test_diffusers_metadata_holds_only_what_diffusers_needs(saved):
    files, _, _ = saved
    meta = header(files["diffusers"])
    assert set(meta) == {"unet." + name for name in ADAPTER_METADATA_FIELDS}
    assert set(ADAPTER_METADATA_FIELDS) == {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern"}
    assert (meta["unet.r"], meta["unet.lora_alpha"]) == (RANK, ALPHA)
    assert meta["unet.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]


def test_metadata_builds_a_lora_config_with_only_fields_peft_018_knows(saved):
    from peft import LoraConfig

    files, _, _ = saved
    config = {k.removeprefix("unet."): v for k, v in header(files["diffusers"]).items()}
    assert set(config) <= PEFT_018_LORA_CONFIG_FIELDS
    rebuilt = LoraConfig(**config)
    assert (rebuilt.r, rebuilt.lora_alpha, rebuilt.target_modules) == (RANK, ALPHA, {"to_q", "to_k", "to_v", "to_out.0"})


def test_a_flag_that_changes_the_computation_is_written_when_set():
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"], use_rslora=True)
    meta = adapter_metadata(config)
    assert meta["use_rslora"] is True and "use_dora" not in meta and set(meta) <= PEFT_018_LORA_CONFIG_FIELDS


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_load_lora_weights_reproduces_the_hand_merged_model(saved, fmt):
    files, reference, ours = saved
    pipe = tiny_pipeline()
    pipe.load_lora_weights(str(files[fmt].parent), weight_name=files[fmt].name)
    out = run(pipe.unet)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, ours, rtol=0, atol=1e-6)
    assert (out - run(tiny_unet())).abs().max() > 1e-2  # the LoRA changes the output


def test_load_lora_adapter_without_prefix_applies_the_release_file_exactly(saved):
    """diffusers converts the attention-processor keys itself once no 'unet.' prefix is asked for."""
    files, reference, _ = saved
    unet = tiny_unet()
    unet.load_lora_adapter(load_file(str(files["release"])), prefix=None, adapter_name="release")
    ours = tiny_unet()
    load_smooth_lora(ours, files["release"])
    torch.testing.assert_close(run(unet), run(ours), rtol=0, atol=1e-6)
    torch.testing.assert_close(run(unet), reference, rtol=0, atol=1e-5)


def test_load_lora_weights_skips_the_release_file_with_only_a_log_line(saved):
    files, _, _ = saved
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        pipe = tiny_pipeline()
        pipe.load_lora_weights(str(files["release"].parent), weight_name=files["release"].name)
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not getattr(pipe.unet, "peft_config", None)
    assert torch.equal(run(pipe.unet), run(tiny_unet()))
    assert any("No LoRA keys associated to UNet2DConditionModel" in r.getMessage() for r in records)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya", "release"])
def test_load_smooth_lora_reads_every_format(saved, fmt):
    files, reference, _ = saved
    unet = tiny_unet()
    report = load_smooth_lora(unet, files[fmt])
    assert report.alphas == ((ALPHA,) if fmt != "release" else (float(RANK),))  # release: alpha / r folded into B
    torch.testing.assert_close(run(unet), reference, rtol=0, atol=1e-5)


def test_hand_merged_reference_is_not_the_base():
    unet = trained(tiny_unet())
    base, merged = run(tiny_unet()), run(hand_merged(unet))
    assert (merged - base).abs().max() > 1e-2
    torch.testing.assert_close(merged, run(unet), rtol=0, atol=1e-5)
