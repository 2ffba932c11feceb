"""The models an evaluation compares: the base, an optional control and named LoRAs, each one source.

A model is a :class:`ModelSpec` (a label, a role and a source). Sources are checked before
anything is measured, and a bad one is an :class:`EvalInputError` naming the flag:

- ``None``: the world's base model (no LoRA);
- a ``.safetensors`` file, or a folder holding one (what :func:`smoothlib.lora.load_smooth_lora` reads);
- on the toy world, a shipped LoRA by name ("smooth", "control", "smooth-s0", ...);
- a Hub repository id ("owner/name"), read through the Hub cache when it is there.

:func:`fingerprint` names a source's content (the SHA-256 of its weight files, or the repo id),
so cached scores follow the weights, not the label they were given.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..hub import looks_like_repo_id
from ..lora import remove_lora


class EvalInputError(ValueError):
    """A bad command-line input; the message names the flag."""


@dataclass(frozen=True)
class ModelSpec:
    """One compared model: ``role`` "base", "control" or "lora"; ``source`` None for the base."""
    label: str
    role: str
    source: str | None = None
    flag: str = ""
    """The flag the model came from ("--lora", "--control"), for error messages."""


def parse_lora(text: str) -> tuple[str, str]:
    """``NAME=SOURCE`` -> (name, source); a bare SOURCE is named after it."""
    name, sep, source = text.partition("=")
    if not sep:
        name, source = Path(text).name or text, text
    if not name or not source:
        raise EvalInputError(f"--lora {text!r}: write NAME=SOURCE (for example smooth=runs/smooth/)")
    return name, source


def model_specs(loras: list[str], control: str | None) -> list[ModelSpec]:
    """The base, then the control (when given), then each ``--lora NAME=SOURCE`` in order; labels unique."""
    specs = [ModelSpec("base", "base")]
    if control is not None:
        specs.append(ModelSpec("control", "control", control, "--control"))
    for text in loras:
        name, source = parse_lora(text)
        specs.append(ModelSpec(name, "lora", source, "--lora"))
    labels = [s.label for s in specs]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise EvalInputError(f"--lora: the model names {repeated} are used twice ('base' and 'control' are taken)")
    return specs


def resolve_source(world, spec: ModelSpec) -> str | None:
    """The source to load (a shipped toy name becomes its file); an unknown one raises naming the flag."""
    if spec.source is None:
        return None
    if world.name == "toy":
        from ..toy.assets import is_shipped_lora, lora_path

        if is_shipped_lora(spec.source):
            return str(lora_path(spec.source))
    path = Path(spec.source).expanduser()
    if path.is_file() or (path.is_dir() and any(path.glob("*.safetensors"))):
        return str(path)
    if path.is_dir():
        raise EvalInputError(f"{spec.flag} {spec.label}={spec.source}: the folder holds no .safetensors file")
    if looks_like_repo_id(spec.source):
        return spec.source
    shipped = ""
    if world.name == "toy":
        from ..toy.assets import toy_lora_dir

        shipped = f"; the toy world ships {sorted(p.name for p in toy_lora_dir().iterdir() if p.is_dir())}"
    raise EvalInputError(f"{spec.flag} {spec.label}={spec.source}: no LoRA file or folder there, and it is not "
                         f"a Hub repo id (owner/name){shipped}")


def fingerprint(source: str | None) -> str:
    """"base", the SHA-256 of a local source's weight files, or "hub:<repo id>"."""
    if source is None:
        return "base"
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return f"hub:{source}"
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


@contextmanager
def model_applied(world, spec: ModelSpec, source: str | None):
    """The world's UNet with ``spec``'s LoRA applied for the block (the base: nothing), removed after."""
    if source is None:
        yield world
        return
    try:
        world.load_smooth_lora(source)
    except Exception as err:  # a Hub miss, a wrong format, a LoRA for another UNet
        raise EvalInputError(f"{spec.flag} {spec.label}={spec.source}: cannot be loaded: {err}") from err
    try:
        yield world
    finally:
        remove_lora(world.unet)
