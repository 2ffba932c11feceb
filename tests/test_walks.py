import pytest
import torch

from smoothlib.ddim import ddim_sample
from smoothlib.interpolate import slerp
from smoothlib.inversion import invert, reconstruct
from smoothlib.metrics import istd_per_walk
from smoothlib.testing import tiny_world
from smoothlib.walks import ISTDResult, etas, image_walk, istd_protocol, noise_walk, prompt_walk, seeded_noise

STEPS = 3


@pytest.fixture(scope="module")
def world():
    return tiny_world(vae=True)


def _sample(world, x_T, prompt, w=7.5):
    with torch.no_grad():
        return world.decode(ddim_sample(world.unet, world.scheduler, x_T, world.encode_prompt(prompt),
                                        world.uncond_embedding(), w, STEPS, progress=False))


def test_seeded_noise_is_reproducible_and_cpu_drawn(world):
    a = seeded_noise(world, 7, 2)
    assert a.shape == (2, 4, 8, 8) and torch.equal(a, seeded_noise(world, 7, 2))
    assert torch.equal(a, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7)))
    assert torch.allclose(etas(11), torch.arange(11, dtype=torch.float64) / 10)
    with pytest.raises(ValueError, match="at least 2 frames"):
        etas(1)


def test_noise_walk_ends_are_the_two_noises_samples(world):
    x_a, x_b = seeded_noise(world, 0, 2)
    frames = noise_walk(world, x_a, x_b, "a cat", num_frames=4, num_steps=STEPS, batch_size=3, progress=False)
    assert frames.shape == (4, 3, 16, 16) and 0 <= frames.min() and frames.max() <= 1
    torch.testing.assert_close(frames[0], _sample(world, x_a[None], "a cat")[0])
    torch.testing.assert_close(frames[-1], _sample(world, x_b[None], "a cat")[0])
    middle = _sample(world, slerp(x_a, x_b, 1 / 3)[None], "a cat")[0]
    torch.testing.assert_close(frames[1], middle)


def test_prompt_walk_ends_are_the_two_prompts_samples(world):
    x_T = seeded_noise(world, 1)
    frames = prompt_walk(world, "a cat", "a dog", x_T, num_frames=3, num_steps=STEPS, progress=False)
    assert frames.shape == (3, 3, 16, 16)
    torch.testing.assert_close(frames[0], _sample(world, x_T, "a cat")[0])
    torch.testing.assert_close(frames[2], _sample(world, x_T, "a dog")[0])
    assert not torch.allclose(frames[0], frames[2])


def test_image_walk_ends_are_the_shared_nti_reconstructions(world):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    inv = invert(world, images, ["a cat", "a dog"], "nti", 7.5, STEPS, shared=True, progress=False)
    assert inv.null_embeddings[0].shape[0] == 1
    frames = image_walk(world, images[0], images[1], "a cat", "a dog", num_frames=4, num_steps=STEPS,
                        batch_size=3, inversion=inv, progress=False)
    assert frames.shape == (4, 3, 16, 16)
    rec = reconstruct(world, inv, progress=False)
    torch.testing.assert_close(frames[0], rec[0])
    torch.testing.assert_close(frames[-1], rec[1])
    # computing the inversion inside gives the same frames
    again = image_walk(world, images[0], images[1], "a cat", "a dog", num_frames=4, num_steps=STEPS, progress=False)
    torch.testing.assert_close(again, frames)
    with pytest.raises(ValueError, match="shared null-text inversion"):
        image_walk(world, None, None, "a cat", inversion=invert(world, images, "a cat", "nti", 7.5, 2, progress=False))


def test_istd_protocol_is_deterministic_and_matches_its_frames(world):
    kwargs = dict(num_frames=3, guidance_scale=7.5, num_steps=2, batch_size=4, progress=False)
    result = istd_protocol(world, ["a cat", "a dog"], seeds=[5, 6], return_frames=True, **kwargs)
    assert isinstance(result, ISTDResult)
    assert result.frames.shape == (2, 3, 3, 16, 16) and result.scores.shape == (2,)
    torch.testing.assert_close(result.scores, istd_per_walk(result.frames))
    assert result.mean == pytest.approx(result.scores.mean().item())
    assert result.stderr == pytest.approx(result.scores.std().item() / 2 ** 0.5)
    # item 1 is the noise walk of seed 6's two noises
    x_a, x_b = seeded_noise(world, 6, 2)
    walk = noise_walk(world, x_a, x_b, "a dog", num_frames=3, num_steps=2, progress=False)
    torch.testing.assert_close(result.frames[1], walk)
    again = istd_protocol(world, ["a cat", "a dog"], seeds=[5, 6], **kwargs)
    assert torch.equal(again.scores, result.scores) and again.frames is None
    repeated = istd_protocol(world, "a cat", num_pairs=2, **kwargs)
    assert repeated.prompts == ["a cat", "a cat"] and repeated.seeds == [0, 1]
    with pytest.raises(ValueError, match="one seed per prompt"):
        istd_protocol(world, ["a", "b"], seeds=[1], **kwargs)
