"""Training checkpoints that are complete, verifiable and written atomically.

A checkpoint is a folder ``checkpoint-<step>`` holding

* ``state.safetensors``: every tensor (trainable weights, optimizer moments,
  the regularizer's running mean, RNG states), safetensors only, never pickle;
* ``meta.json``: everything else (step, optimizer hyper-parameters, learning
  rate schedule, config) and the SHA-256 of ``state.safetensors``.

Recipe for a write that a crash cannot half-finish:
1. write both files into ``checkpoint-<step>.tmp``, flush and fsync them;
2. rename the folder to ``checkpoint-<step>`` (atomic on POSIX file systems);
3. only then delete the oldest checkpoints beyond ``keep`` (never the new one,
   never one of a later step).
A run killed at any point leaves every earlier checkpoint intact, and a file
cut short later (disk full, copy interrupted) fails the checksum on load.
The caller checks that the tensors are finite before calling (the trainer does).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE, META = "state.safetensors", "meta.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(output_dir: str | Path, step: int, tensors: dict[str, torch.Tensor],
                    meta: dict, keep: int | None = None) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically; keep it and the ``keep - 1`` newest earlier ones (None: all).

    Checkpoints of a later step than ``step`` are never deleted. ``keep`` must be None or >= 1.
    """
    if keep is not None and not (isinstance(keep, int) and keep >= 1):
        raise ValueError(f"keep must be None or an integer >= 1, got {keep!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step:08d}"
    tmp = output_dir / f"checkpoint-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, tmp / STATE)
    _fsync(tmp / STATE)
    meta = dict(meta, step=step, sha256=_sha256(tmp / STATE))
    (tmp / META).write_text(json.dumps(meta, indent=1))
    _fsync(tmp / META)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep is not None:
        earlier = [p for p in list_checkpoints(output_dir) if checkpoint_step(p) < step]
        for old in earlier[:max(len(earlier) - (keep - 1), 0)]:
            shutil.rmtree(old)
    return final


def checkpoint_step(path: str | Path) -> int:
    """The step in a checkpoint folder's name (``checkpoint-00000042`` -> 42)."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path} is not named checkpoint-<step>")
    return int(match.group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (``.tmp`` leftovers are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=checkpoint_step)


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete, undamaged checkpoint."""
    path = Path(path)
    if not (path / META).is_file() or not (path / STATE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (needs {STATE} and {META})")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / META} is damaged: {e}") from e
    if _sha256(path / STATE) != meta.get("sha256"):
        raise CheckpointError(f"{path / STATE} does not match the checksum recorded when it was "
                              "written: the file was cut short or changed")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Verify and read a checkpoint: (tensors, meta).

    A damaged checkpoint raises :class:`CheckpointError` naming the newest
    earlier checkpoint that is intact, so the user knows where to resume.
    """
    path = Path(path)
    try:
        verify_checkpoint(path)
    except CheckpointError as e:
        earlier = [p for p in list_checkpoints(path.parent) if p != path and is_intact(p)]
        hint = (f"; the newest intact checkpoint is {earlier[-1]}: resume from it"
                if earlier else "; no intact checkpoint is left in that folder")
        raise CheckpointError(f"cannot resume from {path}: {e}{hint}") from e
    meta = json.loads((path / META).read_text())
    return load_file(path / STATE, device=map_location), meta


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest intact checkpoint in ``output_dir``, or None."""
    good = [p for p in list_checkpoints(output_dir) if is_intact(p)]
    return good[-1] if good else None


def is_intact(path: str | Path) -> bool:
    """Whether ``path`` is a complete, undamaged checkpoint (see :func:`verify_checkpoint`)."""
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


# -- optimizer state <-> (tensors, JSON) ----------------------------------------------------------

def flatten_optimizer(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, rest: dict,
                        prefix: str = "optimizer") -> None:
    """Inverse of :func:`flatten_optimizer`: load the state into ``optimizer``."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in rest["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
