"""The toy world's shipped LoRAs: present, checksummed, loadable, switchable, and smoother than the base."""
import hashlib
import json

import pytest
import torch

import smoothlib as sl
from smoothlib import toy


def test_shipped_loras_are_listed_in_the_checksums():
    sums = dict(reversed(line.split("  ", 1)) for line in (toy.data_dir() / "SHA256SUMS").read_text().splitlines()
                if line.strip())
    for name in ("smooth", "control"):
        path = toy.lora_path(name)
        rel = path.relative_to(toy.data_dir()).as_posix()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[rel]
        run = json.loads((path.parent / "run.json").read_text())
        assert (run["lambda_reg"] > 0) == (name == "smooth")
        assert (path.parent / "MODEL_CARD.md").read_text().startswith("# Toy")


def test_shipped_loras_carry_only_the_adapter_metadata_diffusers_needs():
    """Written by save_lora's rules: no field a newer peft added, which diffusers with peft 0.18 would refuse."""
    from safetensors import safe_open

    from smoothlib.lora.io import ADAPTER_METADATA_FIELDS

    paths = sorted((toy.data_dir() / "toy_lora").glob("*/pytorch_lora_weights.safetensors"))
    assert len(paths) >= 2
    for path in paths:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["lora_adapter_metadata"])
        assert set(meta) == {"unet." + name for name in ADAPTER_METADATA_FIELDS}, path
        rank = json.loads((path.parent / "run.json").read_text()).get("rank", 8)  # alpha = rank for every run
        assert (meta["unet.r"], meta["unet.lora_alpha"]) == (rank, rank), path


def test_unknown_toy_lora_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="shipped"):
        toy.lora_path("no-such-lora")


def test_the_toy_world_loads_its_smooth_lora_with_on_off_and_strength():
    world = sl.load_world("toy")
    x = sl.seeded_noise(world, 0, 2)
    cond = world.encode_prompt(sl.digit_prompt(4))
    t = torch.tensor([500, 500])

    def out():
        return world.unet(x, t, encoder_hidden_states=cond.expand(2, -1, -1)).sample

    base = out()
    report = world.load_smooth_lora()
    assert report.ranks == (8,) and report.layers > 0 and report.source.endswith("pytorch_lora_weights.safetensors")
    smooth = out()
    assert not torch.allclose(smooth, base, atol=1e-6)
    with sl.lora_disabled(world.unet):
        torch.testing.assert_close(out(), base)
    sl.set_lora_strength(world.unet, 0.0)
    torch.testing.assert_close(out(), base)
    sl.set_lora_strength(world.unet, 1.0)
    torch.testing.assert_close(out(), smooth)


def shipped_scores(name: str) -> dict:
    """The miniature Table 1's scores of the base ("base") or of a shipped LoRA."""
    folder = toy.data_dir() / "toy_lora" / "base" if name == "base" else toy.lora_path(name).parent
    return json.loads((folder / "scores_100walks_25steps.json").read_text())


@pytest.mark.parametrize("name", ["base", "smooth", "control"])
def test_shipped_scores_are_reproduced_by_the_shipped_weights(name):
    """The README's miniature Table 1 comes from these weights: its first walks re-measure the same."""
    from smoothlib.toy.evaluation import smoothness_and_quality

    world = sl.load_world("toy")
    if name != "base":
        sl.load_smooth_lora(world.unet, toy.lora_path(name))
    scores = smoothness_and_quality(world, num_pairs=3, num_steps=25, progress=False)
    assert scores.per_walk == pytest.approx(shipped_scores(name)["per_walk"][:3], rel=1e-3, abs=1e-4)


def test_the_shipped_scores_show_the_smooth_lora_below_the_base_and_the_control():
    """On the 100 walks of the miniature Table 1 (re-measured from the weights above, walk by walk), the
    default Smooth LoRA's ISTD is lower, paired, by more than two standard errors; the control's is not."""
    from smoothlib.toy.evaluation import paired_change

    base, smooth, control = (shipped_scores(n)["per_walk"] for n in ("base", "smooth", "control"))
    assert len(base) == len(smooth) == len(control) == 100
    for reference in (base, control):
        change, stderr = paired_change(smooth, reference)
        assert change < -2 * stderr, f"ISTD {100 * change:+.1f} % (s.e. {100 * stderr:.1f} %)"
    change, stderr = paired_change(control, base)
    assert abs(change) < 2 * stderr, f"the control moved ISTD by {100 * change:+.1f} % (s.e. {100 * stderr:.1f} %)"
