"""Reading and writing LoRA files: find the file, read it (safetensors only), check it against the UNet, inject it.

:func:`load_smooth_lora` applies a file of any format of :mod:`smoothlib.lora.formats`
as a named peft adapter, or raises :class:`LoraLoadError` and leaves the UNet untouched;
:func:`save_lora` writes an adapter for diffusers, for AUTOMATIC1111/ComfyUI (kohya keys)
or in the release's format.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..hub import PICKLE_SUFFIXES, hub_errors, looks_like_repo_id, pickle_refusal
from .adapter import (ADAPTER, ATTENTION_PROJECTIONS, _base, _require_adapter, _undo_on_error, attach_lora,
                      attention_projections, lora_parameters, set_lora_strength)
from .formats import LoraLoadError, _Pair, parse, to_kohya, to_release

logger = logging.getLogger(__name__)

SMOOTH_LORA_REPO = "shi-labs/smooth-diffusion-lora"
"""The released Smooth LoRA for SD 1.5 (Guo et al. 2024)."""
SMOOTH_LORA_FILE = "smooth_lora.safetensors"
"""The release's file name in its repository, and the name of a LoRA saved in the release's format."""
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name, read from other repositories and folders, and written by :func:`save_lora`."""
KOHYA_LORA_FILE = "smooth_lora_kohya.safetensors"
"""The name of a LoRA saved with kohya/webui keys."""
LORA_FORMATS = {"diffusers": DIFFUSERS_LORA_FILE, "kohya": KOHYA_LORA_FILE, "release": SMOOTH_LORA_FILE}
"""The formats :func:`save_lora` writes, each with its default file name."""
ADAPTER_METADATA_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern")
"""The ``LoraConfig`` fields a diffusers file's adapter metadata holds: what diffusers needs to rebuild
the adapter (``LoraConfig(**metadata)``), and nothing a newer peft added that an older one would refuse."""
ADAPTER_METADATA_FLAGS = ("use_dora", "use_rslora", "lora_bias")
"""Fields that change the computation, written only when set (an older peft knows them all)."""
_CONVERT_LORA = "safetensors.torch.save_file(torch.load(path, weights_only=True), 'lora.safetensors')"


@dataclass(frozen=True)
class LoraReport:
    """What :func:`load_smooth_lora` applied: one entry per LoRA'd layer, two tensors each."""
    source: str
    format: str
    adapter_name: str
    layers: int
    tensors: int
    parameters: int
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]

    def __str__(self) -> str:
        return (f"LoRA {self.adapter_name!r} from {self.source} ({self.format} format): "
                f"{self.tensors} tensors on {self.layers} layers, {self.parameters:,} parameters, "
                f"rank {'/'.join(map(str, self.ranks))}, alpha {'/'.join(f'{a:g}' for a in self.alphas)}")


# --------------------------------------------------------------------------- loading


def load_smooth_lora(unet, source: str | Path | None = None, *, weight_name: str | None = None,
                     revision: str | None = None, adapter_name: str = ADAPTER, strength: float = 1.0,
                     strict: bool = True, trainable: bool = False, token=None, cache_dir=None,
                     local_files_only: bool = False) -> LoraReport:
    """Apply a (Smooth) LoRA to ``unet`` as the peft adapter ``adapter_name``; return what was applied.

    ``source``: a ``.safetensors`` file, a folder holding one, or a Hub repo id
    (default: the release, ``shi-labs/smooth-diffusion-lora`` / ``smooth_lora.safetensors``;
    ``revision`` pins it). Pickle files are refused.

    The file must hold, for each adapted Linear layer [out, in], a down (A) tensor [r, in]
    and an up (B) tensor [out, r] in one of the formats of :mod:`smoothlib.lora.formats`, optionally
    an alpha per layer, every value finite (a NaN or inf anywhere refuses the file, naming
    the tensor). Recipe:

    1. find the file and read it (safetensors only); check every tensor is finite;
    2. convert its keys to peft's (``<layer>.lora_A/B.weight``), with an alpha per layer
       (metadata or kohya ``.alpha``; else alpha = rank, the release's scale 1);
    3. check every tensor against the UNet; with ``strict`` (default) every attention
       projection must be covered. Any problem raises :class:`LoraLoadError` and
       leaves the UNet untouched;
    4. inject the adapter and copy every tensor in (undone on any error);
    5. set ``strength``; LoRA tensors are frozen unless ``trainable``.
    """
    if adapter_name in getattr(unet, "peft_config", {}):
        raise LoraLoadError(f"the UNet already has an adapter named {adapter_name!r}; remove it with "
                            f"unet.delete_adapters({adapter_name!r}) or pass another adapter_name")
    path = _resolve_source(source, weight_name, revision, token, cache_dir, local_files_only)
    state_dict, metadata = _read_safetensors(path)
    fmt, pairs, unexpected = parse(state_dict, metadata, unet)
    _check(unet, pairs, unexpected, strict, f"{path} ({fmt} format)")
    _inject(unet, pairs, adapter_name)
    if strength != 1.0:
        set_lora_strength(unet, strength, adapter_name)
    for p in lora_parameters(unet, adapter_name):
        p.requires_grad_(trainable)
    ranks, alphas = Counter(p.down.shape[0] for p in pairs.values()), Counter(p.alpha for p in pairs.values())
    report = LoraReport(source=str(path), format=fmt, adapter_name=adapter_name, layers=len(pairs),
                        tensors=2 * len(pairs),
                        parameters=sum(p.down.numel() + p.up.numel() for p in pairs.values()),
                        ranks=tuple(sorted(ranks)), alphas=tuple(sorted(alphas)))
    logger.info("%s", report)
    return report


