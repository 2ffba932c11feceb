"""Bad inputs and faults against smoothlib's public entry points: a battery that classifies what each gets.

Each case feeds one bad input (or injects one fault) into a public entry point -- image
preparation and the entry points that take images (``prepare_image``, ``load_images``,
``invert``, ``edit``, ``image_walk``, ``reconstruction_protocol``), caption folders
(``read_captions``, ``CaptionedImageFolder``), ``slerp``/``lerp``, LoRA files
(``load_smooth_lora``), metrics, model folders (``load_world``), the trainer's flags
(parsed by the parser ``smoothlib.config.add_arguments`` builds) and trainer runs
(``smoothlib.train.train``) -- and declares what correct looks like: an error whose message
holds given keywords, or a result that passes the case's check (some cases allow either).
Every outcome is put in one class:

  clear error    the case expects an error, and the exception comes from smoothlib -- its type
                 is defined in smoothlib, or the innermost traceback frame is a ``raise``
                 statement in the smoothlib package (an argparse error of the parser smoothlib
                 builds counts too) -- and its message holds every expected keyword
                 (case-insensitive, the temporary folder's path left out; a keyword given
                 as a tuple is satisfied by any of its members)
  accepted       the case expects acceptance (or that a fault is survived) and the result
                 passes the case's check
  wrong error    an exception from smoothlib whose message lacks an expected keyword, or one
                 that refuses an input the case expects to be accepted
  raw traceback  an exception from anywhere else: torch, PIL, json, diffusers, the standard
                 library, or an entry point this version of smoothlib does not have
  silent wrong   no exception, but the case expected one, or the result fails the case's check
  hang           no result within the case's time limit
  data lost      trainer cases: a file of an earlier run (a checkpoint, ``final/``, a record of
                 ``history.jsonl``, a file given as --output-dir) is gone or changed afterwards,
                 or a run keeps no checkpoint; this class wins over every other

Run (from the repository root; under two minutes on two CPU cores):

    python benchmarks/bad_inputs.py [--timeout S] [--quick-timeout S] [--json out.json] [--only TEXT] [--list]

It prints the smoothlib file in use, a line per case as it finishes (on stderr), the counts
per class and per group, then every case that is neither a clear error nor accepted, with a
one-line reason. ``--json`` writes every case's result. Another checkout of smoothlib (an
older commit in a git worktree, say) is measured by putting it first on the path:

    PYTHONPATH=/tmp/before python /path/to/benchmarks/bad_inputs.py

The cases use only entry points that existed before the bad-input work; where one did not
exist yet, its ImportError/AttributeError/TypeError is classified like any other exception.

Isolation: the cases run one after another in a worker subprocess, each in a thread; a case
that has not returned within its limit is reported as a hang and the worker goes on (a thread
blocked on a FIFO stays blocked and harms nothing). If the worker stops answering or dies, it
is killed and a new one continues with the next case. Limits: ``--timeout`` (default 60 s) for
cases that run a model or the trainer, ``--quick-timeout`` (default 10 s) for cases that only
read a file, an array or a tensor. Everything is tiny (16x16 pixel worlds of random weights,
rank-2 LoRAs, 2 to 4 training steps of batch 2), on one thread, in a temporary folder that is
removed at the end.
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("clear error", "accepted", "wrong error", "raw traceback", "silent wrong", "hang", "data lost")
GOOD = ("clear error", "accepted")


# =========================================================================== cases and outcomes


@dataclass
class Case:
    id: str
    group: str
    what: str
    fn: object
    error: tuple = ()
    """Keywords the error message must hold (a tuple inside: any of its members); () expects acceptance."""
    accept: bool = False
    """With ``error``: passing the case's check without an error is correct too."""
    quick: bool = False
    """Only reads a file, an array or a tensor: limited by --quick-timeout."""

    def expects(self) -> str:
        if not self.error:
            return "accepted"
        words = " & ".join("/".join(k) if isinstance(k, tuple) else k for k in self.error)
        return f"error naming {words}" + (", or accepted" if self.accept else "")


CASES: list[Case] = []


def case(group: str, what: str, error=None, accept=False, quick=False, name=None):
    """Register a case function ``fn(ctx)``; it returns None (correct), a str (what is wrong) or a Lost."""
    def register(fn):
        keywords = () if error is None else (error if isinstance(error, tuple) else (error,))
        CASES.append(Case(f"{group}.{name or fn.__name__}", group, what, fn, keywords, accept, quick))
        return fn
    return register


class Lost(str):
    """A check's verdict: a file of an earlier run is gone or changed, or a run kept no checkpoint."""


class ParserError(Exception):
    """argparse refused a flag (the parser is the one smoothlib.config.add_arguments builds)."""


class Ctx:
    """What a case gets: its own folder, extra keywords known only at run time, and data guards."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.keywords: list[str] = []
        self._guards: list[tuple[Path, dict]] = []

    def protect(self, path) -> None:
        """Record ``path`` (a file or a folder); afterwards every file must be there unchanged
        (``history.jsonl`` may grow; a copy in a ``replaced-*`` folder beside it counts as kept)."""
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        snap = {}
        for p in files:
            rel = "" if p == path else str(p.relative_to(path))
            data = p.read_bytes()
            snap[rel] = (hashlib.sha256(data).hexdigest(), data if p.name == "history.jsonl" else None)
        self._guards.append((path, snap))

    def lost(self) -> str | None:
        gone = []
        for root, snap in self._guards:
            for rel, (digest, content) in snap.items():
                p = root / rel if rel else root
                if p.is_file():
                    data = p.read_bytes()
                    if hashlib.sha256(data).hexdigest() == digest or (content is not None and data.startswith(content)):
                        continue
                if rel and any(hashlib.sha256(q.read_bytes()).hexdigest() == digest
                               for q in root.glob(f"replaced-*/{rel}") if q.is_file()):
                    continue
                gone.append(f"{root.name}/{rel}" if rel else root.name)
        if gone:
            return f"{len(gone)} file(s) of the earlier run gone or changed: " + ", ".join(gone[:4]) + \
                (" ..." if len(gone) > 4 else "")
        return None


# =========================================================================== worker-side helpers

PKG_DIR = ""
FIX: Path = Path()
np = torch = Image = ImageOps = sl = save_file = None  # set by _setup() in the worker


def _setup(root: Path) -> None:
    """Import the heavy modules (only in the worker) and fix the worker's globals."""
    global np, torch, Image, ImageOps, sl, save_file, PKG_DIR, FIX
    import numpy
    import torch as torch_
    from PIL import Image as Image_, ImageOps as ImageOps_
    from safetensors.torch import save_file as save_file_

    import smoothlib
    np, torch, Image, ImageOps, sl, save_file = numpy, torch_, Image_, ImageOps_, smoothlib, save_file_
    PKG_DIR = os.path.dirname(os.path.abspath(smoothlib.__file__))
    FIX = root / "fixtures"
    FIX.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    try:  # build the shared worlds now, so that the first case using one is not charged with the imports
        shared_world(1), shared_world(3)
    except Exception:  # noqa: BLE001 - the cases that need them report it
        pass


