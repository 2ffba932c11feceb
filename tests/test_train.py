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
from smoothlib.config import ConfigError, TrainConfig
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


@pytest.mark.parametrize("buckets, relative, warmup", [(1, False, 0), (4, False, 0), (4, True, 0), (4, True, 4)])
def test_resume_equals_an_uninterrupted_run(tmp_path, buckets, relative, warmup):
    reg = {"reg_t_buckets": buckets, "reg_relative": relative, "lambda_warmup_steps": warmup}
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


def test_lambda_warmup_ramps_the_penalty_linearly(tmp_path):
    """Step s of a warm-up over N steps trains at lambda s / N: its first step equals a run at lambda / N."""
    ramped = train(config(tmp_path, output_dir=str(tmp_path / "ramp"), lambda_warmup_steps=4), world=tiny_world())
    assert [h["lambda"] for h in ramped.history] == [0.25, 0.5, 0.75, 1.0]
    first = {}
    for name, kw in (("ramp1", dict(lambda_warmup_steps=4)), ("quarter", dict(lambda_reg=0.25)), ("full", {})):
        train(config(tmp_path, output_dir=str(tmp_path / name), max_train_steps=1, **kw), world=tiny_world())
        first[name] = lora_of(tmp_path / name)
    diff = {other: max((first["ramp1"][k] - first[other][k]).abs().max().item() for k in first["ramp1"])
            for other in ("quarter", "full")}
    assert diff["quarter"] < 1e-7
    assert diff["full"] > 1e-6, "lambda / 4 and lambda gave the same first step: the test cannot tell them apart"
    with pytest.raises(ValueError, match="--lambda-warmup-steps must be an integer >= 0"):
        TrainConfig(lambda_warmup_steps=-1)


def test_ema_of_the_lora_weights_matches_a_hand_average_and_leaves_training_unchanged(tmp_path):
    """final/ holds diffusers' EMA (decay min(cap, (1 + n) / (10 + n)) after n updates), computed here by hand
    from a plain run's per-step checkpoints; final-raw/ and the history equal that plain run's."""
    plain = train(config(tmp_path, output_dir=str(tmp_path / "plain"), checkpointing_steps=1,
                         checkpoints_total_limit=None), world=tiny_world())
    world = tiny_world()
    averaged = train(config(tmp_path, output_dir=str(tmp_path / "ema"), ema_decay=0.2), world=world)
    assert [h["mse"] for h in averaged.history] == [h["mse"] for h in plain.history]
    raw, ema_file = lora_of(tmp_path / "plain"), lora_of(tmp_path / "ema")
    ema_raw = load_file(tmp_path / "ema" / "final-raw" / "pytorch_lora_weights.safetensors")
    assert max((raw[k] - ema_raw[k]).abs().max().item() for k in raw) < 1e-6
    assert max((raw[k] - ema_file[k]).abs().max().item() for k in raw) > 1e-5, "final/ is not the average"
    steps = [load_file(c / "state.safetensors") for c in list_checkpoints(tmp_path / "plain")]
    names = [k[len("lora."):] for k in steps[0] if k.startswith("lora.")]
    by_hand = {n: steps[0][f"lora.{n}"].clone() for n in names}  # update 1: decay 0, a copy
    for n_update, state in enumerate(steps[1:], start=2):
        decay = min(0.2, n_update / (9 + n_update))
        for n in names:
            by_hand[n] = decay * by_hand[n] + (1 - decay) * state[f"lora.{n}"]
    held = dict(world.unet.named_parameters())
    assert max((held[n].detach() - by_hand[n]).abs().max().item() for n in names) < 1e-6


def test_resume_with_an_ema_equals_an_uninterrupted_run(tmp_path):
    straight = train(config(tmp_path, output_dir=str(tmp_path / "a"), ema_decay=0.5), world=tiny_world())
    train(config(tmp_path, output_dir=str(tmp_path / "b"), max_train_steps=2, ema_decay=0.5), world=tiny_world())
    train(config(tmp_path, output_dir=str(tmp_path / "b"), resume="latest", ema_decay=0.5), world=tiny_world())
    for folder in ("final", "final-raw"):
        a = load_file(tmp_path / "a" / folder / "pytorch_lora_weights.safetensors")
        b = load_file(tmp_path / "b" / folder / "pytorch_lora_weights.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, folder
    assert straight.global_step == 4
    with pytest.raises(ConfigError, match="ema_decay"):
        train(config(tmp_path, output_dir=str(tmp_path / "b"), resume="latest", max_train_steps=6), world=tiny_world())


def vae_world():
    """Latent space: 4x8x8 latents of 16x16 images through the tiny VAE."""
    return testing.tiny_world(vae=True)


def test_world_encode_samples_the_vae_posterior_with_the_generator():
    world = vae_world()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mean = world.encode(images)
    draw = world.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(world.encode(images, sample=True, generator=torch.Generator().manual_seed(1)), draw)
    assert not torch.allclose(world.encode(images, sample=True, generator=torch.Generator().manual_seed(2)), draw)
    with torch.no_grad():  # by hand: (mean + std * noise) * scaling_factor, the noise drawn from the same seed
        posterior = world.vae.encode(images * 2 - 1).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(1))
        scale = world.vae.config.scaling_factor
        torch.testing.assert_close(mean, posterior.mean * scale, rtol=0, atol=1e-6)
        torch.testing.assert_close(draw, (posterior.mean + posterior.std * noise) * scale, rtol=0, atol=1e-6)
    assert (draw - mean).abs().max() > 1e-3
    pixels = tiny_world()
    flat = torch.rand(2, 3, 16, 16)
    assert torch.equal(pixels.encode(flat, sample=True, generator=torch.Generator().manual_seed(1)), pixels.encode(flat))


