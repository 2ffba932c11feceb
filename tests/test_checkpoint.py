import json

import pytest
import torch

from smoothlib.checkpoint import (CheckpointError, flatten_optimizer, latest_checkpoint, list_checkpoints,
                                  load_checkpoint, save_checkpoint, unflatten_optimizer)


def test_round_trip_and_keep(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"w": torch.full((3,), float(step))}, {"note": "x"}, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["checkpoint-00000020", "checkpoint-00000030"]
    tensors, meta = load_checkpoint(tmp_path / "checkpoint-00000030")
    assert torch.equal(tensors["w"], torch.full((3,), 30.0)) and meta["step"] == 30 and meta["note"] == "x"


def test_truncated_checkpoint_is_detected_and_the_previous_one_survives(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.randn(1000)}, {})
    last = save_checkpoint(tmp_path, 2, {"w": torch.randn(1000)}, {})
    state = last / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-100])  # cut short, as by a full disk
    with pytest.raises(CheckpointError, match="cut short.*checkpoint-00000001: resume from it"):
        load_checkpoint(last)
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000001"
    load_checkpoint(latest_checkpoint(tmp_path))


def test_interrupted_write_leaves_no_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {})
    (tmp_path / "checkpoint-00000002.tmp").mkdir()  # what a kill during step 1 of the recipe leaves
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000001"]
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "checkpoint-00000002.tmp")


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    tensors, rest = flatten_optimizer(opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if read back from disk
    rest = json.loads(json.dumps(rest))  # must survive JSON
    clone = torch.nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1.0)
    unflatten_optimizer(opt2, tensors, rest)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (clone, opt2)):
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, clone.weight) and opt2.param_groups[0]["lr"] == 1e-2
