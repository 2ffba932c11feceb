"""The run's folder: what a run may write where, without losing another run's files.

Rules (the trainer applies them before anything is built or written):
- ``--output-dir`` must be a folder (or not exist yet), not a file or under one;
- a fresh run refuses a folder holding another run (checkpoints, ``history.jsonl``,
  ``final/``, ``validation/``); a resume refuses one holding intact checkpoints newer
  than the one it resumes; ``--overwrite-output-dir`` moves them into
  ``replaced-<date>-<time>/`` instead, never deleting;
- ``history.jsonl`` is cut back to the resumed step, so that no step appears twice.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from .checkpoint import checkpoint_step, is_intact, latest_checkpoint, list_checkpoints
from .config import ConfigError, TrainConfig


RUN_ENTRY = re.compile(r"^(checkpoint-\d+(\.tmp)?|history\.jsonl|final|validation|logs)$")


def check_output_path(cfg: TrainConfig) -> None:
    """Refuse an output_dir that is a file, or lies under one."""
    for p in (Path(cfg.output_dir), *Path(cfg.output_dir).parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--output-dir {cfg.output_dir}: {p} is a file, not a folder; "
                                  "choose another --output-dir")
            return


def in_the_way(cfg: TrainConfig, resume_from: Path | None, resume_step: int) -> list[Path]:
    """What of another run lies in output_dir: raise ConfigError, or with ``overwrite_output_dir`` return it.

    A fresh run (or a resume from another folder) needs an output_dir without checkpoints,
    ``history.jsonl`` records, ``final/`` or ``validation/``. A resume from a checkpoint of
    output_dir needs it to hold no intact checkpoint of a later step; with the flag, those are
    returned with ``final/``, ``validation/`` and ``history.jsonl`` (which the resume cuts back).
    :func:`move_aside` then moves them away, once nothing can fail before the run writes.
    """
    out = Path(cfg.output_dir)
    if not out.is_dir():
        return []
    if resume_from is not None and resume_from.resolve().parent == out.resolve():
        found = [p for p in list_checkpoints(out) if checkpoint_step(p) > resume_step and is_intact(p)]
        what = f"intact checkpoints newer than {resume_from.name}, which this resume would mix with its own"
        hint = "resume from the newest one (--resume latest), or pass --overwrite-output-dir to move the newer ones"
        extra = [p for p in (out / "final", out / "validation", out / "history.jsonl") if found and p.exists()]
    else:
        entries = sorted(p for p in out.iterdir() if RUN_ENTRY.match(p.name))
        found = [p for p in entries if p.name != "logs" and not (p.name == "history.jsonl" and p.stat().st_size == 0)]
        what = "another run"
        hint = ("resume it with --resume latest, " if cfg.resume is None and latest_checkpoint(out) else "") + \
            "choose another --output-dir, or pass --overwrite-output-dir to move that run"
        extra = [p for p in entries if found and p not in found]
    if found and not cfg.overwrite_output_dir:
        raise ConfigError(f"--output-dir {out} holds {what} ({', '.join(p.name for p in found)}): {hint} into "
                          f"{out}/replaced-<date>-<time>/ (nothing is deleted)")
    return found + extra


def move_aside(accelerator, paths: list[Path], resumed: bool) -> None:
    """Move ``paths`` (from :func:`in_the_way`) into a new ``replaced-<date>-<time>/`` next to them.

    When ``resumed``, ``history.jsonl`` is copied instead: the resumed run keeps its earlier records.
    """
    if paths and accelerator.is_main_process:
        out, stamp = paths[0].parent, time.strftime("%Y%m%d-%H%M%S")
        aside, n = out / f"replaced-{stamp}", 1
        while aside.exists():
            aside, n = out / f"replaced-{stamp}-{n}", n + 1
        aside.mkdir()
        done = []
        for p in paths:
            if resumed and p.name == "history.jsonl":
                shutil.copy2(p, aside / p.name)
                done.append(f"{p.name} (a copy)")
            else:
                p.rename(aside / p.name)
                done.append(p.name)
        accelerator.print(f"--overwrite-output-dir: moved {', '.join(done)} into {aside}; nothing was deleted")
    accelerator.wait_for_everyone()


def start_history(history_file: Path, step: int, accelerator) -> None:
    """Start ``history.jsonl`` empty (step 0), or cut it back to ``step`` so no step is recorded twice."""
    history_file.parent.mkdir(parents=True, exist_ok=True)
    if step == 0 or not history_file.exists():
        history_file.write_text("")
        return
    kept, dropped = [], 0
    for line in history_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
        elif line.strip():
            dropped += 1
    if dropped:
        tmp = history_file.with_name(history_file.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, history_file)
        accelerator.print(f"{history_file}: dropped {dropped} record(s) after step {step}, which this run redoes")


def resume_point(cfg) -> str:
    latest = latest_checkpoint(cfg.output_dir)
    return (f"the newest checkpoint, {latest}, is where --resume latest continues" if latest
            else "no checkpoint was written before it: start again with --overwrite-output-dir (which moves "
                 "this run's files aside) or another --output-dir")
