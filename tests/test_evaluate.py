"""smoothlib-eval (smoothlib/evaluate/): its numbers are the library's numbers, its cache is used, bad flags are named.

Smoke size: the toy world, 2-3 walks or images, 3 DDIM steps.
"""
import json
import random

import pytest
import torch

import smoothlib as sl
from smoothlib.evaluate import cli
from smoothlib.evaluate import distributed
from smoothlib.evaluate.protocols import istd_records
from smoothlib.inversion import reconstruction_protocol
from smoothlib.toy import digit_prompt, load_heldout_digits, load_toy_world
from smoothlib.toy.evaluation import paired_change, smoothness_and_quality, walk_items
from smoothlib.walks import istd_protocol

STEPS = ["--steps", "3", "--no-progress"]


def report(out):
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def istd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("istd")
    assert cli.main(["istd", "--world", "toy", "--control", "control", "--lora", "smooth=smooth",
                     "--pairs", "2", *STEPS, "--out", str(out)]) == 0
    return out, report(out)


def test_istd_per_walk_equals_the_istd_protocol_and_the_toy_table(istd_run):
    out, rep = istd_run
    models = {m["label"]: m for m in rep["models"]}
    assert list(models) == ["base", "control", "smooth"]
    prompts, seeds = walk_items(2)
    for label, lora in (("base", None), ("smooth", "smooth")):
        world = load_toy_world(lora)
        lib = istd_protocol(world, prompts, seeds=seeds, guidance_scale=4.0, num_steps=3, batch_size=110,
                            progress=False)
        assert [w["istd"] for w in models[label]["items"]] == lib.scores.tolist()
        toy = smoothness_and_quality(world, num_pairs=2, num_steps=3, progress=False)
        s = models[label]["summary"]
        assert s["istd"] == pytest.approx(toy.istd, rel=1e-12) and s["istd_stderr"] == pytest.approx(toy.istd_stderr)
        assert s["mean_step"] == pytest.approx(toy.mean_step, rel=1e-6)
        assert s["end_distance"] == pytest.approx(toy.end_distance, rel=1e-6)
        assert s["adherence"] == pytest.approx(toy.adherence) and s["frechet"] == pytest.approx(toy.frechet, rel=1e-6)
        assert s["istd_per_step"] == pytest.approx(s["istd"] / s["mean_step"])
    walks = {k: [w["istd"] for w in m["items"]] for k, m in models.items()}
    assert rep["changes"]["smooth"]["vs_base"] == list(paired_change(walks["smooth"], walks["base"]))
    assert rep["changes"]["smooth"]["vs_control"] == list(paired_change(walks["smooth"], walks["control"]))
    assert rep["changes"]["base"] == {} and "vs_control" not in rep["changes"]["control"]
    md = (out / "report.md").read_text()
    assert all(f"| {k} | {models[k]['summary']['istd']:.4f}" in md for k in models)
    assert (out / "figure.png").stat().st_size > 1000


def test_a_rerun_with_one_more_lora_measures_only_that_one(istd_run, tmp_path, monkeypatch):
    out, first = istd_run
    calls = []

    def counted(world, *args, **kwargs):
        calls.append(sl.lora.ADAPTER in getattr(world.unet, "peft_config", {}))
        return istd_records(world, *args, **kwargs)
    monkeypatch.setattr("smoothlib.evaluate.protocols.istd_records", counted)
    cli.main(["istd", "--world", "toy", "--control", "control", "--lora", "renamed=smooth", "--lora", "s0=smooth-s0",
              "--pairs", "2", *STEPS, "--out", str(out)])
    rep = report(out)
    assert calls == [True] and [m["cached"] for m in rep["models"]] == [True, True, True, False]
    assert rep["models"][2]["summary"] == first["models"][2]["summary"]   # a new label, the same weights
    cli.main(["istd", "--world", "toy", "--pairs", "3", *STEPS, "--out", str(out)])   # other settings: measured
    assert calls == [True, False]


def test_walks_split_across_processes_merge_into_the_single_process_scores():
    world = load_toy_world()
    prompts, seeds = walk_items(3)
    whole = istd_records(world, prompts, seeds, [0, 1, 2], num_steps=3, guidance_scale=4.0, progress=False)
    parts = []
    for rank in range(2):
        state = type("State", (), {"num_processes": 2, "process_index": rank})()
        parts.append(istd_records(world, prompts, seeds, distributed.my_indices(3, state), num_steps=3,
                                  guidance_scale=4.0, progress=False))
    assert [len(p) for p in parts] == [2, 1]
    merged = distributed.merge_records(parts[1] + parts[0], 3)
    assert [r["index"] for r in merged] == [0, 1, 2]
    # each process samples its walks in a batch of another size, and float32 kernels round differently per
    # batch size: ISTD (a spread of distances between nearby frames) carries that to about 1e-5 (measured
    # 5e-6 and 1.1e-5); the walks' own ISTDs differ by far more, so a wrong order still fails
    assert [r["istd"] for r in merged] == pytest.approx([r["istd"] for r in whole], rel=1e-4)
    assert [r["adherence"] for r in merged] == [r["adherence"] for r in whole]


