"""The run's state in a checkpoint (smoothlib.train_state) and the config's single set of rules (smoothlib.config)."""
import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from smoothlib.checkpoint import META, STATE, _sha256
from smoothlib.config import ConfigError, TrainConfig, add_arguments, from_args
from smoothlib.regularizer import StepVariationRegularizer
from smoothlib.testing import tiny_world
from smoothlib.train import train

from test_train import config, lora_of


def _world():
    return tiny_world(sample_size=16, in_channels=3)


def _to_old_layout(checkpoint: Path) -> None:
    """Rewrite a checkpoint as the trainer wrote it before the regularizer's state went through state_dict()."""
    state = load_file(checkpoint / STATE)
    a = state.pop("regularizer.running_mean.a").float()
    state["regularizer.a_per_process"] = a
    state["regularizer.step"] = state.pop("regularizer.step")[0, 0].long()
    if "regularizer.running_mean.seen" in state:
        state["regularizer.seen"] = state.pop("regularizer.running_mean.seen")[0].bool()
    save_file(state, checkpoint / STATE)
    meta = json.loads((checkpoint / META).read_text())
    meta["sha256"] = _sha256(checkpoint / STATE)
    (checkpoint / META).write_text(json.dumps(meta))


@pytest.mark.parametrize("buckets, relative", [(1, False), (4, True)])
def test_a_checkpoint_in_the_old_layout_resumes_like_a_new_one(tmp_path, buckets, relative):
    reg = {"reg_t_buckets": buckets, "reg_relative": relative}
    data = config(tmp_path).data
    train(config(tmp_path, data=data, output_dir=str(tmp_path / "new"), max_train_steps=2, **reg), world=_world())
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    (ckpt,) = (tmp_path / "old").glob("checkpoint-*")
    _to_old_layout(ckpt)
    assert "regularizer.a_per_process" in load_file(ckpt / STATE)
    runs = {}
    for name in ("new", "old"):
        runs[name] = train(config(tmp_path, data=data, output_dir=str(tmp_path / name), resume="latest", **reg),
                           world=_world())
    new, old = lora_of(tmp_path / "new"), lora_of(tmp_path / "old")
    assert all(torch.equal(new[k], old[k]) for k in new)
    assert runs["new"].history[-1]["a"] == runs["old"].history[-1]["a"]
    assert "regularizer.running_mean.a" in load_file(next((tmp_path / "old").glob("checkpoint-*4")) / STATE)


def test_the_regularizer_state_is_saved_through_its_state_dict(tmp_path):
    train(config(tmp_path, max_train_steps=2, reg_t_buckets=2), world=_world())
    state = load_file(next((tmp_path / "run").glob("checkpoint-*")) / STATE)
    keys = {k.removeprefix("regularizer.") for k in state if k.startswith("regularizer.")}
    assert keys == set(StepVariationRegularizer(t_buckets=2).state_dict())
    assert state["regularizer.step"].tolist() == [[4.0]]  # one row per process; 2 steps of 2 micro-batches


def test_the_config_and_the_regularizer_check_one_rule_in_their_own_words():
    with pytest.raises(ConfigError, match=r"^--reg-t-buckets must be an integer >= 1, got 0$"):
        TrainConfig(reg_t_buckets=0)
    with pytest.raises(ValueError, match=r"^t_buckets must be an integer in \[1, 1000\], got 0$"):
        StepVariationRegularizer(t_buckets=0)
    with pytest.raises(ConfigError, match="--reg-relative needs --reg-t-buckets > 1"):
        TrainConfig(reg_relative=True)
    with pytest.raises(ValueError, match="^relative needs t_buckets > 1"):
        StepVariationRegularizer(relative=True)
    assert StepVariationRegularizer(**TrainConfig(reg_every=3, reg_t_buckets=4).regularizer_settings()).every == 3


def test_two_parsers_over_one_config_and_real_type_annotations():
    first, second = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_arguments(first)
    add_arguments(second)
    args = ["--rank", "4", "--lora-alpha", "none", "--validation-prompts", "a", "b", "--no-progress"]
    a, b = from_args(first.parse_args(args)), from_args(second.parse_args(args))
    assert a == b and (a.rank, a.lora_alpha, a.validation_prompts, a.progress) == (4, None, ["a", "b"], False)
    # a dataclass whose annotations are type objects, not strings
    Real = dataclasses.make_dataclass("Real", [("steps", int, 3), ("scale", float | None, None),
                                               ("name", str, "x"), ("tags", list[str], dataclasses.field(default_factory=list)),
                                               ("fast", bool, False)])
    parser = argparse.ArgumentParser()
    add_arguments(parser, Real)
    got = from_args(parser.parse_args(["--steps", "5", "--scale", "0.5", "--tags", "p", "q", "--fast"]), Real)
    assert got == Real(steps=5, scale=0.5, name="x", tags=["p", "q"], fast=True)
    with pytest.raises(TypeError, match="no command-line form"):
        add_arguments(argparse.ArgumentParser(), dataclasses.make_dataclass("Odd", [("where", Path, Path("."))]))