def test_resume_equals_an_uninterrupted_run_with_sampled_vae_latents(tmp_path):
    kw = dict(lambda_reg=0.5, vae_latents="sample")
    straight = train(config(tmp_path, output_dir=str(tmp_path / "a"), **kw), world=vae_world())
    train(config(tmp_path, output_dir=str(tmp_path / "b"), max_train_steps=2, **kw), world=vae_world())
    resumed = train(config(tmp_path, output_dir=str(tmp_path / "b"), resume="latest", **kw), world=vae_world())
    a, b = lora_of(tmp_path / "a"), lora_of(tmp_path / "b")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert [h["mse"] for h in resumed.history] == pytest.approx([h["mse"] for h in straight.history[2:]], abs=1e-6)
    mean = train(config(tmp_path, output_dir=str(tmp_path / "m"), lambda_reg=0.5, vae_latents="mean"),
                 world=vae_world())
    assert mean.history[0]["mse"] != straight.history[0]["mse"]  # the draw is used


def merged_delta(unet, name, adapter="smooth"):
    """(alpha / r) B A of one layer, from the adapter's own tensors."""
    layer = unet.get_submodule(name)
    return layer.lora_alpha[adapter] / layer.r[adapter] * layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight


def unet_out(unet):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), c).sample


def test_each_requested_lora_format_round_trips_and_loads_in_diffusers(tmp_path):
    from smoothlib.lora import attention_projections, load_smooth_lora

    world = vae_world()
    result = train(config(tmp_path, max_train_steps=2, rank=4, lora_alpha=2.0, lambda_reg=0.0,
                          lora_formats=["diffusers", "kohya", "release"]), world=world)
    files = result.lora_files
    assert {f: p.name for f, p in files.items()} == {"diffusers": "pytorch_lora_weights.safetensors",
                                                     "kohya": "smooth_lora_kohya.safetensors",
                                                     "release": "smooth_lora.safetensors"}
    assert all(p.parent == tmp_path / "run" / "final" for p in files.values()) and result.lora_path == files["diffusers"]
    names = attention_projections(world.unet)
    trained = {n: merged_delta(world.unet, n) for n in names}
    assert max(d.abs().max().item() for d in trained.values()) > 0, "the LoRA did not train"
    outputs = {}
    for fmt, path in files.items():  # smoothlib reads each back to the trained weights
        fresh = testing.tiny_unet(sample_size=8)
        load_smooth_lora(fresh, path)
        for n in names:
            torch.testing.assert_close(merged_delta(fresh, n), trained[n], rtol=0, atol=1e-7)
        outputs[fmt] = unet_out(fresh)
    for fmt in ("diffusers", "kohya"):  # diffusers' pipeline loader
        pipe = tiny_pipeline()
        pipe.load_lora_weights(str(files[fmt].parent), weight_name=files[fmt].name)
        torch.testing.assert_close(unet_out(pipe.unet), outputs[fmt], rtol=0, atol=1e-6)
    unet = testing.tiny_unet()  # the release's keys: diffusers' model loader, without the "unet." prefix
    unet.load_lora_adapter(load_file(files["release"]), prefix=None)
    torch.testing.assert_close(unet_out(unet), outputs["release"], rtol=0, atol=1e-6)


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


def test_lora_on_the_resnet_convolutions_loads_as_a_hand_merged_unet(tmp_path):
    """--lora-resnets adds conv1/conv2 of every ResNet block; each file equals the base with W + (alpha / r) B A merged by hand."""
    from smoothlib.lora import load_smooth_lora

    world = vae_world()
    result = train(config(tmp_path, max_train_steps=2, rank=4, lora_alpha=2.0, lora_resnets=True,
                          lora_formats=["diffusers", "kohya"]), world=world)
    adapted = {n: m for n, m in world.unet.named_modules() if "smooth" in getattr(m, "lora_A", {})}
    convs = [n for n in adapted if n.endswith((".conv1", ".conv2"))]
    assert convs and all(".resnets." in n for n in convs) and len(adapted) > len(convs)
    assert all(adapted[n].lora_B["smooth"].weight.abs().max() > 0 for n in convs), "the convolutions' LoRA did not train"
    merged = testing.tiny_unet(sample_size=8)
    with torch.no_grad():
        for name, layer in adapted.items():
            A, B = layer.lora_A["smooth"].weight, layer.lora_B["smooth"].weight
            weight = merged.get_submodule(name).weight
            weight += 2.0 / 4 * (B.flatten(1) @ A.flatten(1)).reshape(weight.shape)
    expected = unet_out(merged)
    for fmt, path in result.lora_files.items():
        fresh = testing.tiny_unet(sample_size=8)
        load_smooth_lora(fresh, path)
        torch.testing.assert_close(unet_out(fresh), expected, rtol=0, atol=1e-5)
        pipe = tiny_pipeline()
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        torch.testing.assert_close(unet_out(pipe.unet), expected, rtol=0, atol=1e-5)
    assert unet_out(testing.tiny_unet(sample_size=8)).sub(expected).abs().max() > 1e-4, "the merge changed nothing"
    with pytest.raises(ConfigError, match="release holds attention projections only"):
        TrainConfig(lora_resnets=True, lora_formats=["diffusers", "release"])