@functools.cache
def _raise_lines(filename: str) -> tuple[tuple[int, int], ...]:
    try:
        tree = ast.parse(Path(filename).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple((n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Raise))


def _short(filename: str) -> str:
    """A traceback file name without its installation prefix."""
    path = os.path.abspath(filename) if os.path.isabs(filename) else filename
    if path.startswith(PKG_DIR + os.sep):
        return "smoothlib/" + os.path.relpath(path, PKG_DIR)
    if "site-packages" + os.sep in path:
        return path.split("site-packages" + os.sep, 1)[1]
    found = re.search(r"python3\.\d+/(.*)$", path)
    return found.group(1) if found else filename


def origin(exc: BaseException) -> tuple[bool, str]:
    """(raised by smoothlib?, where): smoothlib's own exception type, or a raise statement in its package."""
    if isinstance(exc, ParserError):
        return True, "argparse (smoothlib.config.add_arguments)"
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    where = "?" if last is None else f"{_short(last.tb_frame.f_code.co_filename)}:{last.tb_lineno}"
    if type(exc).__module__.split(".")[0] == "smoothlib":
        return True, where
    if last is None:
        return False, where
    filename = os.path.abspath(last.tb_frame.f_code.co_filename)
    inside = filename.startswith(PKG_DIR + os.sep)
    return inside and any(a <= last.tb_lineno <= b for a, b in _raise_lines(filename)), where


def classify(c: Case, ctx: Ctx, value, exc: BaseException | None) -> tuple[str, str]:
    lost = ctx.lost() or (value if isinstance(value, Lost) else None)
    if lost:
        return "data lost", str(lost) + (f" (and it raised {type(exc).__name__})" if exc is not None else "")
    if exc is not None:
        text = f"{type(exc).__name__}: {exc}".replace(str(FIX.parent), "<tmp>")
        line = " ".join(text.split())
        line = line if len(line) <= 220 else line[:217] + "..."
        ours, where = origin(exc)
        if not ours:
            return "raw traceback", f"{line} [raised in {where}]"
        if not c.error:
            return "wrong error", f"refused an input that is valid: {line}"
        message = str(exc).replace(str(FIX.parent), "<tmp>").lower()  # keywords match what the case chose
        wanted = list(c.error) + ctx.keywords
        missing = [k for k in wanted if not any(w.lower() in message for w in (k if isinstance(k, tuple) else (k,)))]
        if missing:
            return "wrong error", f"message lacks {missing}: {line}"
        return "clear error", line
    if c.error and not c.accept:
        return "silent wrong", "no error" + (f": {value}" if isinstance(value, str) else "; the input was accepted")
    if isinstance(value, str):
        return "silent wrong", value
    return "accepted", "ok"


# --------------------------------------------------------------------------- small worlds and files


def make_world(channels: int = 3, size: int = 16, seed: int = 0):
    """A pixel-space World of the tiny random parts (an older checkout, before smoothlib.testing: built
    from smoothlib.tiny's parts, as every such version has them)."""
    try:
        from smoothlib.testing import tiny_world
    except ImportError:
        from smoothlib.tiny import tiny_scheduler, tiny_text_encoder, tiny_unet, word_tokenizer
        from smoothlib.world import World
        return World(name="tiny", unet=tiny_unet(seed, sample_size=size, in_channels=channels),
                     text_encoder=tiny_text_encoder(seed), tokenizer=word_tokenizer(), scheduler=tiny_scheduler())
    return tiny_world(sample_size=size, in_channels=channels, seed=seed)


@functools.cache
def shared_world(channels: int):
    """A world for inference-only cases (nothing changes it)."""
    return make_world(channels)


def png(path: Path, size=(8, 8), colour=128, mode="L") -> Path:
    Image.new(mode, size, colour).save(path)
    return path


def captions(folder: Path, rows, name="metadata.jsonl") -> Path:
    (folder / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return folder / name


@functools.cache
def rgb_folder() -> str:
    """Four random 16x16 RGB images with a metadata.jsonl: the trainer's input."""
    root = FIX / "rgb"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    captions(root, [{"file_name": f"{i}.png", "text": f"image {i}"} for i in range(4)])
    return str(root)


def tcfg(out, **kw):
    from smoothlib.config import TrainConfig
    base = dict(world="tiny", data=rgb_folder(), resolution=16, output_dir=str(out), rank=2, train_batch_size=2,
                gradient_accumulation_steps=1, max_train_steps=2, checkpointing_steps=1, learning_rate=1e-3,
                progress=False)
    return TrainConfig(**{**base, **kw})


def train(cfg, channels=3, size=16):
    from smoothlib.train import train as train_
    return train_(cfg, world=make_world(channels, size))


@functools.cache
def finished_run() -> Path:
    """A finished 2-step run: checkpoints 1 and 2, final/, history.jsonl (cases copy it)."""
    out = FIX / "run2"
    train(tcfg(out))
    return out


@functools.cache
def reference_run() -> Path:
    """An uninterrupted 4-step run (keeping 2 checkpoints), for the fault cases."""
    out = FIX / "ref4"
    train(tcfg(out, max_train_steps=4, checkpoints_total_limit=2))
    return out


def copy_run(ctx: Ctx) -> Path:
    dst = ctx.tmp / "run"
    shutil.copytree(finished_run(), dst)
    return dst


def history_steps(run: Path) -> list:
    f = Path(run) / "history.jsonl"
    if not f.is_file():
        return []
    steps = []
    for line in f.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step"))
        except (json.JSONDecodeError, AttributeError):
            steps.append("cut-short line")
    return steps


def nonfinite(path: Path) -> list[str]:
    from safetensors.torch import load_file
    return [k for k, t in load_file(str(path)).items() if t.is_floating_point() and not torch.isfinite(t).all()]


def intact(path: Path) -> bool:
    from smoothlib.checkpoint import CheckpointError, verify_checkpoint
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


def run_problems(out: Path, steps: int):
    """What is wrong with a run that should have trained ``steps`` steps (None: nothing)."""
    from smoothlib.checkpoint import latest_checkpoint
    out = Path(out)
    latest = latest_checkpoint(out)
    if latest is None:
        return Lost(f"no checkpoint left in the run folder after {steps} steps")
    if history_steps(out) != list(range(1, steps + 1)):
        return f"history.jsonl steps {history_steps(out)}, expected 1..{steps}"
    finals = sorted((out / "final").glob("*.safetensors"))
    if not finals:
        return "no final LoRA written"
    for f in [*finals, latest / "state.safetensors"]:
        bad = nonfinite(f)
        if bad:
            return f"{f.parent.name}/{f.name} holds NaN/inf ({bad[0]})"
    return None


def parse_flags(flags: list[str], out: Path):
    """The TrainConfig the command line ``flags`` (after the tiny-run defaults) builds."""
    from smoothlib.config import add_arguments, from_args
    parser = argparse.ArgumentParser(prog="smoothlib-train")
    add_arguments(parser)
    base = ["--world", "tiny", "--data", rgb_folder(), "--resolution", "16", "--output-dir", str(out),
            "--rank", "2", "--train-batch-size", "2", "--gradient-accumulation-steps", "1",
            "--max-train-steps", "2", "--checkpointing-steps", "1", "--learning-rate", "1e-3", "--no-progress"]
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            args = parser.parse_args(base + flags)
    except SystemExit:  # the last line is the error; the usage above it names every flag
        raise ParserError(err.getvalue().strip().splitlines()[-1]) from None
    return from_args(args)


def image_problem(result, shape, value=None, tol=2.5 / 255):
    """None if ``result`` (a PreparedImage or tensor) is float32 of ``shape`` in [0, 1] (near ``value``)."""
    t = getattr(result, "image", result)
    if not isinstance(t, torch.Tensor):
        return f"returned {type(t).__name__}, not a tensor"
    if tuple(t.shape) != tuple(shape):
        return f"shape {tuple(t.shape)}, expected {tuple(shape)}"
    if t.dtype != torch.float32:
        return f"dtype {t.dtype}, expected float32"
    if not torch.isfinite(t).all():
        return "holds NaN/inf"
    if t.min() < 0 or t.max() > 1:
        return f"values outside [0, 1] ({t.min().item():.3g}..{t.max().item():.3g})"
    if value is not None:
        want = torch.as_tensor(value, dtype=torch.float32)
        if want.ndim == 1:
            want = want.view(-1, *([1] * (t.ndim - 1)))
        err = (t - want).abs().max().item()
        if err > tol:
            got = [round(v, 3) for v in t.reshape(t.shape[0], -1)[:, 0].tolist()]
            return f"pixel values {got}, expected {value} (off by {err:.3f})"
    return None


# =========================================================================== images

G = "images"

_RED = (200 / 255, 40 / 255, 40 / 255)
_MODES = [  # name, make the image, the RGB in [0, 1] it must give (alpha composited on white)
    ("1", lambda: Image.new("1", (6, 6), 1), (1, 1, 1)),
    ("L", lambda: Image.new("L", (6, 6), 100), (100 / 255,) * 3),
    ("LA_transparent", lambda: Image.new("LA", (6, 6), (0, 0)), (1, 1, 1)),
    ("LA_opaque", lambda: Image.new("LA", (6, 6), (100, 255)), (100 / 255,) * 3),
    ("P", lambda: Image.new("RGB", (6, 6), (200, 40, 40)).convert("P", palette=Image.ADAPTIVE), _RED),
    ("P_transparency", lambda: _transparent_p(), (1, 1, 1)),
    ("PA_transparent", lambda: Image.new("PA", (6, 6), (0, 0)), (1, 1, 1)),
    ("RGB", lambda: Image.new("RGB", (6, 6), (200, 40, 40)), _RED),
    ("RGBA_transparent", lambda: Image.new("RGBA", (6, 6), (255, 0, 0, 0)), (1, 1, 1)),
    ("RGBA_half", lambda: Image.new("RGBA", (6, 6), (255, 0, 0, 128)), (1, 127 / 255, 127 / 255)),
    ("RGBX", lambda: Image.new("RGBX", (6, 6), (200, 40, 40, 0)), _RED),
    ("RGBa_premultiplied", lambda: Image.new("RGBa", (6, 6), (100, 0, 0, 128)), (227 / 255, 127 / 255, 127 / 255)),
    ("CMYK", lambda: Image.new("CMYK", (6, 6), (0, 255, 0, 0)), (1, 0, 1)),
    ("YCbCr", lambda: Image.new("RGB", (6, 6), (200, 40, 40)).convert("YCbCr"), _RED),
    ("LAB", lambda: Image.new("LAB", (6, 6), (255, 128, 128)), (1, 1, 1)),
    ("HSV", lambda: Image.new("HSV", (6, 6), (0, 255, 255)), (1, 0, 0)),
    ("I_8bit_range", lambda: Image.new("I", (6, 6), 200), (200 / 255,) * 3),
    ("I_16bit_range", lambda: Image.new("I", (6, 6), 40000), (40000 / 65535,) * 3),
    ("I;16", lambda: Image.new("I;16", (6, 6), 32768), (0.5,) * 3),
    ("I;16B", lambda: Image.new("I;16B", (6, 6), 32768), (0.5,) * 3),
]


def _transparent_p():
    p = Image.new("RGB", (6, 6), (200, 40, 40)).convert("P", palette=Image.ADAPTIVE)
    p.info["transparency"] = p.getpixel((0, 0))
    return p


def _mode_case(make, value, ctx):
    return image_problem(sl.prepare_image(make(), 6), (3, 6, 6), value)


for _name, _make, _value in _MODES:
    case(G, f"prepare_image(PIL image of mode {_name})", quick=True, name=f"mode_{_name}")(
        functools.partial(_mode_case, _make, _value))


@case(G, "prepare_image(PIL image of mode F: float pixels)", error="mode F", quick=True)
def mode_F(ctx):
    return image_problem(sl.prepare_image(Image.new("F", (6, 6), 0.5), 6), (3, 6, 6))


@case(G, "prepare_image(PIL image of mode La: premultiplied grey + alpha)", error="La", accept=True, quick=True)
def mode_La(ctx):
    return image_problem(sl.prepare_image(Image.new("La", (6, 6), (100, 255)), 6), (3, 6, 6), (100 / 255,) * 3)


# -- odd shapes


@case(G, "prepare_image(1x1 image) to 8x8", quick=True)
def shape_1x1(ctx):
    return image_problem(sl.prepare_image(Image.new("L", (1, 1), 60), 8), (3, 8, 8), (60 / 255,) * 3)


@case(G, "prepare_image(300x2 image): extreme aspect ratio", quick=True)
def shape_300x2(ctx):
    return image_problem(sl.prepare_image(Image.new("RGB", (300, 2), (0, 0, 255)), 8), (3, 8, 8), (0, 0, 1))


@case(G, "prepare_image(square image, size=(8, 4)): non-square target", quick=True)
def shape_non_square_target(ctx):
    return image_problem(sl.prepare_image(Image.new("L", (16, 16), 255), (8, 4)), (3, 8, 4), (1, 1, 1))


@case(G, "prepare_image(0x0 PIL image)", error=(("0x0", "empty", "size"),), quick=True)
def shape_0x0(ctx):
    p = sl.prepare_image(Image.new("L", (0, 0)), 8)
    return image_problem(p, (3, 8, 8)) or f"an 8x8 image made of no pixels (mean {p.image.mean().item():.3g})"


@case(G, "prepare_image(numpy array of shape (0, 8))", error=(("empty", "(0, 8)", "size"),), quick=True)
def shape_numpy_empty(ctx):
    p = sl.prepare_image(np.zeros((0, 8), np.uint8), 8)
    return image_problem(p, (3, 8, 8)) or f"an 8x8 image made of no pixels (mean {p.image.mean().item():.3g})"


@case(G, "prepare_image(numpy [8, 8, 2]: two channels)", error="shape", quick=True)
def shape_two_channels(ctx):
    return image_problem(sl.prepare_image(np.zeros((8, 8, 2), np.uint8), 8), (3, 8, 8))


@case(G, "prepare_image(tensor [2, 8, 8]: two channels)", error="shape", quick=True)
def shape_tensor_two_channels(ctx):
    return image_problem(sl.prepare_image(torch.rand(2, 8, 8), 8), (3, 8, 8))


@case(G, "prepare_image(1-D tensor)", error="shape", quick=True)
def shape_1d(ctx):
    return image_problem(sl.prepare_image(torch.rand(64), 8), (3, 8, 8))


@case(G, "prepare_image(batch tensor [2, 3, 8, 8])", error="batch", quick=True)
def shape_batch_to_prepare(ctx):
    return image_problem(sl.prepare_image(torch.rand(2, 3, 8, 8), 8), (3, 8, 8))


@case(G, "prepare_image(5-D numpy array)", error="shape", quick=True)
def shape_5d(ctx):
    return image_problem(sl.prepare_image(np.zeros((1, 1, 8, 8, 3), np.uint8), 8), (3, 8, 8))


@case(G, "prepare_image(image, size=0)", error="size", quick=True)
def size_zero(ctx):
    return image_problem(sl.prepare_image(Image.new("L", (8, 8), 60), 0), (3, 0, 0))


@case(G, "prepare_image(image, 8, channels=2)", error="channels", quick=True)
def channels_two(ctx):
    return image_problem(sl.prepare_image(Image.new("L", (8, 8), 60), 8, channels=2), (2, 8, 8))


# -- CHW / HWC


@case(G, "prepare_image(tensor [3, 8, 4] red): narrow CHW, last axis looks like channels", quick=True)
def layout_narrow_chw(ctx):
    red = torch.zeros(3, 8, 4)
    red[0] = 1
    return image_problem(sl.prepare_image(red, (8, 4)), (3, 8, 4), (1, 0, 0))


@case(G, "prepare_image(tensor [3, 3, 3] red): a cube, read as CHW", quick=True)
def layout_cube(ctx):
    red = torch.zeros(3, 3, 3)
    red[0] = 1
    return image_problem(sl.prepare_image(red, 3), (3, 3, 3), (1, 0, 0))


@case(G, "prepare_image(tensor [8, 8, 3]): HWC tensor", error="permute", quick=True)
def layout_hwc_tensor(ctx):
    return image_problem(sl.prepare_image(torch.rand(8, 8, 3), 8), (3, 8, 8))


@case(G, "prepare_image(numpy [3, 8, 8]): CHW array", error="transpose", quick=True)
def layout_chw_numpy(ctx):
    return image_problem(sl.prepare_image(np.random.rand(3, 8, 8), 8), (3, 8, 8))


@case(G, "prepare_image(numpy [8, 8, 3] uint8 red)", quick=True)
def layout_hwc_numpy(ctx):
    a = np.zeros((8, 8, 3), np.uint8)
    a[..., 0] = 255
    return image_problem(sl.prepare_image(a, 8), (3, 8, 8), (1, 0, 0))


@case(G, "prepare_image(numpy [8, 8, 4], alpha 0): composited on white", quick=True)
def layout_rgba_numpy(ctx):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255
    return image_problem(sl.prepare_image(a, 8), (3, 8, 8), (1, 1, 1))


@case(G, "prepare_image(tensor [4, 8, 8], alpha 0): composited on white", quick=True)
def layout_rgba_tensor(ctx):
    t = torch.zeros(4, 8, 8)
    t[0] = 1
    return image_problem(sl.prepare_image(t, 8), (3, 8, 8), (1, 1, 1))


@case(G, "prepare_image(tensor [1, 8, 8] grey 0.4)", quick=True)
def layout_one_channel_tensor(ctx):
    return image_problem(sl.prepare_image(torch.full((1, 8, 8), 0.4), 8), (3, 8, 8), (0.4,) * 3)


@case(G, "prepare_image(tensor [8, 8] grey 0.4)", quick=True)
def layout_2d_tensor(ctx):
    return image_problem(sl.prepare_image(torch.full((8, 8), 0.4), 8), (3, 8, 8), (0.4,) * 3)


@case(G, "prepare_image(numpy [8, 8, 1] uint8 100)", quick=True)
def layout_hw1_numpy(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8, 1), 100, np.uint8), 8), (3, 8, 8), (100 / 255,) * 3)


