"""``smoothlib-eval``: the paper's Table 1 (ISTD beside quality) and Table 2 (reconstruction) for any world and LoRAs.

    smoothlib-eval istd --world toy --control control --lora smooth=smooth --pairs 100 --steps 25 --out runs/eval
    smoothlib-eval istd --world sd15 --lora smooth=shi-labs/smooth-diffusion-lora --prompts prompts.txt --out runs/sd
    smoothlib-eval reconstruction --world toy --lora smooth=smooth --count 8 --steps 20 --out runs/eval_rec
    accelerate launch -m smoothlib.evaluate istd --world sd15 ...   # items split across the processes

Models: the base, ``--control SOURCE`` (a lambda = 0 LoRA) and every ``--lora NAME=SOURCE`` (a file, a
folder, a Hub repo id, or on the toy world a shipped name), all on the same prompts, seeds and images.
Scores are cached in ``<out>/cache/`` per protocol, world, model content and settings, so a rerun with
one more LoRA measures only that one. The report: ``<out>/report.json``, ``report.md``, ``figure.png``.
The recipes: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .models import EvalInputError, model_specs

TOY_HELDOUT_DEFAULT = 8
"""Held-out digits the toy world's reconstruction uses unless ``--count`` says otherwise."""


def read_prompts(path: str) -> list[str]:
    """One prompt per non-blank line of a UTF-8 text file."""
    file = Path(path)
    if not file.is_file():
        raise EvalInputError(f"--prompts {path}: no such file; write one prompt per line")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise EvalInputError(f"--prompts {path}: the file holds no prompts (it is empty or blank)")
    return prompts


def istd_items(args, world) -> tuple[list[str], list[int]]:
    """The walks' prompts and seeds: the prompts file cycled to ``--pairs`` walks, or the toy's digit prompts."""
    if args.prompts is not None:
        prompts = read_prompts(args.prompts)
        pairs = args.pairs or len(prompts)
        prompts = [prompts[p % len(prompts)] for p in range(pairs)]
    elif world.name == "toy":
        from ..toy.evaluation import walk_items

        prompts = walk_items(args.pairs or 100)[0]
    else:
        raise EvalInputError(f"--prompts is needed on the world {args.world!r}: a text file, one prompt per line "
                             "(only the toy world has built-in prompts)")
    if len(prompts) < 2:
        raise EvalInputError(f"--pairs {len(prompts)}: need at least 2 walks for a mean with an error bar")
    seeds = list(range(len(prompts))) if args.seeds is None else args.seeds
    if len(seeds) != len(prompts):
        raise EvalInputError(f"--seeds: {len(seeds)} seeds for {len(prompts)} walks; give one seed per walk")
    return prompts, seeds


def reconstruction_items(args, world) -> tuple[torch.Tensor, list[str], str]:
    """Images [N, C, H, W] in [0, 1], one caption each, and where they came from."""
    if args.images is None:
        if world.name != "toy":
            raise EvalInputError(f"--images is needed on the world {args.world!r}: a folder of images with "
                                 "--captions FILE (JSONL) or one --prompt")
        from ..toy.data import digit_prompt, load_heldout_digits

        images, labels = load_heldout_digits()
        count = args.count or TOY_HELDOUT_DEFAULT
        if not 1 <= count <= len(labels):
            raise EvalInputError(f"--count {count}: the toy world holds {len(labels)} held-out digits")
        idx = torch.arange(0, len(labels), len(labels) // count)[:count]
        return images[idx], [digit_prompt(int(d)) for d in labels[idx]], f"{count} held-out digits (every " \
            f"{len(labels) // count}th of {len(labels)})"
    from ..data import IMAGE_SUFFIXES, read_captions
    from ..images import load_images

    folder = Path(args.images)
    if not folder.is_dir():
        raise EvalInputError(f"--images {args.images}: no such folder")
    if args.prompt is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        pairs = [(p, args.prompt) for p in files]
    elif args.captions is not None or (folder / "metadata.jsonl").is_file():
        try:
            pairs = read_captions(folder, args.captions)
        except (OSError, ValueError) as err:
            raise EvalInputError(f"--captions: {err}") from err
    else:
        raise EvalInputError(f"--images {args.images}: give --captions FILE (JSONL of file_name and caption), "
                             "put metadata.jsonl in the folder, or give one --prompt for every image")
    pairs = pairs[:args.count] if args.count else pairs
    if not pairs:
        raise EvalInputError(f"--images {args.images}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images, _ = load_images([str(p) for p, _ in pairs], world)
    return images, [c for _, c in pairs], f"{len(pairs)} images from {folder}"


def lpips_or_none(args, device):
    """LPIPS when the ``lpips`` package and its backbone weights are at hand, else None (and why)."""
    if not args.lpips:
        return None, "not asked for"
    from ..metrics import lpips_distance

    try:
        return lpips_distance(device=device), "measured"
    except Exception as err:  # not installed, or its backbone weights are not in the local cache
        return None, f"not measured ({str(err).splitlines()[0]})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smoothlib-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="protocol", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--world", default="toy", help="toy, sd15, a repo id or a local folder (default toy)")
    common.add_argument("--lora", action="append", default=[], metavar="NAME=SOURCE",
                        help="a LoRA to compare (repeat the flag): a file, folder, repo id or shipped toy name")
    common.add_argument("--control", metavar="SOURCE", help="the lambda = 0 control LoRA")
    common.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    common.add_argument("--guidance", type=float, help="guidance scale (default 4 on the toy world, else 7.5)")
    common.add_argument("--batch-size", type=int, help="frames or images per batch (default: 110 / 25 toy, 8 / 4)")
    common.add_argument("--out", required=True, help="output folder: the report and cache/")
    common.add_argument("--remeasure", action="store_true", help="ignore cached scores")
    common.add_argument("--threads", type=int, help="CPU threads for torch")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    i = sub.add_parser("istd", parents=[common], help="Table 1: ISTD beside quality on the same walks")
    i.add_argument("--prompts", help="a text file, one prompt per line (the toy world has its digit prompts)")
    i.add_argument("--pairs", type=int, help="walks (default: one per prompt; 100 on the toy world)")
    i.add_argument("--seeds", type=int, nargs="+", help="one seed per walk (default 0, 1, ...)")
    i.add_argument("--frames", type=int, default=11, help="slerp frames per walk (default 11)")
    r = sub.add_parser("reconstruction", parents=[common], help="Table 2: DDIM and null-text inversion, reconstructed")
    r.add_argument("--images", help="a folder of images (the toy world has its held-out digits)")
    r.add_argument("--captions", help="JSONL of {file_name, caption} (default: <images>/metadata.jsonl)")
    r.add_argument("--prompt", help="one caption for every image of --images")
    r.add_argument("--count", type=int, help=f"use the first N images (toy default {TOY_HELDOUT_DEFAULT})")
    r.add_argument("--methods", nargs="+", default=["ddim", "nti"], choices=["ddim", "nti"])
    r.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True,
                   help="LPIPS where the lpips package and its weights are installed")
    return p


