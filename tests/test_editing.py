import pytest
import torch

from smoothlib.ddim import ddim_schedule, ddim_step, model_output

from smoothlib.editing import edit, prompt_switch_sample, switch_schedule
from smoothlib.inversion import invert, reconstruct
from smoothlib.testing import tiny_world

STEPS = 4


@pytest.fixture(scope="module")
def setup():
    world = tiny_world(vae=True)
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    inv = invert(world, image, "a cat", "nti", 7.5, STEPS, progress=False)
    return world, image, inv


def test_switch_schedule():
    assert switch_schedule(50, 0.8) == 10 and switch_schedule(50, 0.6) == 20
    assert switch_schedule(50, 0.0) == 50 and switch_schedule(50, 1.0) == 0
    with pytest.raises(ValueError, match="ratio"):
        switch_schedule(50, 1.5)
    with pytest.raises(ValueError, match="rule must be one of nearest, release"):
        switch_schedule(50, 0.7, rule="ceil")


def _release_source_steps(num_steps, ratio):
    """The authors' loop, transcribed: the source prompt conditions step i while i < (1 - r) N."""
    steps = 0
    for i in range(num_steps):
        if i < (1 - ratio) * num_steps:
            steps += 1
    return steps


def test_release_rule_reproduces_the_release_step_count():
    assert (switch_schedule(50, 0.7), switch_schedule(50, 0.7, rule="release")) == (15, 16)
    pairs = [(n, r) for n in (10, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100) for r in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert all(switch_schedule(n, r, rule="release") == _release_source_steps(n, r) for n, r in pairs)
    differ = [(n, r) for n, r in pairs if switch_schedule(n, r) != switch_schedule(n, r, rule="release")]
    assert (50, 0.7) in differ and 0 < len(differ) < len(pairs)


def test_no_switch_is_the_nti_reconstruction(setup):
    world, image, inv = setup
    rec = reconstruct(world, inv, progress=False)
    torch.testing.assert_close(edit(world, image, "a cat", "a dog", ratio=0.0, inversion=inv, progress=False), rec)
    torch.testing.assert_close(edit(world, image, "a cat", "a cat", ratio=0.8, inversion=inv, progress=False), rec)


def test_switch_changes_exactly_the_later_steps(setup):
    world, image, inv = setup
    dog = world.encode_prompt("a dog")
    switched = prompt_switch_sample(world.unet, world.scheduler, inv.x_T, inv.cond, dog, inv.null_embeddings,
                                    0.5, 7.5, STEPS, progress=False)
    x = inv.x_T  # by hand: 2 steps with the cat prompt, then 2 with the dog prompt
    for i, s in enumerate(ddim_schedule(world.scheduler, STEPS)):
        out = model_output(world.unet, x, s.t, inv.cond if i < 2 else dog, inv.null_embeddings[i], 7.5)
        x = ddim_step(x, out, s.alpha_bar_t, s.alpha_bar_prev)
    torch.testing.assert_close(switched, x)
    edits = edit(world, image, "a cat", ["a dog", "a cat"], ratio=0.5, inversion=inv, progress=False)
    assert edits.shape == (2, 3, 16, 16) and 0 <= edits.min() and edits.max() <= 1
    rec = reconstruct(world, inv, progress=False)
    torch.testing.assert_close(edits[1], rec[0])
    assert not torch.allclose(edits[0], rec[0])


def test_edit_inverts_when_not_given_an_inversion(setup):
    world, image, inv = setup
    out = edit(world, image, "a cat", "a dog", ratio=0.75, num_steps=STEPS, progress=False)
    torch.testing.assert_close(out, edit(world, image, "a cat", "a dog", ratio=0.75, inversion=inv, progress=False))


def test_the_release_rule_reaches_the_edit(setup):
    world, image, inv = setup
    # N = 4, r = 0.7: (1 - r) N = 1.2000000000000002, so the release keeps the source for 2 steps, "nearest" for 1;
    # r = 0.5 keeps it for 2 with either rule
    assert (switch_schedule(STEPS, 0.7), switch_schedule(STEPS, 0.7, "release"), switch_schedule(STEPS, 0.5)) == (1, 2, 2)
    release = edit(world, image, "a cat", "a dog", ratio=0.7, inversion=inv, progress=False, rule="release")
    torch.testing.assert_close(release, edit(world, image, "a cat", "a dog", ratio=0.5, inversion=inv, progress=False))
    assert not torch.allclose(release, edit(world, image, "a cat", "a dog", ratio=0.7, inversion=inv, progress=False))