# -- dtypes


def _float_case(dtype, ctx):
    t = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = sl.prepare_image(t.to(dtype), 8)
    return image_problem(p, (3, 8, 8)) or (None if (p.image - t).abs().max() < 0.01 else
                                           f"values off by {(p.image - t).abs().max().item():.3f}")


for _dt in ("float16", "bfloat16", "float64"):
    case(G, f"prepare_image(tensor [3, 8, 8] of {_dt} in [0, 1])", quick=True, name=f"dtype_tensor_{_dt}")(
        functools.partial(lambda name, ctx: _float_case(getattr(torch, name), ctx), _dt))


@case(G, "prepare_image(tensor [3, 8, 8] uint8 0..255)", quick=True)
def dtype_tensor_uint8(ctx):
    return image_problem(sl.prepare_image(torch.full((3, 8, 8), 51, dtype=torch.uint8), 8), (3, 8, 8), (0.2,) * 3)


@case(G, "prepare_image(tensor [3, 8, 8] int64 0..255)", quick=True)
def dtype_tensor_int64(ctx):
    return image_problem(sl.prepare_image(torch.full((3, 8, 8), 51, dtype=torch.int64), 8), (3, 8, 8), (0.2,) * 3)


@case(G, "prepare_image(tensor int32 holding 300)", error="uint8", quick=True)
def dtype_tensor_int_out_of_range(ctx):
    return image_problem(sl.prepare_image(torch.full((3, 8, 8), 300, dtype=torch.int32), 8), (3, 8, 8))


@case(G, "prepare_image(bool tensor [8, 8])", quick=True)
def dtype_tensor_bool(ctx):
    return image_problem(sl.prepare_image(torch.ones(8, 8, dtype=torch.bool), 8), (3, 8, 8), (1, 1, 1))


@case(G, "prepare_image(numpy uint16 [8, 8] = 32768)", quick=True)
def dtype_numpy_uint16(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8), 32768, np.uint16), 8), (3, 8, 8), (0.5,) * 3)


@case(G, "prepare_image(numpy uint16 [8, 8, 3] = 32768)", quick=True)
def dtype_numpy_uint16_rgb(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8, 3), 32768, np.uint16), 8), (3, 8, 8), (0.5,) * 3)


@case(G, "prepare_image(numpy int8 holding -5)", error="uint8", quick=True)
def dtype_numpy_int8_negative(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8), -5, np.int8), 8), (3, 8, 8))


@case(G, "prepare_image(numpy float16 [8, 8, 3] in [0, 1])", quick=True)
def dtype_numpy_float16(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8, 3), 0.6, np.float16), 8), (3, 8, 8), (0.6,) * 3)


@case(G, "prepare_image(numpy complex64)", error="complex", quick=True)
def dtype_numpy_complex(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8), 0.5 + 0j, np.complex64), 8), (3, 8, 8))


@case(G, "prepare_image(42): not an image", error="int", quick=True)
def type_int(ctx):
    return image_problem(sl.prepare_image(42, 8), (3, 8, 8))


# -- NaN / inf / range


@case(G, "prepare_image(tensor with NaN)", error="NaN", quick=True)
def nan_tensor(ctx):
    return image_problem(sl.prepare_image(torch.full((3, 8, 8), float("nan")), 8), (3, 8, 8))


@case(G, "prepare_image(numpy float32 with inf)", error=(("NaN", "inf"),), quick=True)
def inf_numpy(ctx):
    a = np.full((8, 8, 3), 0.5, np.float32)
    a[0, 0, 0] = np.inf
    return image_problem(sl.prepare_image(a, 8), (3, 8, 8))


@case(G, "prepare_image(float16 tensor with -inf)", error=(("NaN", "inf"),), quick=True)
def inf_float16(ctx):
    t = torch.full((3, 8, 8), 0.5, dtype=torch.float16)
    t[1, 2, 3] = float("-inf")
    return image_problem(sl.prepare_image(t, 8), (3, 8, 8))


@case(G, "prepare_image(float tensor of 1.5)", error="[0, 1]", quick=True)
def range_above_one(ctx):
    return image_problem(sl.prepare_image(torch.full((3, 8, 8), 1.5), 8), (3, 8, 8))


@case(G, "prepare_image(float tensor in [-1, 1])", error="[0, 1]", quick=True)
def range_minus_one(ctx):
    return image_problem(sl.prepare_image(torch.linspace(-1, 1, 192).reshape(3, 8, 8), 8), (3, 8, 8))


@case(G, "prepare_image(numpy float64 0..255)", error="[0, 1]", quick=True)
def range_float_255(ctx):
    return image_problem(sl.prepare_image(np.full((8, 8, 3), 200.0), 8), (3, 8, 8))


@case(G, "load_images(tensor with NaN, world)", error="NaN", quick=True)
def nan_load_images(ctx):
    return image_problem(sl.load_images(torch.full((3, 16, 16), float("nan")), shared_world(3))[0], (1, 3, 16, 16))


def _nan_image():
    image = torch.rand(1, 16, 16)
    image[0, 3, 3] = float("nan")
    return image


@case(G, "invert(world, image with NaN)", error="NaN")
def nan_invert(ctx):
    inv = sl.invert(shared_world(1), _nan_image(), "a digit", "ddim", num_steps=2, progress=False)
    return None if torch.isfinite(inv.x_T).all() else "x_T holds NaN"


@case(G, "edit(world, image with NaN)", error="NaN")
def nan_edit(ctx):
    out = sl.edit(shared_world(1), _nan_image(), "a digit", "a seven", num_steps=2, progress=False)
    return None if torch.isfinite(out).all() else "the edit holds NaN"


@case(G, "image_walk(world, image, image_b with NaN)", error="image_b")
def nan_image_walk(ctx):
    out = sl.image_walk(shared_world(1), torch.rand(1, 16, 16), _nan_image(), "a digit", num_frames=3,
                        num_steps=2, progress=False)
    return None if torch.isfinite(out).all() else "the frames hold NaN"