def _resolve_source(source, weight_name, revision, token, cache_dir, local_files_only) -> Path:
    source = SMOOTH_LORA_REPO if source is None else source
    path = Path(source).expanduser()
    if path.exists() and revision is not None:
        raise ValueError(f"revision={revision!r} applies to Hub repositories, but {source!r} is local")
    if path.is_file():
        return path
    if path.is_dir():
        return _pick_file(path, weight_name)
    if looks_like_repo_id(str(source)):
        from huggingface_hub import hf_hub_download
        filename = weight_name or (SMOOTH_LORA_FILE if source == SMOOTH_LORA_REPO else DIFFUSERS_LORA_FILE)
        with hub_errors(f"the LoRA file {filename!r}", str(source), revision):
            return Path(hf_hub_download(str(source), filename, revision=revision, token=token,
                                        cache_dir=cache_dir, local_files_only=local_files_only))
    raise LoraLoadError(f"no LoRA file or folder at {str(source)!r}, and it is not a Hub repo id "
                        "('owner/name'); check the path")


def _pick_file(folder: Path, weight_name: str | None) -> Path:
    if weight_name:
        if not (folder / weight_name).is_file():
            raise LoraLoadError(f"{folder} has no file {weight_name!r}")
        return folder / weight_name
    files = sorted(folder.glob("*.safetensors"))
    for preferred in (DIFFUSERS_LORA_FILE, SMOOTH_LORA_FILE):
        if folder / preferred in files:
            return folder / preferred
    if len(files) == 1:
        return files[0]
    if files:
        raise LoraLoadError(f"{folder} holds several .safetensors files ({', '.join(f.name for f in files)}); "
                            "pass weight_name=... to pick one")
    if any(f.suffix in PICKLE_SUFFIXES for f in folder.iterdir()):
        raise LoraLoadError(pickle_refusal(folder, "LoRA weights", _CONVERT_LORA))
    raise LoraLoadError(f"{folder} holds no .safetensors file")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if path.suffix in PICKLE_SUFFIXES:
        raise LoraLoadError(pickle_refusal(path, "LoRA weights", _CONVERT_LORA))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except SafetensorError as err:
        raise LoraLoadError(f"{path} is not a valid safetensors file ({err}); smoothlib reads LoRA "
                            "weights from .safetensors files only (pickle files are refused)") from err
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise LoraLoadError(f"{path}: tensor {bad[0]!r}{more} holds NaN or infinite values (a diverged "
                            "training run, or a damaged file); nothing was loaded. Use an earlier checkpoint "
                            "or retrain with a lower learning rate")
    return tensors, metadata


def _check(unet, pairs: dict[str, _Pair], unexpected: list[str], strict: bool, what: str) -> None:
    """Raise LoraLoadError listing every missing, unexpected or mis-shaped tensor; change nothing."""
    modules = dict(unet.named_modules())
    missing, wrong_shape = [], []
    unexpected = [f"{k} (not a LoRA key of this UNet)" for k in unexpected]
    for name, pair in pairs.items():
        layer = _base(modules.get(name))
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            kind = "no such layer" if layer is None else f"a {type(layer).__name__}, not a Linear or Conv2d layer"
            unexpected.append(f"{name} ({kind})")
            continue
        for half in ("down", "up"):
            if getattr(pair, half) is None:
                missing.append(f"{name} {half}")
        if pair.down is None or pair.up is None:
            continue
        r = pair.down.shape[0]
        down, up = _lora_shapes(layer, r)
        if pair.down.shape != down or pair.up.shape != up:
            wrong_shape.append(f"{name}: down {tuple(pair.down.shape)}, up {tuple(pair.up.shape)}, "
                               f"but the layer maps {down[1]} -> {up[0]}")
    if strict:
        missing += [f"{n} (no LoRA for this attention projection)"
                    for n in attention_projections(unet) if n not in pairs]
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"LoRA {what} does not fit this UNet; nothing was loaded and the UNet is unchanged."]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            more = f", ... ({len(items) - 3} more)" if len(items) > 3 else ""
            lines.append(f"  {len(items)} {label}: " + "; ".join(items[:3]) + more)
    lines.append("Is it a LoRA for another architecture (SDXL, SD 2.x)? The Smooth LoRA fits Stable "
                 "Diffusion 1.x UNets. To load a LoRA that covers only some attention layers on "
                 "purpose, pass strict=False (unexpected keys and wrong shapes stay errors).")
    raise LoraLoadError("\n".join(lines))


