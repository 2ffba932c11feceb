"""The bundled toy world: shipped files, offline loading, determinism, prompt adherence."""
import hashlib
import time

import pytest
import torch

import smoothlib as sl
from smoothlib import toy
from smoothlib.toy import classifier as clf

ADHERENCE_BOUND = 0.8  # 4 samples per digit, 25 DDIM steps; see docs/toy_world.md for the full measurement


@pytest.fixture(scope="module")
def components():
    return toy.load_toy_components()


def test_shipped_files_match_their_checksums():
    sums = (toy.data_dir() / "SHA256SUMS").read_text().split("\n")
    entries = [line.split("  ", 1) for line in sums if line.strip()]
    assert any(name.endswith("unet/diffusion_pytorch_model.safetensors") for _, name in entries)
    assert any(name.endswith("classifier/model.safetensors") for _, name in entries)
    for digest, name in entries:
        assert hashlib.sha256((toy.data_dir() / name).read_bytes()).hexdigest() == digest, name


def test_toy_loads_offline_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    parts = toy.load_toy_components()
    assert time.time() - start < 10
    assert set(parts) == {"unet", "text_encoder", "tokenizer", "scheduler"}
    assert parts["unet"].config.in_channels == 1 and parts["unet"].config.sample_size == toy.IMAGE_SIZE
    assert not parts["unet"].training and not any(p.requires_grad for p in parts["unet"].parameters())
    assert parts["scheduler"].config.num_train_timesteps == 1000
    assert parts["scheduler"].config.prediction_type == "epsilon"


def test_prompts_and_embeddings(components):
    assert toy.digit_prompt(7) == "a handwritten seven"
    assert toy.digit_prompt(8, 2) == "a picture of an eight"
    assert toy.digit_prompt(3, 1) == "the digit 3"
    emb = toy.encode_prompts(components["text_encoder"], components["tokenizer"], ["a handwritten one", ""])
    assert emb.shape == (2, toy.MAX_LENGTH, components["unet"].config.cross_attention_dim)
    with pytest.raises(ValueError, match="digit"):
        toy.digit_prompt(10)
    with pytest.raises(ValueError, match="template"):
        toy.digit_prompt(1, template=99)


def test_sampling_is_deterministic_under_a_seed(components):
    def sample():
        noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
        return toy.sample_digits(components, [1, 2], noise, num_steps=5)
    a, b = sample(), sample()
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b)


def test_base_follows_its_prompt(components):
    digits = torch.arange(10).repeat_interleave(4)
    noise = torch.randn(len(digits), 1, 16, 16, generator=torch.Generator().manual_seed(0))
    images = toy.sample_digits(components, digits, noise, num_steps=25)
    assert clf.prompt_adherence(images, digits) >= ADHERENCE_BOUND


def test_toy_samples_work_with_the_library_sampler(components):
    te, tok = components["text_encoder"], components["tokenizer"]
    cond = toy.encode_prompts(te, tok, [toy.digit_prompt(0)])
    x0 = sl.ddim_sample(components["unet"], components["scheduler"], torch.randn(1, 1, 16, 16), cond,
                        toy.encode_prompts(te, tok, [""]), guidance_scale=toy.TOY_GUIDANCE,
                        num_steps=3, progress=False)
    assert x0.shape == (1, 1, 16, 16) and torch.isfinite(x0).all()


def test_missing_weights_raise_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_toy_world"):
        toy.load_toy_components(path=tmp_path)


def test_the_text_encoder_loads_every_shipped_weight():
    """The text encoder holds exactly the shipped tensors (a transformers release that cannot read the
    file's layout would otherwise run with random weights and no error)."""
    from safetensors.torch import load_file

    shipped = load_file(toy.data_dir() / "toy" / "text_encoder" / "model.safetensors")
    assert all(k.startswith("text_model.") for k in shipped)   # the layout every transformers 5 release reads
    loaded = toy.load_toy_components()["text_encoder"].state_dict()
    by_name = {k.removeprefix("text_model."): v for k, v in loaded.items()}
    for key, value in shipped.items():
        assert torch.equal(by_name[key.removeprefix("text_model.")], value), key
