"""Where the toy world's shipped files live: weights, LoRAs, held-out digits, and what to do when one is missing."""
from __future__ import annotations

from pathlib import Path

TOY_SMOOTH_LORA = "smooth-fd-tb10-rel-lam0.3-8000steps-s0"
"""The toy world's default Smooth LoRA (a folder of ``data/toy_lora/``): lambda = 0.3, 8,000 steps, seed 0, one
running mean per 100 timesteps, the relative penalty and the first-order estimator of r; it lowers ISTD by more
than 40 % at the quality of its control (docs/toy_world.md). The release's formula (``smooth-s0``) damages
this model."""
TOY_CONTROL_LORA = "control-8000steps-s0"
"""Its control: the same LoRA recipe, length and seed with lambda = 0."""

LORA_FILE = "pytorch_lora_weights.safetensors"
"""The weight file inside each folder of ``data/toy_lora/``."""


def data_dir() -> Path:
    """The folder that holds the shipped weights: ``$SMOOTHLIB_DATA``, else the installed package's
    ``smoothlib/shipped/`` (a plain ``pip install`` copies the repository's ``data/`` there), else
    ``data/`` of the checkout (an editable install)."""
    import os

    if os.environ.get("SMOOTHLIB_DATA"):
        return Path(os.environ["SMOOTHLIB_DATA"])
    package = Path(__file__).resolve().parents[1]   # smoothlib/
    installed = package / "shipped"
    return installed if installed.is_dir() else package.parent / "data"


def toy_model_dir() -> Path:
    """The toy base model's folder: ``data/toy/`` (unet, text_encoder, tokenizer, scheduler)."""
    return data_dir() / "toy"


def classifier_file() -> Path:
    """The digit classifier's weights: ``data/classifier/model.safetensors``."""
    return data_dir() / "classifier" / "model.safetensors"


def heldout_digits_file() -> Path:
    """The 500 held-out digits: ``data/toy_heldout_digits.safetensors``."""
    return data_dir() / "toy_heldout_digits.safetensors"


def toy_lora_dir() -> Path:
    """The folder of the shipped toy LoRAs: ``data/toy_lora/``."""
    return data_dir() / "toy_lora"


def repository_url() -> str:
    """The repository's address, as the installed package's metadata gives it (pyproject.toml's [project.urls])."""
    from importlib import metadata

    try:
        urls = metadata.metadata("smoothlib").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    found = [u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("repository,")]
    return found[0] if found else "the smoothlib repository"


def rebuild_hint() -> str:
    """What to do when a shipped file is missing: the install brings them; a clone can rebuild them."""
    return (f"reinstall smoothlib (pip install --force-reinstall 'smoothlib @ git+{repository_url()}'), "
            "or in a clone of the repository rebuild it with `python scripts/make_toy_world.py`")


def lora_path(name: str = "smooth") -> Path:
    """A LoRA shipped with the toy world: "smooth" (:data:`TOY_SMOOTH_LORA`), "control" (:data:`TOY_CONTROL_LORA`),
    or a folder name under ``data/toy_lora/`` ("smooth-s0", "control-s1", ...)."""
    folder = {"smooth": TOY_SMOOTH_LORA, "control": TOY_CONTROL_LORA}.get(name, name)
    path = toy_lora_dir() / folder / LORA_FILE
    if not path.exists():
        shipped = sorted(p.name for p in toy_lora_dir().glob("*") if p.is_dir())
        raise FileNotFoundError(f"no toy LoRA {name!r} at {path}; shipped: {shipped or 'none'} "
                                "(rebuild with `python scripts/make_toy_lora.py`)")
    return path


def is_shipped_lora(name: str) -> bool:
    """Whether ``name`` is "smooth", "control" or a folder of ``data/toy_lora/``."""
    return name in ("smooth", "control") or (toy_lora_dir() / name).is_dir()