@case(G, "reconstruction_protocol(world, images with NaN)", error="NaN")
def nan_reconstruction_protocol(ctx):
    sl.reconstruction_protocol(shared_world(1), _nan_image().unsqueeze(0), ["a digit"], methods=("ddim",),
                               num_steps=2, progress=False)


@case(G, "invert(world, tensor of the world's shape in [-1, 1])", error="[0, 1]")
def range_invert(ctx):
    sl.invert(shared_world(1), torch.rand(1, 1, 16, 16) * 2 - 1, "a digit", "ddim", num_steps=2, progress=False)


@case(G, "invert(1-channel world, RGB tensor [3, 16, 16]): converted to grey")
def rgb_on_grey_world(ctx):
    inv = sl.invert(shared_world(1), torch.rand(3, 16, 16), "a digit", "ddim", num_steps=2, progress=False)
    return None if tuple(inv.x_T.shape) == (1, 1, 16, 16) and torch.isfinite(inv.x_T).all() else \
        f"x_T of shape {tuple(inv.x_T.shape)}, finite: {bool(torch.isfinite(inv.x_T).all())}"


@case(G, "invert(world, batch [2, 1, 16, 16])")
def batch_invert(ctx):
    inv = sl.invert(shared_world(1), torch.rand(2, 1, 16, 16), ["a digit", "a digit"], "ddim", num_steps=2,
                    progress=False)
    return None if tuple(inv.x_T.shape) == (2, 1, 16, 16) and torch.isfinite(inv.x_T).all() else \
        f"x_T of shape {tuple(inv.x_T.shape)}"


# -- files


def _exif_jpeg(path: Path) -> Path:
    a = np.zeros((20, 40), dtype=np.uint8)
    a[:, 20:] = 255  # left half black, right half white; orientation 6: turn 90 degrees clockwise to show
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, "JPEG", exif=exif, quality=95)
    return path


def _upright_problem(image):
    if image[0, :5].mean() < 0.1 and image[0, -5:].mean() > 0.9:
        return None
    return (f"EXIF orientation not applied (top rows mean {image[0, :5].mean().item():.2f}, "
            f"bottom rows {image[0, -5:].mean().item():.2f}; expected black over white)")


@case(G, "prepare_image(EXIF-rotated JPEG path)", quick=True)
def exif_jpeg(ctx):
    p = sl.prepare_image(_exif_jpeg(ctx.tmp / "photo.jpg"), 20, channels=1)
    return image_problem(p, (1, 20, 20)) or _upright_problem(p.image)


@case(G, "load_images(EXIF-rotated JPEG path, 1-channel world of 16x16)", quick=True)
def exif_jpeg_load_images(ctx):
    batch, _ = sl.load_images([str(_exif_jpeg(ctx.tmp / "photo.jpg"))], shared_world(1))
    return image_problem(batch, (1, 1, 16, 16)) or _upright_problem(batch[0])


@case(G, "prepare_image(path of a FIFO)", error="FIFO", quick=True)
def fifo_path(ctx):
    os.mkfifo(ctx.tmp / "pipe.png")
    return image_problem(sl.prepare_image(ctx.tmp / "pipe.png", 8), (3, 8, 8))


@case(G, "load_images([good.png, FIFO], world)", error="FIFO", quick=True)
def fifo_in_load_images(ctx):
    os.mkfifo(ctx.tmp / "pipe.png")
    sl.load_images([str(png(ctx.tmp / "good.png")), str(ctx.tmp / "pipe.png")], shared_world(3))


@case(G, "prepare_image(path of a folder)", error=(("folder", "directory"),), quick=True)
def folder_path(ctx):
    (ctx.tmp / "pictures").mkdir()
    return image_problem(sl.prepare_image(ctx.tmp / "pictures", 8), (3, 8, 8))


@case(G, "prepare_image(path of a missing file)", error="missing.png", quick=True)
def missing_file(ctx):
    return image_problem(sl.prepare_image(ctx.tmp / "missing.png", 8), (3, 8, 8))


@case(G, "prepare_image(PNG cut short)", error="cut.png", quick=True)
def truncated_png(ctx):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(ctx.tmp / "full.png")
    (ctx.tmp / "cut.png").write_bytes((ctx.tmp / "full.png").read_bytes()[:300])
    return image_problem(sl.prepare_image(ctx.tmp / "cut.png", 8), (3, 8, 8))


@case(G, "prepare_image(zero-byte .png)", error="empty.png", quick=True)
def empty_file(ctx):
    (ctx.tmp / "empty.png").write_bytes(b"")
    return image_problem(sl.prepare_image(ctx.tmp / "empty.png", 8), (3, 8, 8))


@case(G, "prepare_image(text file named .png)", error="notes.png", quick=True)
def text_as_png(ctx):
    (ctx.tmp / "notes.png").write_text("not an image")
    return image_problem(sl.prepare_image(ctx.tmp / "notes.png", 8), (3, 8, 8))


# =========================================================================== caption folders

G = "captions"


def _folder(ctx, *names) -> Path:
    for n in names:
        png(ctx.tmp / n)
    return ctx.tmp


def _dataset(root, **kw):
    from smoothlib.data import CaptionedImageFolder
    return CaptionedImageFolder(root, resolution=8, **kw)


def _read(root, **kw):
    from smoothlib.data import read_captions
    return read_captions(root, **kw)


@case(G, "caption file in Latin-1 (line 2)", error="metadata.jsonl:2", quick=True)
def latin1(ctx):
    text = '{"file_name": "a.png", "text": "plain"}\n{"file_name": "b.png", "text": "caf\u00e9"}\n'
    (ctx.tmp / "metadata.jsonl").write_bytes(text.encode("latin-1"))
    pairs = _read(ctx.tmp)
    return None if pairs[1][1] == "caf\u00e9" else f"caption read as {pairs[1][1]!r}"


@case(G, "caption file with a UTF-8 BOM", quick=True)
def bom(ctx):
    _folder(ctx, "a.png")
    line = json.dumps({"file_name": "a.png", "text": "ein B\u00e4r"}, ensure_ascii=False)
    (ctx.tmp / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode("utf-8"))
    pairs = _read(ctx.tmp)
    return None if [(Path(p).name, c) for p, c in pairs] == [("a.png", "ein B\u00e4r")] else f"read {pairs}"


@case(G, "caption file with Windows line ends (CRLF)", quick=True)
def crlf(ctx):
    _folder(ctx, "a.png", "b.png")
    (ctx.tmp / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "x"}\r\n{"file_name": "b.png", '
                                             b'"text": "y"}\r\n')
    ds = _dataset(ctx.tmp)
    return None if len(ds) == 2 and [c for _, c in _read(ctx.tmp)] == ["x", "y"] else "wrong pairs"


@case(G, "caption line 3 not valid JSON", error="metadata.jsonl:3", quick=True)
def bad_json(ctx):
    (ctx.tmp / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n\n{"file_name": "b.png", text}\n')
    _read(ctx.tmp)


@case(G, "caption line that is a JSON list", error="metadata.jsonl:1", quick=True)
def json_list_line(ctx):
    (ctx.tmp / "metadata.jsonl").write_text('["a.png", "a caption"]\n')
    _read(ctx.tmp)


@case(G, 'caption "caption": null on line 2', error="metadata.jsonl:2", quick=True)
def null_caption(ctx):
    captions(ctx.tmp, [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "caption": None}])
    pairs = _read(ctx.tmp)
    return f"caption read as {pairs[1][1]!r}"


@case(G, 'caption "text": 123', error="metadata.jsonl:1", quick=True)
def number_caption(ctx):
    captions(ctx.tmp, [{"file_name": "a.png", "text": 123}])
    pairs = _read(ctx.tmp)
    return f"caption read as {pairs[0][1]!r}"


@case(G, "caption line without file_name", error="metadata.jsonl:1", quick=True)
def no_file_name(ctx):
    captions(ctx.tmp, [{"text": "a"}])
    _read(ctx.tmp)


@case(G, 'caption "file_name": 7', error="metadata.jsonl:1", quick=True)
def number_file_name(ctx):
    captions(ctx.tmp, [{"file_name": 7, "text": "a"}])
    _read(ctx.tmp)


@case(G, "caption file naming a missing image (and a present one)", quick=True)
def missing_image(ctx):
    _folder(ctx, "a.png")
    captions(ctx.tmp, [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "text": "b"}])
    ds = _dataset(ctx.tmp)
    if len(ds) != 1:
        return f"{len(ds)} items"
    return None if any("b.png" in str(p) for p, _ in getattr(ds, "skipped", [])) else "b.png not in skipped"


@case(G, "caption file naming only missing images", error=(("missing", "no such file"),), quick=True)
def all_missing(ctx):
    captions(ctx.tmp, [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "text": "b"}])
    return f"a data set of {len(_dataset(ctx.tmp))} items"


