"""Trainer inputs that used to lose data, train silently wrong or end in a traceback: each is refused
with a message naming the flag (tiny pixel-space world, 2 to 4 steps of batch 2, rank 2)."""
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoothlib.checkpoint import latest_checkpoint, list_checkpoints
from smoothlib.config import LR_SCHEDULERS, ConfigError, TrainConfig, flag
from smoothlib.train import main, train
from smoothlib import testing


def tiny_world():
    return testing.tiny_world(sample_size=16, in_channels=3)


@pytest.fixture(scope="module")
def data(captioned_rgb_folder):
    return captioned_rgb_folder


SETTINGS = dict(world="tiny", resolution=16, rank=2, train_batch_size=2, gradient_accumulation_steps=1,
                max_train_steps=2, checkpointing_steps=1, learning_rate=1e-3, progress=False)


def config(data, out, **kw):
    return TrainConfig(**{**SETTINGS, "data": data, "output_dir": str(out), **kw})


def argv(cfg: TrainConfig) -> list[str]:
    """The command line that builds ``cfg``."""
    args = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):
            args.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        elif isinstance(value, list):
            args += [flag(f.name), *value]
        elif value is not None:
            args += [flag(f.name), str(value)]
    return args


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_in_history(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run2(data, tmp_path_factory):
    """A finished 2-step run (checkpoints 1 and 2); tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("run2") / "run"
    train(config(data, out), world=tiny_world())
    return out


@pytest.fixture
def run(run2, tmp_path):
    shutil.copytree(run2, tmp_path / "run")
    return tmp_path / "run"


# -- flags, checked when parsed ------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
    (["--learning-rate", "-0.0001"], "--learning-rate must be a finite number > 0, got -0.0001"),
    (["--adam-beta1", "-0.1"], "--adam-beta1 must be a finite number in [0, 1), got -0.1"),
    (["--adam-beta2", "1"], "--adam-beta2 must be a finite number in [0, 1), got 1.0"),
    (["--adam-beta2", "nan"], "--adam-beta2 must be a finite number in [0, 1), got nan"),
    (["--adam-epsilon", "0"], "--adam-epsilon must be a finite number > 0, got 0.0"),
    (["--weight-decay", "-0.01"], "--weight-decay must be a finite number >= 0"),
    (["--max-grad-norm", "inf"], "--max-grad-norm must be a finite number > 0, got inf"),
    (["--lambda-reg", "nan"], "--lambda-reg must be a finite number >= 0, got nan"),
    (["--noise-offset", "nan"], "--noise-offset must be a finite number >= 0"),
    (["--caption-dropout", "1"], "--caption-dropout must be a finite number in [0, 1)"),
    (["--lora-alpha", "0"], "--lora-alpha must be a finite number > 0 (or none), got 0.0"),
    (["--validation-guidance", "nan"], "--validation-guidance must be a finite number >= 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967296), got -1"),
    (["--dataloader-num-workers", "-1"], "--dataloader-num-workers must be an integer >= 0, got -1"),
    (["--lr-warmup-steps", "-5"], "--lr-warmup-steps must be an integer >= 0, got -5"),
    (["--checkpoints-total-limit", "-1"], "--checkpoints-total-limit must be an integer >= 1 (or none), got -1"),
    (["--checkpoints-total-limit", "0"], "--checkpoints-total-limit must be an integer >= 1 (or none), got 0"),
    (["--reg-sub-batch", "0"], "--reg-sub-batch must be an integer >= 1 (or none), got 0"),
    (["--resolution", "0"], "--resolution must be an integer >= 1, got 0"),
    (["--lr-scheduler", "cosine_annealing"], "--lr-scheduler must be one of constant, constant_with_warmup, linear"),
    (["--resume-override", "rank"], "--resume-override: rank can never change on resume"),
    (["--resume-override", "learning_rat"], "--resume-override: unknown setting 'learning_rat'"),
    (["--vae-latents", "mode"], "--vae-latents must be one of sample, mean; got 'mode'"),
    (["--vae-latents", "Sample"], "--vae-latents must be one of sample, mean; got 'Sample'"),
    (["--lora-formats", "diffusers", "webui"], "--lora-formats must be one of diffusers, kohya, release; got 'webui'"),
    (["--lora-formats"], "--lora-formats needs a list of one or more of diffusers, kohya, release, got []"),
])
def test_bad_flags_stop_at_parsing_with_a_message_naming_the_flag(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"smoothlib-train: error: {message}" in err and "Traceback" not in err


def test_the_same_checks_apply_to_a_config_built_in_python():
    with pytest.raises(ConfigError, match="--learning-rate must be a finite number > 0, got nan"):
        TrainConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="--max-train-steps must be an integer >= 1, got 10.5"):
        TrainConfig(max_train_steps=10.5)
    assert TrainConfig(checkpoints_total_limit=None).checkpoints_total_limit is None
    assert TrainConfig(resume_override=["learning-rate"]).resume_override == ["learning_rate"]


def test_lora_formats_and_vae_latents_flags_parse():
    import argparse

    from smoothlib.config import RESUME_FREE, add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--lora-formats", "kohya", "release", "kohya", "--vae-latents", "mean"]))
    assert (cfg.lora_formats, cfg.vae_latents) == (["kohya", "release"], "mean")
    default = from_args(parser.parse_args([]))
    assert (default.lora_formats, default.vae_latents) == (["diffusers"], "sample")
    assert "lora_formats" in RESUME_FREE and "vae_latents" not in RESUME_FREE
    saved = dataclasses.asdict(TrainConfig())
    assert TrainConfig(lora_formats=["release"]).resume_changes(saved, "ckpt") == []
    with pytest.raises(ConfigError, match="vae_latents: 'sample' -> 'mean'"):
        TrainConfig(vae_latents="mean").resume_changes(saved, "ckpt")


@pytest.mark.parametrize("env, warned", [
    ({}, False),                                                       # a plain run
    ({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"}, False),      # accelerate launch, 1 process
    ({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True",               # --cpu --num_processes 2
      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, True),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "29500"}, True),  # torchrun's two, seen as one
])
def test_a_multi_process_launch_that_came_up_as_one_process_is_warned(env, warned):
    """The environments are those accelerate 1.x's launchers set (measured with accelerate launch on a script
    that prints os.environ)."""
    from smoothlib.train import _launch_warning

    message = _launch_warning(1, env)
    assert (message is not None) == warned
    if warned:
        assert "1 process" in message and "--multi_gpu" in message
    assert _launch_warning(2, {**env, "WORLD_SIZE": "2"}) is None


def test_the_trainer_says_how_many_processes_it_runs_on(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.warns(RuntimeWarning, match="but this run has 1 process"):
        train(config(data, tmp_path / "run", max_train_steps=1), world=tiny_world())
    assert "smoothlib-train: 1 process(es) on cpu" in capsys.readouterr().out


def test_resume_changes_lists_allowed_changes_and_refuses_the_rest():
    saved = dataclasses.asdict(TrainConfig(seed=1, rank=4))
    assert TrainConfig(resume_override=["all"], rank=4).resume_changes(saved, "ckpt") == ["seed: 1 -> 42"]
    assert TrainConfig(resume_override=["seed"], rank=4, max_train_steps=5).resume_changes(saved, "ckpt") == [
        "seed: 1 -> 42"]  # max_train_steps is free
    with pytest.raises(ConfigError, match="rank: 4 -> 8\nrank can never change on resume"):
        TrainConfig(resume_override=["all"]).resume_changes(saved, "ckpt")


def test_none_is_accepted_for_optional_numbers_and_every_schedule_exists_in_diffusers():
    import argparse

    from diffusers.optimization import SchedulerType

    from smoothlib.config import add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--checkpoints-total-limit", "none", "--lora-alpha", "None"]))
    assert cfg.checkpoints_total_limit is None and cfg.lora_alpha is None
    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


def test_resolution_must_match_a_pixel_space_world(data, tmp_path):
    with pytest.raises(ConfigError, match=r"--resolution 32 does not match the image size of the world 'tiny', "
                                          r"16x16.*use --resolution 16"):
        train(config(data, tmp_path / "run", resolution=32), world=tiny_world())
    assert list_checkpoints(tmp_path / "run") == []


# -- the output folder -----------------------------------------------------------------------------

def test_output_dir_that_is_a_file_is_refused_without_a_traceback(data, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        assert main(argv(config(data, out))) == 1
        err = capsys.readouterr().err
        assert f"smoothlib-train: error: --output-dir {out}: {tmp_path / 'file'} is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_fresh_run_into_a_folder_with_another_run_is_refused_and_changes_nothing(data, run):
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"holds another run \(checkpoint-00000001, checkpoint-00000002, final, "
                                          r"history.jsonl\): resume it with --resume latest, .*--overwrite-output-dir"):
        train(config(data, run, seed=7), world=tiny_world())
    assert snapshot(run) == before


def test_overwrite_output_dir_moves_the_old_run_aside_and_deletes_nothing(data, run, capsys):
    before = snapshot(run)
    train(config(data, run, seed=7, overwrite_output_dir=True), world=tiny_world())
    assert "nothing was deleted" in capsys.readouterr().out
    (aside,) = run.glob("replaced-*")
    assert snapshot(aside) == before  # the old run, byte for byte
    assert steps_in_history(run) == [1, 2]
    latest = latest_checkpoint(run)
    assert latest.parent == run and json.loads((latest / "meta.json").read_text())["config"]["seed"] == 7
    result = train(config(data, run, seed=7, max_train_steps=3, resume="latest"), world=tiny_world())
    assert result.global_step == 3 and steps_in_history(run) == [1, 2, 3]  # continues the new run


def test_a_resume_from_an_older_checkpoint_is_refused_while_newer_ones_exist(data, run):
    with pytest.raises(ConfigError, match="intact checkpoints newer than checkpoint-00000001.*"
                                          r"\(checkpoint-00000002\)"):
        train(config(data, run, resume=str(run / "checkpoint-00000001"), max_train_steps=3), world=tiny_world())
    train(config(data, run, resume=str(run / "checkpoint-00000001"), max_train_steps=3, overwrite_output_dir=True),
          world=tiny_world())
    (aside,) = run.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-00000002", "final", "history.jsonl"]
    assert steps_in_history(aside) == [1, 2] and steps_in_history(run) == [1, 2, 3]


# -- resuming --------------------------------------------------------------------------------------

def test_a_resume_with_other_settings_is_refused_listing_each_change(data, run):
    before = snapshot(run)
    with pytest.raises(ConfigError) as refused:
        train(config(data, run, resume="latest", max_train_steps=3, learning_rate=2e-3, seed=1), world=tiny_world())
    message = str(refused.value)
    assert "differ from the checkpoint's:\n  learning_rate: 0.001 -> 0.002\n  seed: 42 -> 1\n" in message
    assert message.endswith("--resume-override learning_rate seed")
    assert snapshot(run) == before


def test_a_rank_change_on_resume_is_refused_without_a_traceback(data, run, capsys):
    assert main(argv(config(data, run, resume="latest", max_train_steps=3, rank=4))) == 1
    err = capsys.readouterr().err
    assert "rank: 2 -> 4" in err and "rank can never change on resume" in err and "Traceback" not in err


def test_an_overridden_learning_rate_takes_effect(data, run, tmp_path):
    same = tmp_path / "same"
    shutil.copytree(run, same)
    train(config(data, same, resume="latest", max_train_steps=3), world=tiny_world())
    train(config(data, run, resume="latest", max_train_steps=3, learning_rate=2e-3,
                 resume_override=["learning_rate"]), world=tiny_world())
    assert [json.loads(line)["lr"] for line in (run / "history.jsonl").read_text().splitlines()] == [1e-3, 1e-3, 2e-3]
    meta = json.loads((run / "checkpoint-00000003" / "meta.json").read_text())
    assert meta["optimizer"]["param_groups"][0]["lr"] == meta["optimizer"]["param_groups"][0]["initial_lr"] == 2e-3
    assert meta["lr_scheduler"]["base_lrs"] == [2e-3] and meta["config"]["learning_rate"] == 2e-3
    # AdamW's step (and its weight decay) is proportional to the learning rate: twice the step from checkpoint 2
    w2, w1x, w2x = (load_file(r / f"checkpoint-0000000{s}" / "state.safetensors")
                    for r, s in ((run, 2), (same, 3), (run, 3)))
    for key in (k for k in w2 if k.startswith("lora.")):
        torch.testing.assert_close(w2x[key] - w2[key], 2 * (w1x[key] - w2[key]), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2])
def test_max_train_steps_at_or_below_the_checkpoint_is_an_error(data, run, steps):
    with pytest.raises(ConfigError, match=rf"--max-train-steps {steps} is at or below the step of "
                                          r".*checkpoint-00000002 \(2\): there is nothing to train"):
        train(config(data, run, resume="latest", max_train_steps=steps), world=tiny_world())


def test_history_is_cut_back_to_the_checkpoint_so_no_step_appears_twice(data, run, capsys):
    (run / "checkpoint-00000002").rename(run / "checkpoint-00000002.tmp")  # as if a crash hit its write
    with open(run / "history.jsonl", "a") as f:
        f.write('{"step": 3, "mse": 0.5')  # and a record cut short
    result = train(config(data, run, resume="latest", max_train_steps=3), world=tiny_world())
    assert "dropped 2 record(s) after step 1" in capsys.readouterr().out
    assert result.global_step == 3 and steps_in_history(run) == [1, 2, 3]
