"""The trainer on tiny in-memory worlds: exact resume, damaged checkpoints, NaN, bad files, two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import smoothlib.train as train_module
from smoothlib.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from smoothlib.config import TrainConfig
from smoothlib import testing
from smoothlib.testing import tiny_pipeline
from smoothlib.train import train


def tiny_world():
    return testing.tiny_world(sample_size=16, in_channels=3)


def make_folder(root: Path, n=8, size=20, extra=()):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"image {i}"})
    for name, caption in extra:
        rows.append({"file_name": name, "text": caption})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def config(tmp_path, **kw):
    if "data" not in kw:
        kw["data"] = str(make_folder(tmp_path / "data"))
    base = dict(world="tiny", resolution=16,
                output_dir=str(tmp_path / "run"), train_batch_size=2, gradient_accumulation_steps=2,
                max_train_steps=4, checkpointing_steps=2, learning_rate=1e-3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def lora_of(run: Path):
    return load_file(run / "final" / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("buckets, relative", [(1, False), (4, False), (4, True)])
def test_resume_equals_an_uninterrupted_run(tmp_path, buckets, relative):
    reg = {"reg_t_buckets": buckets, "reg_relative": relative}
    straight = train(config(tmp_path, output_dir=str(tmp_path / "a"), **reg), world=tiny_world())
    train(config(tmp_path, output_dir=str(tmp_path / "b"), max_train_steps=2, **reg), world=tiny_world())
    resumed = train(config(tmp_path, output_dir=str(tmp_path / "b"), resume="latest", **reg), world=tiny_world())
    a, b = lora_of(tmp_path / "a"), lora_of(tmp_path / "b")
    assert a.keys() == b.keys()
    # same operations in the same order: equal to float32 rounding (the tolerance allows reordered reductions)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert resumed.history[-1]["a"] == pytest.approx(straight.history[-1]["a"], abs=1e-7)
    assert resumed.global_step == straight.global_step == 4
    assert [h["step"] for h in resumed.history] == [3, 4]
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k), "the LoRA did not train"


def test_truncated_checkpoint_is_refused_and_the_previous_one_resumes(tmp_path):
    cfg = config(tmp_path, max_train_steps=4, checkpointing_steps=1, lambda_reg=0.0)
    train(cfg, world=tiny_world())
    newest = list_checkpoints(cfg.output_dir)[-1]
    state = newest / "state.safetensors"
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="checkpoint-00000003: resume from it"):
        train(config(tmp_path, resume=str(newest), max_train_steps=5), world=tiny_world())
    assert latest_checkpoint(cfg.output_dir).name == "checkpoint-00000003"
    result = train(config(tmp_path, resume="latest", max_train_steps=5, lambda_reg=0.0), world=tiny_world())
    assert result.global_step == 5 and [h["step"] for h in result.history] == [4, 5]


def test_nan_loss_stops_with_the_step_and_writes_no_weights(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_module.training_step

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # first micro-batch of optimizer step 2
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train_module, "training_step", poisoned)
    cfg = config(tmp_path, checkpointing_steps=1)
    with pytest.raises(FloatingPointError, match="not finite at step 2"):
        train(cfg, world=tiny_world())
    assert not (Path(cfg.output_dir) / "final").exists()
    ckpt = latest_checkpoint(cfg.output_dir)
    assert ckpt.name == "checkpoint-00000001"
    assert all(torch.isfinite(v).all() for v in load_file(ckpt / "state.safetensors").values())


def test_corrupt_and_grayscale_images_train_and_are_reported(tmp_path, capsys):
    root = make_folder(tmp_path / "data", n=6, extra=[("gray.png", "gray"), ("bad.jpg", "bad")])
    Image.fromarray(np.full((24, 18), 128, dtype=np.uint8), mode="L").save(root / "gray.png")
    (root / "bad.jpg").write_bytes(b"not an image at all")
    result = train(config(tmp_path, data=str(root), max_train_steps=1, gradient_accumulation_steps=1,
                          lambda_reg=0.0), world=tiny_world())
    assert [Path(p).name for p, _ in result.skipped] == ["bad.jpg"]
    assert "1 file(s) skipped as unreadable" in capsys.readouterr().out


def test_gradient_checkpointing_is_refused_with_the_exact_regularizer(tmp_path):
    with pytest.raises(ValueError, match="gradient checkpointing cannot be used with the exact regularizer"):
        train(config(tmp_path, gradient_checkpointing=True), world=tiny_world())
    result = train(config(tmp_path, gradient_checkpointing=True, lambda_reg=0.0, max_train_steps=1,
                          output_dir=str(tmp_path / "plain")), world=tiny_world())
    assert result.global_step == 1


def test_first_order_estimator_trains_with_gradient_checkpointing(tmp_path):
    result = train(config(tmp_path, estimator="finite_difference", gradient_checkpointing=True, max_train_steps=2,
                          checkpointing_steps=2), world=tiny_world())
    assert result.global_step == 2
    assert all(h["r"] is not None and h["r"] > 0 and h["reg"] > 0 for h in result.history)
    assert result.history[-1]["a"] > 0
    assert any(v.abs().max() > 0 for k, v in lora_of(tmp_path / "run").items() if "lora_B" in k)


def test_estimator_flags_on_the_command_line():
    import argparse

    from smoothlib.config import add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--estimator", "finite_difference", "--regularizer-h", "0.01",
                                       "--gradient-checkpointing"]))
    assert (cfg.estimator, cfg.regularizer_h, cfg.gradient_checkpointing) == ("finite_difference", 0.01, True)
    assert from_args(parser.parse_args([])).estimator == "exact"
    with pytest.raises(ValueError, match="estimator must be one of"):
        TrainConfig(estimator="jvp")
    with pytest.raises(ValueError, match="--regularizer-h is the finite-difference step"):
        TrainConfig(regularizer_h=1e-3)
    with pytest.raises(ValueError, match="--regularizer-h must be a finite number > 0"):
        TrainConfig(estimator="finite_difference", regularizer_h=0.0)


def test_bad_config_values():
    with pytest.raises(ValueError, match="--lambda-reg must be a finite number >= 0"):
        TrainConfig(lambda_reg=-1)
    with pytest.raises(ValueError, match="--reg-every must be an integer >= 1"):
        TrainConfig(reg_every=0)
    with pytest.raises(ValueError, match="--mixed-precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="--reg-relative needs --reg-t-buckets > 1"):
        TrainConfig(reg_relative=True)


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tmp_path):
    """Two CPU processes (gloo): one checkpoint, the same running mean on both processes.

    accelerate 1.x runs ``--cpu --num_processes 2`` as ONE process unless MPI is set up; torchrun's
    launcher (``--multi_gpu``) with ACCELERATE_USE_CPU=true starts two CPU processes.
    """
    world_dir = tmp_path / "pipe"
    tiny_pipeline().save_pretrained(world_dir)
    data = make_folder(tmp_path / "data", n=8, size=32)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "smoothlib.train", "--world", str(world_dir), "--data", str(data), "--resolution", "32",
           "--output-dir", str(out), "--max-train-steps", "2", "--checkpointing-steps", "2",
           "--train-batch-size", "2", "--gradient-accumulation-steps", "1", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = list_checkpoints(out)
    assert [c.name for c in ckpts] == ["checkpoint-00000002"]
    state = load_file(ckpts[0] / "state.safetensors")
    a = state["regularizer.running_mean.a"]
    assert a.shape == (2, 1) and a[0] > 0 and a[0] == a[1]  # [processes, running means]
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()