def run(args) -> dict:
    """Load the world, score every model (cached ones read), write the report on the main process."""
    from ..worlds import load_world
    from . import protocols
    from .distributed import process_state
    from .quality import quality_note
    from .report import write_report
    from .runner import evaluate_models

    specs = model_specs(args.lora, args.control)
    state = process_state()
    world = load_world(args.world, device=state.device)
    toy = world.name == "toy"
    guidance = args.guidance if args.guidance is not None else (4.0 if toy else 7.5)
    world_id = str(Path(args.world).resolve()) if os.path.isdir(args.world) else args.world
    settings = {"steps": args.steps, "guidance": guidance}
    if args.protocol == "istd":
        prompts, seeds = istd_items(args, world)
        batch = args.batch_size or (110 if toy else 8)
        settings |= {"frames": args.frames, "prompts": prompts, "seeds": seeds}

        def measure(w, indices):
            return protocols.istd_records(w, prompts, seeds, indices, args.frames, guidance, args.steps, batch,
                                          args.progress and state.is_main_process)
        summarize, n = protocols.summarize_istd, len(prompts)
        title = f"ISTD on {args.world}: {n} walks x {args.frames} frames"
        what = f"quality: {quality_note(world)}"
    else:
        images, captions, where = reconstruction_items(args, world)
        batch = args.batch_size or (25 if toy else 4)
        lpips, lpips_state = lpips_or_none(args, state.device)
        settings |= {"methods": args.methods, "captions": captions, "images": where, "lpips": lpips is not None,
                     "images_sha256": _digest(images)}

        def measure(w, indices):
            return protocols.reconstruction_records(w, images, captions, indices, tuple(args.methods), guidance,
                                                    args.steps, batch, lpips, args.progress and state.is_main_process)
        summarize, n = protocols.summarize_reconstruction, len(captions)
        title = f"Reconstruction on {args.world}: {where}"
        what = f"MSE on [-1, 1], PSNR, SSIM against the input; LPIPS {lpips_state}"
    entries = evaluate_models(world, specs, args.protocol, world_id, settings, n, measure, summarize, args.out,
                              state, args.remeasure, args.progress)
    header = {"title": title, "world": world_id, "settings": settings, "num_processes": state.num_processes,
              "description": f"{args.steps} DDIM steps, guidance {guidance:g}; {what}; models measured now: "
                             f"{[e['label'] for e in entries if not e['cached']]}, read from cache: "
                             f"{[e['label'] for e in entries if e['cached']]}."}
    if not state.is_main_process:
        return {}
    report = write_report(args.out, args.protocol, header, entries)
    print((Path(args.out) / "report.md").read_text(), flush=True)
    return report


def _digest(images: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(images.float().cpu().contiguous().numpy().tobytes()).hexdigest()


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run(args)
    except EvalInputError as err:
        p.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