@pytest.mark.parametrize("num_processes", [1, 2, 3, 5])
def test_the_split_covers_every_item_once_in_order(num_processes):
    for items in range(0, 9):
        blocks = [distributed.my_indices(items, type("S", (), {"num_processes": num_processes,
                                                              "process_index": r})())
                  for r in range(num_processes)]
        assert sum(blocks, []) == list(range(items))
        records = [{"index": i} for b in blocks for i in b]
        random.Random(items).shuffle(records)
        assert [r["index"] for r in distributed.merge_records(records, items)] == list(range(items))
    with pytest.raises(RuntimeError, match="two processes"):
        distributed.merge_records([{"index": 0}, {"index": 0}], 1)
    with pytest.raises(RuntimeError, match="no process"):
        distributed.merge_records([{"index": 0}], 2)


def test_reconstruction_equals_the_reconstruction_protocol(tmp_path):
    out = tmp_path / "rec"
    cli.main(["reconstruction", "--world", "toy", "--lora", "smooth=smooth", "--count", "2", *STEPS, "--out", str(out)])
    rep = report(out)
    images, labels = load_heldout_digits()
    idx = torch.tensor([0, 250])   # every (500 // 2)th held-out digit
    prompts = [digit_prompt(int(d)) for d in labels[idx]]
    assert rep["settings"]["captions"] == prompts
    for model in rep["models"]:
        world = load_toy_world("smooth" if model["label"] == "smooth" else None)
        for method in ("ddim", "nti"):
            lib = reconstruction_protocol(world, images[idx], prompts, methods=(method,), guidance_scale=4.0,
                                          num_steps=3, batch_size=25, progress=False).per_image[method]
            for key in ("mse", "psnr", "ssim"):
                assert [r[method][key] for r in model["items"]] == lib[key].tolist(), (model["label"], method, key)
    md = (out / "report.md").read_text()
    assert "| smooth | null-text |" in md and (out / "figure.png").stat().st_size > 1000


def test_reconstruction_of_a_folder_with_one_prompt(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name in ("b.png", "a.png"):
        Image.fromarray((torch.rand(20, 24, 3, generator=gen) * 255).byte().numpy()).save(folder / name)
    out = tmp_path / "rec"
    cli.main(["reconstruction", "--world", "toy", "--images", str(folder), "--prompt", "a handwritten one",
              "--methods", "ddim", *STEPS, "--out", str(out)])
    world = load_toy_world()
    images, _ = sl.images.load_images([str(folder / "a.png"), str(folder / "b.png")], world)
    lib = reconstruction_protocol(world, images, ["a handwritten one"] * 2, methods=("ddim",), guidance_scale=4.0,
                                  num_steps=3, progress=False).per_image["ddim"]
    assert [r["ddim"]["psnr"] for r in report(out)["models"][0]["items"]] == lib["psnr"].tolist()


def test_other_worlds_need_prompts_and_measure_no_quality(tmp_path, monkeypatch):
    from smoothlib.testing import tiny_world

    monkeypatch.setattr("smoothlib.worlds.load_world", lambda name, device=None: tiny_world())
    with pytest.raises(SystemExit):
        cli.main(["istd", "--world", "tiny", *STEPS, "--out", str(tmp_path)])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    cli.main(["istd", "--world", "tiny", "--prompts", str(prompts), *STEPS, "--out", str(tmp_path)])
    rep = report(tmp_path)
    assert rep["settings"]["prompts"] == ["a cat", "a dog"] and "adherence" not in rep["models"][0]["summary"]
    lib = istd_protocol(tiny_world(), ["a cat", "a dog"], num_steps=3, progress=False)
    assert [w["istd"] for w in rep["models"][0]["items"]] == lib.scores.tolist()
    assert "none: ISTD and the walks' scale only" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv, flag", [
    (["istd", "--lora", "smooth=runs/missing/lora.safetensors"], "--lora smooth=runs/missing"),
    (["istd", "--lora", "=x"], "--lora"),
    (["istd", "--control", "no_such_lora"], "--control control=no_such_lora"),
    (["istd", "--prompts", "EMPTY"], "--prompts"),
    (["istd", "--pairs", "2", "--seeds", "1"], "--seeds"),
    (["reconstruction", "--images", "no/such/folder"], "--images no/such/folder"),
])
def test_bad_input_names_the_flag(argv, flag, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    with pytest.raises(SystemExit) as err:
        cli.main([*argv, "--world", "toy", *STEPS, "--out", str(tmp_path / "out")])
    assert err.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out" / "cache").exists()