def _lora_shapes(layer, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(A's shape, B's shape) of a rank-r LoRA on ``layer``: [r, in] and [out, r] for a Linear layer,
    [r, in, kh, kw] and [out, r, 1, 1] for a Conv2d (peft's conv LoRA)."""
    if isinstance(layer, torch.nn.Linear):
        return (r, layer.in_features), (layer.out_features, r)
    return (r, layer.in_channels, *layer.kernel_size), (layer.out_channels, r, 1, 1)


def _inject(unet, pairs: dict[str, _Pair], adapter_name: str) -> None:
    """Attach a peft adapter shaped like ``pairs`` and copy every tensor in; undo everything on error."""
    ranks = {n: p.down.shape[0] for n, p in pairs.items()}
    alphas = {n: p.alpha for n, p in pairs.items()}
    rank, alpha = Counter(ranks.values()).most_common(1)[0][0], Counter(alphas.values()).most_common(1)[0][0]
    targets = (list(ATTENTION_PROJECTIONS) if set(pairs) == set(attention_projections(unet))
               else sorted(pairs))
    with _undo_on_error(unet, adapter_name):
        attach_lora(unet, rank, alpha, targets, adapter_name,
                    rank_pattern={n: r for n, r in ranks.items() if r != rank},
                    alpha_pattern={n: a for n, a in alphas.items() if a != alpha})
        injected = {n for n, m in unet.named_modules() if adapter_name in getattr(m, "lora_A", {})}
        if injected != set(pairs):
            raise LoraLoadError(f"peft adapted {len(injected)} layers, the file has {len(pairs)}")
        _copy_in(unet, pairs, adapter_name)


def _copy_in(unet, pairs: dict[str, _Pair], adapter_name: str) -> None:
    with torch.no_grad():
        for name, pair in pairs.items():
            module = unet.get_submodule(name)
            module.lora_A[adapter_name].weight.copy_(pair.down)
            module.lora_B[adapter_name].weight.copy_(pair.up)


# --------------------------------------------------------------------------- saving


def save_lora(unet, path: str | Path, adapter_name: str = ADAPTER, format: str = "diffusers") -> Path:
    """Write the adapter ``adapter_name`` to ``path`` (a folder, or a ``.safetensors`` file name); return the file.

    - ``"diffusers"``: diffusers' own LoRA file with its adapter metadata (:func:`adapter_metadata`:
      rank, alpha, targets), so ``pipe.load_lora_weights(path)`` in any diffusers program
      reproduces the model; default name ``pytorch_lora_weights.safetensors``.
    - ``"kohya"``: ``lora_unet_..._to_q.lora_down.weight`` keys with ``.alpha``
      (AUTOMATIC1111, ComfyUI, and diffusers load it); default ``smooth_lora_kohya.safetensors``.
    - ``"release"``: the release's attention-processor keys, alpha / r folded into ``up``.

    The strength set by :func:`set_lora_strength` is a runtime setting and is not saved.
    """
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    _require_adapter(unet, adapter_name)
    config = unet.peft_config[adapter_name]
    if format not in LORA_FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {sorted(LORA_FORMATS)}")
    path = Path(path)
    folder, filename = (path.parent, path.name) if path.suffix == ".safetensors" else (path, LORA_FORMATS[format])
    state = {k: v.detach().float().cpu().contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
    if format == "diffusers":
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=filename,
                                                  unet_lora_adapter_metadata=adapter_metadata(config))
        return folder / filename
    if config.use_dora or config.use_rslora:
        raise ValueError(f"the {format} format has no place for DoRA or rsLoRA; save as 'diffusers'")
    layers = {n: m for n, m in unet.named_modules() if adapter_name in getattr(m, "lora_A", {})}
    out = to_kohya(state, layers, adapter_name) if format == "kohya" else to_release(state, layers, adapter_name)
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / filename), metadata={"format": "pt"})
    return folder / filename


def adapter_metadata(config) -> dict:
    """The adapter metadata of a diffusers file: the fields of :data:`ADAPTER_METADATA_FIELDS`, plus those of
    :data:`ADAPTER_METADATA_FLAGS` that are set.

    diffusers rebuilds the adapter as ``LoraConfig(**metadata)`` and infers nothing when the file has
    metadata, so these are all it needs; the whole ``config.to_dict()`` would carry the installed peft's
    newest fields, which an older peft refuses (``TypeError: LoraConfig class could not be instantiated``).
    """
    meta = {name: getattr(config, name) for name in ADAPTER_METADATA_FIELDS}
    targets = config.target_modules  # a regex string, or a set peft made of the list
    meta["target_modules"] = targets if isinstance(targets, str) else sorted(targets)
    meta["rank_pattern"], meta["alpha_pattern"] = dict(meta["rank_pattern"] or {}), dict(meta["alpha_pattern"] or {})
    meta.update({name: True for name in ADAPTER_METADATA_FLAGS if getattr(config, name, False)})
    return meta