@case(G, "images in the folder the caption file does not list: counted, named in a warning", quick=True)
def uncaptioned(ctx):
    _folder(ctx, "a.png", "b.png", "c.jpg")
    captions(ctx.tmp, [{"file_name": "a.png", "text": "a"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dataset(ctx.tmp)
    named = [str(w.message) for w in caught if "b.png" in str(w.message)]
    if len(ds) != 1:
        return f"{len(ds)} items"
    return None if named else "no warning names the 2 uncaptioned images (dropped without a count)"


@case(G, "listed image cannot be decoded: skipped and recorded", quick=True)
def corrupt_listed(ctx):
    _folder(ctx, "a.png")
    (ctx.tmp / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    captions(ctx.tmp, [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "text": "b"}])
    ds = _dataset(ctx.tmp)
    return None if len(ds) == 1 and any("b.png" in str(p) for p, _ in ds.skipped) else "b.png not skipped"


@case(G, "file_name '../outside.png' leaving the folder", error=("metadata.jsonl:1", "outside"), quick=True)
def dotdot_outside(ctx):
    (ctx.tmp / "data").mkdir()
    png(ctx.tmp / "outside.png")
    captions(ctx.tmp / "data", [{"file_name": "../outside.png", "text": "x"}])
    return f"read a file outside the folder ({len(_dataset(ctx.tmp / 'data'))} item)"


@case(G, "file_name an absolute path outside the folder", error=("metadata.jsonl:1", "outside"), quick=True)
def absolute_name(ctx):
    png(ctx.tmp / "abs.png")
    (ctx.tmp / "data").mkdir()
    captions(ctx.tmp / "data", [{"file_name": str(ctx.tmp / "abs.png"), "text": "x"}])
    return f"read a file outside the folder ({len(_dataset(ctx.tmp / 'data'))} item)"


@case(G, "file_name 'sub/../a.png' staying inside the folder", quick=True)
def dotdot_inside(ctx):
    (ctx.tmp / "sub").mkdir()
    _folder(ctx, "a.png")
    captions(ctx.tmp, [{"file_name": "sub/../a.png", "text": "x"}])
    return None if len(_dataset(ctx.tmp)) == 1 else "not 1 item"


@case(G, "caption holding U+2028 (line separator)", quick=True)
def line_separator(ctx):
    (ctx.tmp / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "one\u2028two"}\n', encoding="utf-8")
    pairs = _read(ctx.tmp)
    return None if len(pairs) == 1 and pairs[0][1] == "one\u2028two" else f"read {pairs}"


@case(G, "a listed file is a FIFO: skipped without opening", quick=True)
def fifo_listed(ctx):
    _folder(ctx, "good.png")
    os.mkfifo(ctx.tmp / "listed.png")
    captions(ctx.tmp, [{"file_name": "good.png", "text": "a"}, {"file_name": "listed.png", "text": "b"}])
    ds = _dataset(ctx.tmp)
    reasons = [r for p, r in ds.skipped if "listed.png" in str(p)]
    return None if len(ds) == 1 and reasons and "FIFO" in reasons[0] else f"skipped: {ds.skipped}"


@case(G, "an unlisted FIFO lies in the folder", quick=True)
def fifo_unlisted(ctx):
    _folder(ctx, "good.png")
    os.mkfifo(ctx.tmp / "unlisted.png")
    captions(ctx.tmp, [{"file_name": "good.png", "text": "a"}])
    return None if len(_dataset(ctx.tmp)) == 1 else "not 1 item"


@case(G, "the caption file is a FIFO", error="FIFO", quick=True)
def fifo_caption_file(ctx):
    os.mkfifo(ctx.tmp / "metadata.jsonl")
    _read(ctx.tmp)


@case(G, "the caption file (captions=) is a folder", error=(("folder", "directory"),), quick=True)
def folder_caption_file(ctx):
    (ctx.tmp / "captions.jsonl").mkdir()
    _read(ctx.tmp, captions=ctx.tmp / "captions.jsonl")


@case(G, "no caption file in the folder", error="metadata.jsonl", quick=True)
def no_caption_file(ctx):
    _folder(ctx, "a.png")
    _dataset(ctx.tmp)


@case(G, "empty caption file", error=(("metadata.jsonl", "empty"),), quick=True)
def empty_caption_file(ctx):
    _folder(ctx, "a.png")
    (ctx.tmp / "metadata.jsonl").write_text("")
    return f"a data set of {len(_dataset(ctx.tmp))} items"


# =========================================================================== slerp / lerp

G = "interpolation"


def _ends(shape=(2, 4, 4)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def _ref_slerp(a, b, t):
    a64, b64 = a.double().flatten(), b.double().flatten()
    theta = torch.arccos((a64 @ b64 / (a64.norm() * b64.norm())).clamp(-1, 1))
    return ((torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / torch.sin(theta)).reshape(a.shape)


def _frames_problem(out, a, b, ts, fn="slerp"):
    want = torch.stack([_ref_slerp(a, b, t) if fn == "slerp" else (1 - t) * a.double() + t * b.double() for t in ts])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(want.shape):
        return f"shape {tuple(getattr(out, 'shape', ()))}, expected {tuple(want.shape)} (one frame per t)"
    err = (out.double() - want).abs().max().item()
    return None if err < 1e-5 else f"frames off by {err:.3g}"


_TS = [0.0, 0.25, 0.75, 1.0]
for _form_name, _form in (("list", list), ("tuple", tuple), ("ndarray", lambda v: np.array(v)),
                          ("tensor", lambda v: torch.tensor(v))):
    def _t_form(form, ctx):
        a, b = _ends()
        return _frames_problem(sl.slerp(a, b, form(_TS)), a, b, _TS)
    case(G, f"slerp(a, b, t as a {_form_name} of 4 values)", quick=True, name=f"slerp_t_{_form_name}")(
        functools.partial(_t_form, _form))


@case(G, "lerp(a, b, t as a list of 4 values)", quick=True)
def lerp_t_list(ctx):
    a, b = _ends()
    return _frames_problem(sl.lerp(a, b, _TS), a, b, _TS, fn="lerp")


@case(G, "slerp(a, b, 0.3): Python float", quick=True)
def slerp_t_float(ctx):
    a, b = _ends()
    out = sl.slerp(a, b, 0.3)
    return _frames_problem(out.unsqueeze(0), a, b, [0.3]) if out.shape == a.shape else f"shape {tuple(out.shape)}"


@case(G, "slerp(a, b, np.float64(0.3)): numpy scalar", quick=True)
def slerp_t_numpy_scalar(ctx):
    a, b = _ends()
    out = sl.slerp(a, b, np.float64(0.3))
    return _frames_problem(out.unsqueeze(0), a, b, [0.3]) if out.shape == a.shape else f"shape {tuple(out.shape)}"


@case(G, "slerp(a, b, torch.tensor(0.3)): 0-d tensor", quick=True)
def slerp_t_0d_tensor(ctx):
    a, b = _ends()
    out = sl.slerp(a, b, torch.tensor(0.3))
    return _frames_problem(out.unsqueeze(0), a, b, [0.3]) if out.shape == a.shape else f"shape {tuple(out.shape)}"


@case(G, "slerp(a, b, 1) and slerp(a, b, 0): exact ends", quick=True)
def slerp_t_int_ends(ctx):
    a, b = _ends()
    return None if torch.equal(sl.slerp(a, b, 1), b) and torch.equal(sl.slerp(a, b, 0), a) else "ends not exact"


@case(G, "slerp(a, b, []): empty t", error="empty", quick=True)
def slerp_t_empty(ctx):
    a, b = _ends()
    sl.slerp(a, b, [])


def _out_of_range_t(t):
    out = sl.slerp(*_ends(), t)
    return f"frames of shape {tuple(out.shape)}, finite: {bool(torch.isfinite(out).all())}"


for _bad_name, _bad_t in (("1.5", 1.5), ("-0.1", -0.1), ("nan", float("nan")), ("list_with_2", [0.0, 2.0])):
    case(G, f"slerp(a, b, t={_bad_name}): outside [0, 1]", error="[0, 1]", quick=True, name=f"slerp_t_{_bad_name}")(
        functools.partial(lambda t, ctx: _out_of_range_t(t), _bad_t))


@case(G, "lerp(a, b, t=1.5): outside [0, 1]", error="[0, 1]", quick=True)
def lerp_t_out_of_range(ctx):
    sl.lerp(*_ends(), 1.5)


@case(G, "slerp(a, b, [[0.1, 0.2]]): 2-D t", error="1-D", quick=True)
def slerp_t_2d(ctx):
    sl.slerp(*_ends(), [[0.1, 0.2]])


@case(G, "slerp(a, b, '0.5'): t as a string", error="number", quick=True)
def slerp_t_string(ctx):
    sl.slerp(*_ends(), "0.5")


@case(G, "slerp(v, -v, 0.5): opposite ends", error="opposite", quick=True)
def slerp_opposite(ctx):
    v = _ends()[0]
    out = sl.slerp(v, -v, 0.5)
    return f"a frame of norm {out.norm().item():.3g} (the ends have {v.norm().item():.3g})"


@case(G, "slerp(v, -3 v + tiny noise, [0, 0.5]): nearly opposite ends", error="opposite", quick=True)
def slerp_nearly_opposite(ctx):
    v, n = _ends()
    sl.slerp(v, -3 * v + 1e-4 * n, [0.0, 0.5])


@case(G, "slerp(0, b, 0.5): a zero end (lerp)", quick=True)
def slerp_zero_end(ctx):
    _, b = _ends()
    out = sl.slerp(torch.zeros_like(b), b, 0.5)
    return None if torch.allclose(out, 0.5 * b) else "not the lerp midpoint"


@case(G, "slerp(0, 0, [0, 0.5, 1]): both ends zero", quick=True)
def slerp_both_zero(ctx):
    z = torch.zeros(2, 4, 4)
    out = sl.slerp(z, z, [0.0, 0.5, 1.0])
    return None if tuple(out.shape) == (3, 2, 4, 4) and torch.equal(out, torch.zeros(3, 2, 4, 4)) else \
        f"shape {tuple(out.shape)} or not zero"


@case(G, "slerp(a [2,4,4], b [2,4,5]): shapes differ", error="shape", quick=True)
def slerp_shape_mismatch(ctx):
    sl.slerp(torch.randn(2, 4, 4), torch.randn(2, 4, 5), 0.5)


@case(G, "slerp(a, b with NaN, 0.5)", error="NaN", quick=True)
def slerp_nan_end(ctx):
    a, b = _ends()
    b[0, 0, 0] = float("nan")
    out = sl.slerp(a, b, 0.5)
    return "frame holds NaN" if not torch.isfinite(out).all() else None


@case(G, "slerp(a with inf, b, 0.5)", error=(("NaN", "inf"),), quick=True)
def slerp_inf_end(ctx):
    a, b = _ends()
    a[1, 1, 1] = float("inf")
    sl.slerp(a, b, 0.5)


@case(G, "lerp(a with NaN, b, 0.5): the ends must be finite", error="NaN", quick=True)
def lerp_nan_end(ctx):
    a, b = _ends()
    a[0, 0, 0] = float("nan")
    out = sl.lerp(a, b, 0.5)
    return "frame holds NaN" if not torch.isfinite(out).all() else None


@case(G, "slerp of float16 ends of size 300 (dot product overflows in float16)", quick=True)
def slerp_float16(ctx):
    a, b = (300 * v for v in _ends((4, 16, 16)))
    out = sl.slerp(a.half(), b.half(), [0.5])
    if out.dtype != torch.float16:
        return f"dtype {out.dtype}"
    want = _ref_slerp(a.half().float(), b.half().float(), 0.5)
    err = ((out[0].double() - want).abs().max() / want.abs().max()).item()
    return None if torch.isfinite(out).all() and err < 2e-3 else f"relative error {err:.3g}"


@case(G, "slerp of nearly parallel ends (b = a + 1e-7 noise)", quick=True)
def slerp_parallel(ctx):
    a, n = _ends()
    b = a + 1e-7 * n
    out = sl.slerp(a, b, [0.0, 0.5, 1.0])
    return None if torch.isfinite(out).all() and torch.allclose(out[1], 0.5 * (a + b), atol=1e-6) else "not lerp"


# =========================================================================== LoRA files

G = "lora"


def _unet():
    try:
        from smoothlib.testing import tiny_unet
    except ImportError:  # an older checkout, before smoothlib.testing
        from smoothlib.tiny import tiny_unet
    return tiny_unet()


def _release_lora(unet, rank=2):
    sd = {}
    g = torch.Generator().manual_seed(0)
    for name in sl.attention_projections(unet):
        layer = unet.get_submodule(name)
        block, rest = name.split(".attn", 1)
        attn, proj = rest.split(".", 1)
        stem = f"{block}.attn{attn}.processor.{proj.removesuffix('.0')}_lora"
        sd[f"{stem}.down.weight"] = 0.1 * torch.randn(rank, layer.in_features, generator=g)
        sd[f"{stem}.up.weight"] = 0.1 * torch.randn(layer.out_features, rank, generator=g)
    return sd


def _unchanged(unet):
    return None if not getattr(unet, "peft_config", None) else "an adapter was attached anyway"


@case(G, "load_smooth_lora(unet, a valid release-format file)")
def valid(ctx):
    unet = _unet()
    save_file(_release_lora(unet), str(ctx.tmp / "good.safetensors"))
    report = sl.load_smooth_lora(unet, ctx.tmp / "good.safetensors")
    n = len(sl.attention_projections(unet))
    return None if report.layers == n and getattr(unet, "peft_config", None) else f"{report.layers} of {n} layers"


for _bad_name, _bad in (("nan", float("nan")), ("inf", float("inf"))):
    def _nonfinite_lora(bad, ctx):
        unet = _unet()
        sd = _release_lora(unet)
        key = sorted(sd)[3]
        sd[key][0, 0] = bad
        save_file(sd, str(ctx.tmp / "diverged.safetensors"))
        ctx.keywords.append(key)
        sl.load_smooth_lora(unet, ctx.tmp / "diverged.safetensors")
        return "the non-finite LoRA was applied"
    case(G, f"LoRA file with one {_bad_name} weight", error="diverged.safetensors", name=f"{_bad_name}_tensor")(
        functools.partial(_nonfinite_lora, _bad))


@case(G, "a pickle renamed .safetensors", error="disguised.safetensors")
def pickle_renamed(ctx):
    unet = _unet()
    buf = io.BytesIO()
    torch.save(_release_lora(unet), buf)  # written here, never loaded
    (ctx.tmp / "disguised.safetensors").write_bytes(buf.getvalue())
    sl.load_smooth_lora(unet, ctx.tmp / "disguised.safetensors")
    return "a pickle file was loaded"


@case(G, "a .pt pickle file", error="pickle")
def pickle_pt(ctx):
    unet = _unet()
    torch.save(_release_lora(unet), ctx.tmp / "lora.pt")
    sl.load_smooth_lora(unet, ctx.tmp / "lora.pt")
    return "a pickle file was loaded"


@case(G, "a folder holding only a pickle file", error="pickle")
def pickle_folder(ctx):
    unet = _unet()
    torch.save(_release_lora(unet), ctx.tmp / "pytorch_lora_weights.bin")
    sl.load_smooth_lora(unet, ctx.tmp)
    return "a pickle file was loaded"


@case(G, "an empty .safetensors file", error="empty.safetensors")
def empty_lora(ctx):
    (ctx.tmp / "empty.safetensors").write_bytes(b"")
    sl.load_smooth_lora(_unet(), ctx.tmp / "empty.safetensors")


@case(G, "a .safetensors file cut short", error="cut.safetensors")
def truncated_lora(ctx):
    unet = _unet()
    save_file(_release_lora(unet), str(ctx.tmp / "full.safetensors"))
    data = (ctx.tmp / "full.safetensors").read_bytes()
    (ctx.tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    sl.load_smooth_lora(unet, ctx.tmp / "cut.safetensors")
    return _unchanged(unet) or "loaded"


@case(G, "a safetensors file with unknown keys", error="key")
def wrong_keys(ctx):
    save_file({"foo.weight": torch.zeros(2, 2), "bar.bias": torch.zeros(2)}, str(ctx.tmp / "other.safetensors"))
    unet = _unet()
    sl.load_smooth_lora(unet, ctx.tmp / "other.safetensors")
    return "loaded"


@case(G, "release keys with a down tensor of the wrong width", error="shape")
def wrong_shape(ctx):
    unet = _unet()
    sd = _release_lora(unet)
    key = next(k for k in sorted(sd) if k.endswith("down.weight"))
    sd[key] = torch.zeros(2, sd[key].shape[1] + 1)
    save_file(sd, str(ctx.tmp / "wide.safetensors"))
    sl.load_smooth_lora(unet, ctx.tmp / "wide.safetensors")
    return "loaded"


@case(G, "a LoRA path that does not exist", error="missing.safetensors")
def missing_lora(ctx):
    sl.load_smooth_lora(_unet(), ctx.tmp / "missing.safetensors")


@case(G, "a folder holding two .safetensors files", error="weight_name")
def two_files(ctx):
    unet = _unet()
    for n in ("a", "b"):
        save_file(_release_lora(unet), str(ctx.tmp / f"{n}.safetensors"))
    sl.load_smooth_lora(unet, ctx.tmp)


@case(G, "loading a second LoRA under the same adapter name", error="already")
def twice(ctx):
    unet = _unet()
    save_file(_release_lora(unet), str(ctx.tmp / "good.safetensors"))
    sl.load_smooth_lora(unet, ctx.tmp / "good.safetensors")
    sl.load_smooth_lora(unet, ctx.tmp / "good.safetensors")


# =========================================================================== metrics

G = "metrics"


def _frames(n=5, seed=0):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


@case(G, "istd(list of 5 frame tensors)", quick=True)
def istd_list(ctx):
    f = _frames()
    return None if torch.equal(sl.istd(list(f)), sl.istd(f)) else "differs from the stacked tensor's"


@case(G, "istd_per_walk(list of walks, each a list of frames)", quick=True)
def istd_per_walk_nested(ctx):
    f = _frames()
    got = sl.istd_per_walk([list(f), list(f.flip(0))])
    return None if torch.equal(got, sl.istd_per_walk(torch.stack([f, f.flip(0)]))) else "differs"


@case(G, "adjacent_distances(list of frames)", quick=True)
def adjacent_list(ctx):
    f = _frames()
    return None if torch.equal(sl.adjacent_distances(list(f)), sl.adjacent_distances(f)) else "differs"


@case(G, "mse(list, list)", quick=True)
def mse_lists(ctx):
    x, y = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    return None if torch.equal(sl.mse(list(x), list(y)), sl.mse(x, y)) else "differs"


@case(G, "istd(frames of different shapes)", error="shape", quick=True)
def istd_ragged(ctx):
    sl.istd([torch.rand(1, 4, 4), torch.rand(1, 4, 5), torch.rand(1, 4, 4)])


@case(G, "istd(numpy array)", error=(("numpy", "ndarray"),), quick=True)
def istd_numpy(ctx):
    sl.istd(np.random.rand(5, 1, 4, 4))


@case(G, "istd([])", error="empty", quick=True)
def istd_empty(ctx):
    sl.istd([])


@case(G, "istd(2 frames): no spread of 1 distance", error="3 frames", quick=True)
def istd_two_frames(ctx):
    sl.istd(_frames(2))


@case(G, "mse(images [2,1,12,12], reference [2,1,12,10])", error="shape", quick=True)
def mse_mismatch(ctx):
    sl.mse(torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 10))


@case(G, "mse(numpy, numpy)", error=(("numpy", "ndarray"),), quick=True)
def mse_numpy(ctx):
    sl.mse(np.random.rand(1, 1, 12, 12), np.random.rand(1, 1, 12, 12))


@case(G, "ssim of 8x8 images (window 11)", error="11", quick=True)
def ssim_small(ctx):
    sl.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


@case(G, "ssim of float images in 0..255", error="[0, 1]", quick=True)
def ssim_255(ctx):
    sl.ssim(torch.rand(1, 1, 12, 12) * 255, torch.rand(1, 1, 12, 12) * 255)


@case(G, "psnr(images with NaN, reference)", error="NaN", quick=True)
def psnr_nan(ctx):
    x = torch.rand(1, 1, 12, 12)
    x[0, 0, 0, 0] = float("nan")
    sl.psnr(x, torch.rand(1, 1, 12, 12))


# =========================================================================== model folders

G = "model-folders"

_SD15_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
               "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}


def _load_world(folder):
    return sl.load_world(str(folder), device="cpu", dtype=torch.float32)


@case(G, "load_world(a folder that does not exist)", error="no-such-model")
def world_missing(ctx):
    _load_world(ctx.tmp / "no-such-model")


@case(G, "load_world(an empty folder)", error="model_index.json")
def world_empty_folder(ctx):
    _load_world(ctx.tmp)


for _name, _content, _kw in (
        ("empty", "", ("model_index.json", "empty")),
        ("broken_json", '{"unet": ["diffusers", "UNet2DConditionModel"],', ("model_index.json", "line 1")),
        ("json_list", "[1, 2]", ("model_index.json", "list")),
        ("incomplete", '{"_class_name": "StableDiffusionPipeline"}', ("model_index.json", "unet")),
        ("latin1", "{\"_class_name\": \"caf\xe9\"}", ("model_index.json", "UTF-8"))):
    def _index_case(content, ctx):
        (ctx.tmp / "model_index.json").write_bytes(content.encode("latin-1"))
        _load_world(ctx.tmp)
    case(G, f"load_world(folder with a model_index.json that is {_name.replace('_', ' ')})", error=_kw,
         name=f"index_{_name}")(functools.partial(_index_case, _content))


@case(G, "load_world(folder whose model_index.json is a FIFO)", error="model_index.json")
def index_fifo(ctx):
    os.mkfifo(ctx.tmp / "model_index.json")
    _load_world(ctx.tmp)


def _pipeline_skeleton(root: Path, weights: dict[str, str]):
    (root / "model_index.json").write_text(json.dumps(_SD15_INDEX))
    for part, name in weights.items():
        (root / part).mkdir()
        (root / part / "config.json").write_text("{}")
        (root / part / name).write_bytes(b"placeholder bytes, not a pickle")  # only the name is looked at


@case(G, "load_world(folder whose weights are pickle files only)", error="pickle")
def pickle_weights(ctx):
    _pipeline_skeleton(ctx.tmp, {"unet": "diffusion_pytorch_model.bin", "vae": "diffusion_pytorch_model.bin",
                                 "text_encoder": "pytorch_model.bin"})
    _load_world(ctx.tmp)


@case(G, "load_world(folder with a model_index.json and no weights)", error="unet")
def no_weights(ctx):
    (ctx.tmp / "model_index.json").write_text(json.dumps(_SD15_INDEX))
    _load_world(ctx.tmp)


# =========================================================================== trainer flags

G = "trainer-flags"

_FLAGS = [  # name, flags, the flag the error must name
    ("lr_nan", ["--learning-rate", "nan"], "--learning-rate"),
    ("lr_negative", ["--learning-rate", "-0.0001"], "--learning-rate"),
    ("lr_zero", ["--learning-rate", "0"], "--learning-rate"),
    ("lr_text", ["--learning-rate", "abc"], "--learning-rate"),
    ("beta1_negative", ["--adam-beta1", "-0.1"], "--adam-beta1"),
    ("beta2_one", ["--adam-beta2", "1"], "--adam-beta2"),
    ("beta2_1.5", ["--adam-beta2", "1.5"], "--adam-beta2"),
    ("beta2_nan", ["--adam-beta2", "nan"], "--adam-beta2"),
    ("epsilon_zero", ["--adam-epsilon", "0"], "--adam-epsilon"),
    ("weight_decay_negative", ["--weight-decay", "-0.01"], "--weight-decay"),
    ("max_grad_norm_inf", ["--max-grad-norm", "inf"], "--max-grad-norm"),
    ("lambda_reg_nan", ["--lambda-reg", "nan"], "--lambda-reg"),
    ("noise_offset_nan", ["--noise-offset", "nan"], "--noise-offset"),
    ("seed_negative", ["--seed", "-1"], "--seed"),
    ("workers_negative", ["--dataloader-num-workers", "-1"], "--dataloader-num-workers"),
    ("warmup_negative", ["--lr-warmup-steps", "-5"], "--lr-warmup-steps"),
    ("unknown_scheduler", ["--lr-scheduler", "cosine_annealing"], "--lr-scheduler"),
    ("ckpt_limit_negative", ["--checkpoints-total-limit", "-1"], "--checkpoints-total-limit"),
    ("ckpt_limit_zero", ["--checkpoints-total-limit", "0"], "--checkpoints-total-limit"),
    ("mixed_precision_fp8", ["--mixed-precision", "fp8"], "--mixed-precision"),
    ("rank_zero", ["--rank", "0"], "--rank"),
    ("caption_dropout_one", ["--caption-dropout", "1"], "--caption-dropout"),
    ("max_steps_zero", ["--max-train-steps", "0"], "--max-train-steps"),
    ("resolution_zero", ["--resolution", "0"], "--resolution"),
]


def _flag_case(flags, ctx):
    out = ctx.tmp / "run"
    cfg = parse_flags(flags, out)
    train(cfg)
    return run_problems(out, cfg.max_train_steps) or f"a {cfg.max_train_steps}-step run trained with {' '.join(flags)}"


for _name, _flags, _flag in _FLAGS:
    case(G, "smoothlib-train " + " ".join(_flags), error=_flag, name=_name)(functools.partial(_flag_case, _flags))


# =========================================================================== trainer runs

G = "trainer-runs"


@case(G, "--output-dir is a file", error="notes.txt")
def out_is_file(ctx):
    f = ctx.tmp / "notes.txt"
    f.write_text("my notes")
    ctx.protect(f)
    train(tcfg(f))


@case(G, "--output-dir lies under a file", error="notes.txt")
def out_under_file(ctx):
    f = ctx.tmp / "notes.txt"
    f.write_text("my notes")
    ctx.protect(f)
    train(tcfg(f / "run"))


@case(G, "--output-dir holds unrelated files only: a fresh run goes ahead, they stay")
def out_unrelated_files(ctx):
    out = ctx.tmp / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    ctx.protect(out / "notes.txt")
    train(tcfg(out))
    return run_problems(out, 2)


@case(G, "a fresh run into a folder holding another run", error="--output-dir")
def fresh_into_other_run(ctx):
    run = copy_run(ctx)
    ctx.protect(run)
    train(tcfg(run, seed=7))
    return "the new run wrote over the old one's folder"


@case(G, "resume latest with the same settings, 3 steps")
def resume_same(ctx):
    run = copy_run(ctx)
    ctx.protect(run / "checkpoint-00000002")
    ctx.protect(run / "history.jsonl")
    train(tcfg(run, resume="latest", max_train_steps=3))
    return run_problems(run, 3)


@case(G, "resume latest with another --learning-rate", error="learning_rate")
def resume_other_lr(ctx):
    run = copy_run(ctx)
    for p in ("checkpoint-00000001", "checkpoint-00000002", "history.jsonl"):
        ctx.protect(run / p)
    train(tcfg(run, resume="latest", max_train_steps=3, learning_rate=2e-3))
    lrs = [json.loads(line).get("lr") for line in (run / "history.jsonl").read_text().splitlines()]
    return f"resumed; learning rates in history {lrs}, the checkpoint's kept without a word"


@case(G, "resume latest with another --rank", error="rank")
def resume_other_rank(ctx):
    run = copy_run(ctx)
    for p in ("checkpoint-00000001", "checkpoint-00000002", "history.jsonl"):
        ctx.protect(run / p)
    train(tcfg(run, resume="latest", max_train_steps=3, rank=4))



for _steps in (1, 2):
    def _max_steps_case(steps, ctx):
        run = copy_run(ctx)
        for p in ("checkpoint-00000001", "checkpoint-00000002", "history.jsonl"):
            ctx.protect(run / p)
        result = train(tcfg(run, resume="latest", max_train_steps=steps))
        return f"'trained' to step {result.global_step} from the checkpoint of step 2"
    case(G, f"resume latest (step 2) with --max-train-steps {_steps}", error="--max-train-steps",
         name=f"max_steps_{'below' if _steps == 1 else 'equal'}")(functools.partial(_max_steps_case, _steps))


@case(G, "resume from checkpoint 1 while checkpoint 2 exists", error="checkpoint-00000002")
def resume_older(ctx):
    run = copy_run(ctx)
    for p in ("checkpoint-00000001", "checkpoint-00000002", "history.jsonl"):
        ctx.protect(run / p)
    train(tcfg(run, resume=str(run / "checkpoint-00000001"), max_train_steps=3))
    return f"two runs mixed in one folder (history steps {history_steps(run)})"


@case(G, "resume after a step that was never checkpointed (and a record cut short)")
def resume_history_cut_back(ctx):
    run = copy_run(ctx)
    (run / "checkpoint-00000002").rename(run / "checkpoint-00000002.tmp")  # as if a crash hit its write
    with open(run / "history.jsonl", "a") as f:
        f.write('{"step": 3, "mse": 0.5')
    ctx.protect(run / "checkpoint-00000001")
    train(tcfg(run, resume="latest", max_train_steps=3))
    steps = history_steps(run)
    return None if steps == [1, 2, 3] else f"history.jsonl steps {steps}, expected [1, 2, 3]"


@case(G, "resume from a checkpoint path that does not exist", error="checkpoint-00000099")
def resume_missing(ctx):
    run = copy_run(ctx)
    ctx.protect(run)
    train(tcfg(run, resume=str(run / "checkpoint-00000099"), max_train_steps=3))


@case(G, "resume from a checkpoint whose state file is cut short", error="checkpoint-00000001")
def resume_damaged(ctx):
    run = copy_run(ctx)
    state = run / "checkpoint-00000002" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:200])
    ctx.protect(run / "checkpoint-00000001")
    train(tcfg(run, resume=str(run / "checkpoint-00000002"), max_train_steps=3))


@case(G, "--resolution 32 on a pixel world of 16x16", error="--resolution")
def resolution_mismatch(ctx):
    out = ctx.tmp / "run"
    train(tcfg(out, resolution=32))
    return "trained at 32x32 on a world of 16x16 images"


@case(G, "--data folder that does not exist", error="no-such-data")
def data_missing(ctx):
    train(tcfg(ctx.tmp / "run", data=str(ctx.tmp / "no-such-data")))


@case(G, "--captions names a file that does not exist", error="no-such-captions.jsonl")
def captions_missing(ctx):
    train(tcfg(ctx.tmp / "run", captions=str(ctx.tmp / "no-such-captions.jsonl")))


@case(G, "one image for a batch of 2", error="batch")
def too_few_images(ctx):
    data = ctx.tmp / "data"
    data.mkdir()
    png(data / "a.png", (16, 16), (10, 20, 30), "RGB")
    captions(data, [{"file_name": "a.png", "text": "a"}])
    train(tcfg(ctx.tmp / "run", data=str(data)))


@case(G, "--data whose caption file is Latin-1", error="metadata.jsonl:1")
def data_latin1(ctx):
    data = ctx.tmp / "data"
    data.mkdir()
    for n in ("a.png", "b.png"):
        png(data / n, (16, 16), (10, 20, 30), "RGB")
    text = '{"file_name": "a.png", "text": "caf\u00e9"}\n{"file_name": "b.png", "text": "b"}\n'
    (data / "metadata.jsonl").write_bytes(text.encode("latin-1"))
    train(tcfg(ctx.tmp / "run", data=str(data)))
    return "trained on mis-decoded captions"


# -- faults while training


@case(G, "LoRA weights turn NaN at step 3 of 4 (the loss is still finite)", error="not finite")
def nan_weights(ctx):
    from smoothlib.checkpoint import latest_checkpoint, list_checkpoints
    real = torch.optim.AdamW

    class Poisoned(real):
        steps = 0

        def step(self, closure=None):
            loss = super().step(closure)
            Poisoned.steps += 1
            if Poisoned.steps == 3:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
            return loss

    run = ctx.tmp / "run"
    torch.optim.AdamW = Poisoned
    try:
        train(tcfg(run, max_train_steps=4))
        err = None
    except Exception as e:  # noqa: BLE001 - classified after the checks below
        err = e
    finally:
        torch.optim.AdamW = real
    written = [p.name for p in list_checkpoints(run) if nonfinite(p / "state.safetensors")]
    if written:
        latest = latest_checkpoint(run)
        return (f"checkpoint(s) holding NaN written: {', '.join(written)}"
                + (f"; --resume latest would pick {latest.name}" if latest and latest.name in written else ""))
    if err is not None:
        raise err
    return "the run finished with NaN weights"


_STAGES = {  # what breaks during the 3rd checkpoint write, the checkpoint that must be latest after it
    "state_cut_short": ("save_file", 2),
    "before_rename": ("os.replace", 2),
    "while_pruning": ("shutil.rmtree", 3),
}


def _fault_case(stage, ctx):
    import smoothlib.checkpoint as ck
    import smoothlib.train as tr
    from safetensors.torch import load_file
    target, newest = _STAGES[stage]
    module, name = {"save_file": (ck, "save_file"), "os.replace": (ck.os, "replace"),
                    "shutil.rmtree": (ck.shutil, "rmtree")}[target]
    real_fn, real_save = getattr(module, name), tr.save_checkpoint

    def broken(path, *args, **kwargs):
        if target == "save_file":  # path is the tensors here; args[0] the file
            real_fn(path, *args, **kwargs)
            Path(args[0]).write_bytes(Path(args[0]).read_bytes()[:100])
            raise OSError(28, "No space left on device")
        if (target == "os.replace") == str(path).endswith(".tmp"):
            raise OSError(5, "Input/output error")
        return real_fn(path, *args, **kwargs)

    calls = [0]

    def third_fails(*args, **kwargs):
        calls[0] += 1
        setattr(module, name, broken if calls[0] == 3 else real_fn)
        try:
            return real_save(*args, **kwargs)
        finally:
            setattr(module, name, real_fn)

    ref = reference_run()
    run = ctx.tmp / "run"
    settings = dict(max_train_steps=4, checkpoints_total_limit=2)
    tr.save_checkpoint = third_fails
    try:
        train(tcfg(run, **settings))
        return "the injected fault did not stop the run"
    except OSError:
        pass
    finally:
        tr.save_checkpoint = real_save
        setattr(module, name, real_fn)
    broken_ones = [p.name for p in ck.list_checkpoints(run) if not intact(p)]
    if broken_ones:
        return Lost(f"damaged checkpoint(s) listed as complete: {', '.join(broken_ones)}")
    latest = ck.latest_checkpoint(run)
    if latest is None or latest.name != f"checkpoint-{newest:08d}":
        return Lost(f"latest checkpoint after the fault is {latest and latest.name}, expected "
                    f"checkpoint-{newest:08d}")
    train(tcfg(run, resume="latest", **settings))
    diffs = []
    for rel in ("checkpoint-00000004/state.safetensors", "final/pytorch_lora_weights.safetensors"):
        got, want = load_file(str(run / rel)), load_file(str(ref / rel))
        diffs += [f"{rel.split('/')[0]}:{k}" for k in want if k not in got or not torch.equal(got[k], want[k])]
    if diffs:
        return f"the resumed run differs from an uninterrupted one in {len(diffs)} tensor(s), e.g. {diffs[0]}"
    steps = history_steps(run)
    return None if steps == [1, 2, 3, 4] else f"history.jsonl steps {steps}, expected [1, 2, 3, 4]"


for _stage in _STAGES:
    case(G, f"crash during the 3rd checkpoint write ({_stage.replace('_', ' ')}), then resume: nothing lost, "
            "bit-identical to an uninterrupted run", name=f"fault_{_stage}")(functools.partial(_fault_case, _stage))


# =========================================================================== the worker


def worker(root: Path, fd: int, limits: dict) -> None:
    """Run the case ids read from stdin; report events as JSON lines on ``fd``."""
    channel = os.fdopen(fd, "w", buffering=1)

    def send(**event):
        channel.write(json.dumps(event) + "\n")
        channel.flush()

    os.chdir(root)
    _setup(root)
    send(event="hello", smoothlib=os.path.abspath(sl.__file__), torch=torch.__version__)
    by_id = {c.id: c for c in CASES}
    for cid in json.loads(sys.stdin.read()):
        c = by_id[cid]
        limit = limits["quick"] if c.quick else limits["timeout"]
        send(event="start", id=cid, limit=limit)
        ctx = Ctx(root / "cases" / f"c{CASES.index(c):03d}")  # a name that no keyword can match
        box = {}

        def target(c=c, ctx=ctx, box=box):
            try:
                box["value"] = c.fn(ctx)
            except BaseException as e:  # noqa: BLE001 - every exception is an outcome
                box["error"] = e

        start = time.perf_counter()
        thread = threading.Thread(target=target, name=cid, daemon=True)
        thread.start()
        thread.join(limit)
        seconds = time.perf_counter() - start
        if thread.is_alive():
            outcome, reason = "hang", f"no result after {limit:g} s (abandoned)"
        else:
            try:
                outcome, reason = classify(c, ctx, box.get("value"), box.get("error"))
            except Exception as e:  # noqa: BLE001 - a check that cannot run is reported, not fatal
                outcome, reason = "raw traceback", f"the outcome could not be checked: {type(e).__name__}: {e}"
        send(event="result", id=cid, outcome=outcome, reason=reason, seconds=round(seconds, 2))
    channel.close()
    os._exit(0)  # threads left blocked (on a FIFO, say) are not waited for


# =========================================================================== the parent


class Runner:
    """Starts workers, enforces a backstop deadline on each case, restarts after a hang or a crash."""

    def __init__(self, root: Path, limits: dict):
        self.root, self.limits, self.smoothlib, self.logs = root, limits, None, []

    def run(self, ids: list[str]):
        pending = list(ids)
        while pending:
            progressed = False
            for result in self._one_worker(pending):
                progressed = True
                pending.remove(result["id"])
                yield result
            if not progressed:
                tail = self.logs[-1].read_text(errors="replace")[-3000:] if self.logs else ""
                raise SystemExit(f"the worker did not start; its output:\n{tail}")

    def _one_worker(self, ids):
        log = self.root / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log)
        rfd, wfd = os.pipe()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(self.root), str(wfd),
                                     json.dumps(self.limits)], stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT, pass_fds=(wfd,), start_new_session=True)
        os.close(wfd)
        proc.stdin.write(json.dumps(ids).encode())
        proc.stdin.close()
        buffer, current, deadline = b"", None, time.monotonic() + 300 + self.limits["timeout"]  # start-up
        try:
            while True:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    if current is None:
                        return
                    yield dict(id=current, outcome="hang", seconds=None,
                               reason="the worker gave no result within the limit and was killed")
                    return
                ready, _, _ = select.select([rfd], [], [], min(wait, 5.0))
                if not ready:
                    continue
                chunk = os.read(rfd, 65536)
                if not chunk:  # the worker exited
                    proc.wait()
                    if current is not None:
                        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                        yield dict(id=current, outcome="raw traceback", seconds=None,
                                   reason=f"the worker died (exit code {proc.returncode}): {tail[-300:]}")
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    event = json.loads(line)
                    if event["event"] == "hello":
                        if self.smoothlib is None:
                            self.smoothlib = event["smoothlib"]
                            print(f"smoothlib: {event['smoothlib']} (torch {event['torch']})", flush=True)
                        deadline = time.monotonic() + 300
                    elif event["event"] == "start":
                        current, deadline = event["id"], time.monotonic() + event["limit"] + 60
                    elif event["event"] == "result":
                        current = None
                        deadline = time.monotonic() + 300
                        yield {k: v for k, v in event.items() if k != "event"}
        finally:
            os.close(rfd)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def report(cases: list[Case], results: dict, seconds: float, smoothlib_file: str | None) -> None:
    counts = {k: 0 for k in CLASSES}
    for r in results.values():
        counts[r["outcome"]] += 1
    print(f"\n{'outcome':<15}{'cases':>6}")
    for k in CLASSES:
        print(f"{k:<15}{counts[k]:>6}")
    print(f"{'total':<15}{len(results):>6}   ({seconds:.0f} s; smoothlib {smoothlib_file})")
    groups = list(dict.fromkeys(c.group for c in cases))
    print()
    for g in groups:
        per = {}
        for c in cases:
            if c.group == g and c.id in results:
                per[results[c.id]["outcome"]] = per.get(results[c.id]["outcome"], 0) + 1
        print(f"  {g:<15} " + ", ".join(f"{k} {per[k]}" for k in CLASSES if k in per))
    bad = [c for c in cases if c.id in results and results[c.id]["outcome"] not in GOOD]
    print(f"\nneither a clear error nor accepted: {len(bad)}")
    for c in bad:
        r = results[c.id]
        print(f"  [{r['outcome']}] {c.id}: {c.what} -- expected {c.expects()}; {r['reason']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a model or trainer case may take before it counts as a hang (default 60)")
    parser.add_argument("--quick-timeout", type=float, default=10.0,
                        help="the same for cases that only read a file, array or tensor (default 10)")
    parser.add_argument("--json", help="write every case's result to this file")
    parser.add_argument("--only", help="run only the cases whose id contains this text")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or args.only in c.id]
    if args.list:
        for c in cases:
            print(f"{c.id:<45} {c.what} -- expected {c.expects()}")
        print(f"{len(cases)} cases")
        return 0
    limits = {"timeout": args.timeout, "quick": min(args.quick_timeout, args.timeout)}
    root = Path(tempfile.mkdtemp(prefix="smoothlib-bad-inputs-"))
    start, results = time.perf_counter(), {}
    runner = Runner(root, limits)
    try:
        for n, r in enumerate(runner.run([c.id for c in cases]), 1):
            results[r["id"]] = r
            took = f"{r['seconds']:.1f} s" if r.get("seconds") is not None else "-"
            print(f"  [{n}/{len(cases)}] {r['outcome']:<14} {r['id']} ({took})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - start
    report(cases, results, seconds, runner.smoothlib)
    if args.json:
        rows = [dict(id=c.id, group=c.group, input=c.what, expected=c.expects(),
                     **{k: v for k, v in results[c.id].items() if k != "id"}) for c in cases if c.id in results]
        Path(args.json).write_text(json.dumps({
            "smoothlib": runner.smoothlib, "python": sys.version.split()[0], "seconds": round(seconds, 1),
            "counts": {k: sum(r["outcome"] == k for r in results.values()) for k in CLASSES},
            "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
    else:
        sys.exit(main())
