"""Faults while the trainer writes a checkpoint, and non-finite weights: no data is lost and a resume
continues bit for bit as an uninterrupted run (tiny pixel-space world, 4 steps of batch 2, rank 2)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import smoothlib.checkpoint as ckpt_module
import smoothlib.train_state as train_state_module
from smoothlib.checkpoint import is_intact, latest_checkpoint, list_checkpoints, save_checkpoint
from smoothlib.config import TrainConfig
from smoothlib.train import train
from smoothlib import testing


def tiny_world():
    return testing.tiny_world(sample_size=16, in_channels=3)


@pytest.fixture(scope="module")
def data(captioned_rgb_folder):
    return captioned_rgb_folder


def config(data, out, **kw):
    base = dict(world="tiny", data=data, resolution=16, output_dir=str(out), rank=2, train_batch_size=2,
                gradient_accumulation_steps=1, max_train_steps=4, checkpointing_steps=1, checkpoints_total_limit=2,
                learning_rate=1e-3, progress=False)
    return TrainConfig(**{**base, **kw})


def steps_in_history(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]


def assert_same_state(run: Path, reference: Path):
    """Every tensor of the last checkpoint (LoRA, AdamW moments, a, RNG) and the final LoRA, bit for bit."""
    for rel in ("checkpoint-00000004/state.safetensors", "final/pytorch_lora_weights.safetensors"):
        got, want = load_file(run / rel), load_file(reference / rel)
        assert got.keys() == want.keys()
        assert [k for k in want if not torch.equal(got[k], want[k])] == [], rel
    state = load_file(run / "checkpoint-00000004" / "state.safetensors")
    assert {"regularizer.running_mean.a", "regularizer.step", "optimizer.0.exp_avg", "optimizer.0.exp_avg_sq"} <= state.keys()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(config(data, out), world=tiny_world())
    return out


def _disk_full(real):
    def save_file(tensors, path, *args, **kwargs):
        real(tensors, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(28, "No space left on device")
    return save_file


def _fail_on_call(real, n):
    calls = {"n": 0}

    def fsync(path):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(5, "Input/output error")
        return real(path)
    return fsync


def _fail_if(real, when):
    def call(path, *args, **kwargs):
        if when(str(path)):
            raise OSError(5, "Input/output error")
        return real(path, *args, **kwargs)
    return call


# the stages of save_checkpoint (smoothlib/checkpoint.py): name, what to break, the newest checkpoint after it
STAGES = {
    "state file cut short": ("save_file", lambda real: _disk_full(real), 2),
    "state written, not synced": ("_fsync", lambda real: _fail_on_call(real, 1), 2),
    "meta written, not synced": ("_fsync", lambda real: _fail_on_call(real, 2), 2),
    "both synced, before the rename": ("os.replace", lambda real: _fail_if(real, lambda p: p.endswith(".tmp")), 2),
    "renamed, pruning the oldest": ("shutil.rmtree", lambda real: _fail_if(real, lambda p: not p.endswith(".tmp")), 3),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_fault_while_writing_a_checkpoint_loses_nothing_and_resumes_bit_for_bit(
        data, reference, tmp_path, monkeypatch, stage):
    target, make, newest = STAGES[stage]
    module, name = (ckpt_module.os, "replace") if target == "os.replace" else \
        (ckpt_module.shutil, "rmtree") if target == "shutil.rmtree" else (ckpt_module, target)
    real_save, real = train_state_module.save_checkpoint, getattr(module, name)
    broken = make(real)
    calls = {"n": 0}

    def save_checkpoint_3rd_fails(*args, **kwargs):  # checkpoints 1 and 2 are written, the 3rd one breaks
        calls["n"] += 1
        setattr(module, name, broken if calls["n"] == 3 else real)
        try:
            return real_save(*args, **kwargs)
        finally:
            setattr(module, name, real)

    monkeypatch.setattr(train_state_module, "save_checkpoint", save_checkpoint_3rd_fails)
    run = tmp_path / "run"
    with pytest.raises(OSError):
        train(config(data, run), world=tiny_world())
    monkeypatch.undo()
    assert all(is_intact(p) for p in list_checkpoints(run))
    assert latest_checkpoint(run).name == f"checkpoint-{newest:08d}"
    assert not (run / "final").exists()

    train(config(data, run, resume="latest"), world=tiny_world())
    assert_same_state(run, reference)
    assert steps_in_history(run) == steps_in_history(reference) == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000003", "checkpoint-00000004"]


def _poisoned_adamw(at_step: int, what: str):
    class Poisoned(torch.optim.AdamW):
        steps = 0

        def step(self, closure=None):
            loss = super().step(closure)
            Poisoned.steps += 1
            if Poisoned.steps == at_step:
                p = self.param_groups[0]["params"][0]
                with torch.no_grad():
                    (p if what == "lora" else self.state[p]["exp_avg_sq"]).view(-1)[0] = float("nan")
            return loss
    return Poisoned


@pytest.mark.parametrize("what", ["lora", "optimizer"])
def test_non_finite_weights_are_never_checkpointed_and_latest_stays_the_last_good_one(
        data, reference, tmp_path, monkeypatch, what):
    monkeypatch.setattr(torch.optim, "AdamW", _poisoned_adamw(3, what))
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=rf"^{what}\..* is not finite after step 3: checkpoint-00000003 "
                                                 r"was not written.*the newest checkpoint, .*checkpoint-00000002, "
                                                 r"is where --resume latest"):
        train(config(data, run), world=tiny_world())
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-00000001", "checkpoint-00000002"]  # no checkpoint-00000003, not even a .tmp
    assert latest_checkpoint(run).name == "checkpoint-00000002" and not (run / "final").exists()
    for p in list_checkpoints(run):
        assert all(torch.isfinite(v).all() for v in load_file(p / "state.safetensors").values()
                   if v.is_floating_point())
    train(config(data, run, resume="latest"), world=tiny_world())
    assert_same_state(run, reference)
    assert steps_in_history(run) == [1, 2, 3, 4]


def test_keep_is_at_least_one_and_pruning_spares_the_new_and_later_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="keep must be None or an integer >= 1, got -1"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {}, keep=-1)
    assert list_checkpoints(tmp_path) == []
    for step in (100, 1, 2, 3):  # checkpoint-100 of some other run stays; the new one always stays
        save_checkpoint(tmp_path, step, {"w": torch.ones(1)}, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000003",
                                                            "checkpoint-00000100"]
