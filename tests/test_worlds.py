"""smoothlib.worlds: loading a Stable Diffusion world from a folder or (faked, offline) Hub, and its helpers."""

import pytest
import torch

from smoothlib.hub import HubAccessError, hub_errors
from smoothlib.testing import tiny_pipeline, tiny_world
from smoothlib.world import World
from smoothlib.worlds import SHORT_NAMES, load_world



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny StableDiffusionPipeline saved as a diffusers folder, and the pipeline itself."""
    pipe = tiny_pipeline()
    folder = tmp_path_factory.mktemp("pipeline")
    pipe.save_pretrained(folder)
    return folder, pipe


def test_load_world_from_local_folder(saved, no_network):
    folder, pipe = saved
    world = load_world(folder)
    from diffusers import DDIMScheduler
    assert isinstance(world, World) and world.name == str(folder)
    assert (world.device, world.dtype) == (torch.device("cpu"), torch.float32)
    assert isinstance(world.scheduler, DDIMScheduler)
    config = world.scheduler.config
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset) == (False, False, 1)
    assert config.beta_schedule == "scaled_linear" and config.prediction_type == "epsilon"
    assert world.latent_shape == (4, 32, 32) and world.image_size == (64, 64)
    assert not any(p.requires_grad for p in world.unet.parameters())
    for a, b in zip(world.unet.state_dict().values(), pipe.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_encode_prompt_matches_diffusers(saved):
    folder, pipe = saved
    world = load_world(folder)
    prompts = ["a cat", "a dog on a hill"]
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True)
    torch.testing.assert_close(world.encode_prompt(prompts), cond, rtol=0, atol=0)
    torch.testing.assert_close(world.uncond_embedding(2), uncond, rtol=0, atol=0)
    assert world.encode_prompt("a cat").shape == (1, pipe.tokenizer.model_max_length, 32)


def test_decode_and_encode_use_the_scaling_factor(saved):
    folder, pipe = saved
    world = load_world(folder)
    latents = torch.randn(3, *world.latent_shape)
    images = world.decode(latents, batch_size=2)
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    with torch.no_grad():
        raw = pipe.vae.decode(latents / 0.18215).sample
    reference = pipe.image_processor.postprocess(raw, output_type="pt")  # diffusers' own [0, 1] mapping
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-5)
    with torch.no_grad():
        expected = pipe.vae.encode(images * 2 - 1).latent_dist.mean * 0.18215
    torch.testing.assert_close(world.encode(images), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        world.encode(images * 2 - 1)


def test_pixel_world_without_vae_is_identity_up_to_range():
    world = tiny_world(sample_size=32, name="pixels")  # tiny_pipeline()'s parts without its VAE
    images = torch.rand(2, 4, 32, 32)
    assert torch.equal(world.encode(images), images * 2 - 1)
    torch.testing.assert_close(world.decode(world.encode(images)), images)
    assert world.latent_shape == (4, 32, 32) and world.image_size == (32, 32)
    assert world.datasets == {}  # no bundled training sets unless a world brings some


@pytest.fixture(scope="module")
def hub_snapshot(saved, tmp_path_factory):
    """The saved folder laid out as the SD 1.5 download: safety checker listed but not fetched, PNDM config."""
    import json
    import shutil
    folder = tmp_path_factory.mktemp("snapshot") / "sd15"
    shutil.copytree(saved[0], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"],
                 requires_safety_checker=True, scheduler=["diffusers", "PNDMScheduler"])
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}))
    return folder


def test_repo_id_goes_through_the_hub_download_with_revision(hub_snapshot, monkeypatch, no_network):
    import huggingface_hub
    from diffusers import DDIMScheduler
    folder = hub_snapshot
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    world = load_world("sd15", revision="0123abc")
    (repo_id, kwargs), = calls
    assert repo_id == SHORT_NAMES["sd15"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert kwargs["revision"] == "0123abc" and world.name == "sd15"
    assert isinstance(world.scheduler, DDIMScheduler)
    assert world.scheduler.alphas_cumprod[-1] == DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod[-1]
    patterns = kwargs["allow_patterns"]
    assert "unet/diffusion_pytorch_model.safetensors" in patterns
    assert not any("safety_checker" in p or p.endswith(".bin") or p.endswith("*") and "unet" in p
                   for p in patterns)
    load_world("prompthero/openjourney-v4")
    assert calls[-1][0] == "prompthero/openjourney-v4"


def test_repo_id_offline_gives_clear_message(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError) as info:
        load_world("SG161222/Realistic_Vision_V2.0", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "'SG161222/Realistic_Vision_V2.0'" in message
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message
    assert "load_world('toy')" in message and "local folder" in message
    from huggingface_hub.errors import LocalEntryNotFoundError
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError)


def _http_error(cls):
    import httpx
    request = httpx.Request("GET", "https://huggingface.co/api/models/owner/name")
    return cls("refused", response=httpx.Response(404, request=request))


@pytest.mark.parametrize("error, reason", [
    ("GatedRepoError", "gated: accept its conditions"),
    ("RepositoryNotFoundError", "does not exist, was removed, or is private"),
    ("RevisionNotFoundError", "revision 'v9' does not exist"),
])
def test_hub_refusals_say_what_to_do(error, reason):
    from huggingface_hub import errors
    original = _http_error(getattr(errors, error))
    with pytest.raises(HubAccessError, match=reason) as info, hub_errors("the model", "owner/name", "v9"):
        raise original
    assert info.value.__cause__ is original
    assert "load_world('toy')" in str(info.value)


def test_unknown_names_and_later_worlds_are_clear_errors(tmp_path):
    toy = load_world("toy")
    assert toy.vae is None and toy.latent_shape == (1, 16, 16) and toy.image_size == (16, 16)
    assert toy.encode_prompt(["a handwritten seven"]).shape == (1, 12, 64)
    with pytest.raises(ValueError, match="unknown world 'sd14'"):
        load_world("sd14")
    with pytest.raises(ValueError, match="not a saved diffusers pipeline"):
        load_world(tmp_path)


def test_pickle_only_folder_is_refused(saved, tmp_path):
    import shutil
    folder, _ = saved
    copy = tmp_path / "pickled"
    shutil.copytree(folder, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match="pickle weights only"):
        load_world(copy)
