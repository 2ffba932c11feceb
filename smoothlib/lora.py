"""LoRA on the UNet: attach a fresh one, load the released Smooth LoRA (or ours), set its strength, save it.

A LoRA (Hu et al. 2022) adds a low-rank update to a frozen linear layer W [out, in]:

    W' = W + (alpha / r) * B @ A,    A = "down" [r, in],  B = "up" [out, r].

The released Smooth LoRA (shi-labs/smooth-diffusion-lora): r = 8 on ``to_q, to_k, to_v, to_out.0``
of all 32 attention layers of Stable Diffusion 1.5, alpha = r (scale 1), 256
tensors. It is stored in diffusers 0.20's attention-processor format
(``...attn1.processor.to_q_lora.down.weight``, no ``unet.`` prefix), which today's
``pipe.load_lora_weights`` skips with only a warning: the user gets the base model.

:func:`load_smooth_lora` therefore reads that format, diffusers/peft files
(``unet....to_q.lora_A.weight``, alpha from the adapter metadata) and kohya/webui
files (``lora_unet_..._to_q.lora_down.weight`` with ``.alpha``); it checks every
tensor against the UNet *before* changing it, injects the result as a named peft
adapter, and raises :class:`LoraLoadError` instead of dropping anything silently.
:func:`save_smooth_lora` writes our LoRA for diffusers (with its alpha), for
AUTOMATIC1111/ComfyUI (kohya keys) or in the release's format.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .worlds import SMOOTH_LORA_REPO, _looks_like_repo_id, hub_errors

logger = logging.getLogger(__name__)

SMOOTH_LORA_FILE = "smooth_lora.safetensors"
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "smooth"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_PEFT_KEY = re.compile(r"(.+)\.lora_([AB])\.weight")


class LoraLoadError(ValueError):
    """A LoRA that cannot be applied as it is: wrong file type, unknown format, keys or shapes that do not fit."""


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


@dataclass
class _Pair:
    down: torch.Tensor | None = None  # A, [r, in]
    up: torch.Tensor | None = None    # B, [out, r]
    alpha: float | None = None


# --------------------------------------------------------------------------- attach, strength, on/off


def attention_projections(unet) -> list[str]:
    """Names of the layers the Smooth LoRA adapts: to_q, to_k, to_v, to_out.0 of every attention layer."""
    ends = tuple("." + p for p in ATTENTION_PROJECTIONS)
    return [name for name, module in unet.named_modules()
            if name.endswith(ends) and isinstance(_base(module), torch.nn.Linear)]


def lora_parameters(unet, adapter_name: str = ADAPTER) -> list[torch.nn.Parameter]:
    """The LoRA tensors (A and B of every layer) of one adapter."""
    return [p for n, p in unet.named_parameters() if ".lora_" in n and f".{adapter_name}." in n]


def attach_lora(unet, rank: int = 8, alpha: float | None = None,
                target_modules=ATTENTION_PROJECTIONS, adapter_name: str = ADAPTER,
                *, rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
                init="gaussian") -> list[torch.nn.Parameter]:
    """Add a fresh, trainable LoRA adapter to ``unet``; return its parameters (for the optimizer).

    Defaults follow the release: rank 8, alpha = rank, every attention projection;
    ``init="gaussian"`` draws A ~ N(0, 1/r^2) and sets B = 0 (as diffusers 0.20's
    LoRA layers did), so the model starts exactly at the base. As in diffusers,
    peft freezes every other parameter of the UNet. On error the UNet is left as it was.
    """
    from peft import LoraConfig

    if adapter_name in getattr(unet, "peft_config", {}):
        raise ValueError(f"the UNet already has an adapter named {adapter_name!r}; remove it with "
                         f"unet.delete_adapters({adapter_name!r}) or choose another adapter_name")
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha,
                        target_modules=list(target_modules), init_lora_weights=init,
                        rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {})
    with _undo_on_error(unet, adapter_name):
        try:
            unet.add_adapter(config, adapter_name=adapter_name)
        except ValueError as err:
            raise ValueError(f"could not attach LoRA to target_modules={list(target_modules)}: {err}") from err
    return lora_parameters(unet, adapter_name)


def set_smooth_lora_strength(unet, strength: float, adapter_name: str = ADAPTER) -> None:
    """Scale the adapter's update: W + strength * (alpha / r) B A. 0 is exactly the base model.

    Makes ``adapter_name`` the only active adapter (diffusers' ``set_adapters``).
    """
    _require_adapter(unet, adapter_name)
    with _keep_requires_grad(unet):
        unet.set_adapters([adapter_name], weights=[float(strength)])


@contextmanager
def lora_disabled(unet):
    """Run the base model inside the block (every adapter off), then switch the adapters back on.

    >>> with lora_disabled(world.unet):
    ...     base_images = sample(...)
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("the UNet has no LoRA adapter to disable")
    was_enabled = not layers[0].disable_adapters
    with _keep_requires_grad(unet):
        unet.disable_adapters()
    try:
        yield unet
    finally:
        if was_enabled:
            with _keep_requires_grad(unet):
                unet.enable_adapters()


def lora_enabled(unet, enabled: bool):
    """Switch for side-by-side comparisons: ``with lora_enabled(world.unet, smooth):``.

    ``enabled=False`` is :func:`lora_disabled` (the base model); ``True`` leaves the
    adapters as they are (on, once a Smooth LoRA is loaded).
    """
    return nullcontext(unet) if enabled else lora_disabled(unet)


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
    and an up (B) tensor [out, r] in one of the formats of the module docstring, optionally
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
    fmt, pairs, unexpected = _parse(state_dict, metadata, unet)
    _check(unet, pairs, unexpected, strict, f"{path} ({fmt} format)")
    _inject(unet, pairs, adapter_name)
    if strength != 1.0:
        set_smooth_lora_strength(unet, strength, adapter_name)
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
    if _looks_like_repo_id(str(source)):
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
    if any(f.suffix in _PICKLE_SUFFIXES for f in folder.iterdir()):
        _refuse_pickle(folder)
    raise LoraLoadError(f"{folder} holds no .safetensors file")


def _refuse_pickle(path: Path):
    raise LoraLoadError(
        f"{path} is a pickle file (or holds only pickle files): loading pickle can run arbitrary code, "
        "so smoothlib reads LoRA weights from .safetensors files only. If you trust the file, convert "
        "it once: safetensors.torch.save_file(torch.load(path, weights_only=True), 'lora.safetensors')")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if path.suffix in _PICKLE_SUFFIXES:
        _refuse_pickle(path)
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


def _parse(state_dict, metadata, unet) -> tuple[str, dict[str, _Pair], list[str]]:
    """Any supported format -> (format name, {layer name: down/up/alpha}, unexpected keys)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    keys = list(state_dict)
    alphas: dict[str, float] = {}
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        fmt = "kohya"
        state_dict, alphas = _kohya_to_peft(state_dict, unet)
    elif any("_lora.down." in k or "_lora.up." in k or ".lora.down." in k for k in keys):
        fmt = "attention-processor"
    elif any(".lora_A." in k or ".lora_B." in k for k in keys):
        fmt = "diffusers/peft"
    else:
        raise LoraLoadError(f"unknown LoRA format (first keys: {keys[:3]}); expected release-style "
                            "'...processor.to_q_lora.down.weight', diffusers '...to_q.lora_A.weight' or "
                            "kohya 'lora_unet_..._to_q.lora_down.weight' keys")
    state_dict = {k.removeprefix("unet."): v for k, v in state_dict.items()}
    state_dict = convert_unet_state_dict_to_peft(state_dict)
    pairs: dict[str, _Pair] = {}
    unexpected = []
    for key, tensor in state_dict.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            unexpected.append(key)
            continue
        pair = pairs.setdefault(match[1], _Pair())
        setattr(pair, "down" if match[2] == "A" else "up", tensor)
    alphas = alphas or _metadata_alphas(metadata, pairs)
    for name, pair in pairs.items():  # no alpha stored: alpha = rank, i.e. scale 1 (release, diffusers)
        rank = pair.down.shape[0] if pair.down is not None else 0
        pair.alpha = float(alphas.get(name, rank))
    return fmt, pairs, unexpected


def _kohya_to_peft(state_dict, unet) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """kohya/webui keys -> peft keys, by matching 'lora_unet_' + layer name with '.' -> '_' (as ComfyUI does)."""
    names = {"lora_unet_" + n.replace(".", "_"): n for n, _ in unet.named_modules()
             if n and ".lora_" not in n and not n.endswith(".base_layer")}
    suffixes = {".lora_down.weight": ".lora_A.weight", ".lora_up.weight": ".lora_B.weight"}
    out, alphas = {}, {}
    for key, tensor in state_dict.items():
        stem, _, rest = key.partition(".")
        layer = names.get(stem)
        if layer is not None and "." + rest in suffixes:
            out[layer + suffixes["." + rest]] = tensor
        elif layer is not None and rest == "alpha":
            alphas[layer] = float(tensor)
        else:
            out[key] = tensor  # reported as unexpected
    return out, alphas


def _metadata_alphas(metadata: dict[str, str], layers) -> dict[str, float]:
    """Per-layer alpha from diffusers' adapter metadata (lora_alpha, alpha_pattern), if the file has it."""
    from peft.utils.other import get_pattern_key

    raw = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    prefixed = any(k.startswith("unet.") for k in raw)
    config = {k.removeprefix("unet."): v for k, v in raw.items() if k.startswith("unet.") or not prefixed}
    for flag in ("use_dora", "use_rslora", "lora_bias"):
        if config.get(flag):
            raise LoraLoadError(f"this LoRA uses {flag}, which smoothlib does not load; "
                                "use pipe.load_lora_weights for it")
    if "lora_alpha" not in config:
        return {}
    pattern = config.get("alpha_pattern") or {}
    return {name: pattern.get(get_pattern_key(list(pattern), name), config["lora_alpha"])
            for name in layers}


def _check(unet, pairs: dict[str, _Pair], unexpected: list[str], strict: bool, what: str) -> None:
    """Raise LoraLoadError listing every missing, unexpected or mis-shaped tensor; change nothing."""
    modules = dict(unet.named_modules())
    missing, wrong_shape = [], []
    unexpected = [f"{k} (not a LoRA key of this UNet)" for k in unexpected]
    for name, pair in pairs.items():
        layer = _base(modules.get(name))
        if not isinstance(layer, torch.nn.Linear):
            kind = "no such layer" if layer is None else f"a {type(layer).__name__}, not a Linear layer"
            unexpected.append(f"{name} ({kind})")
            continue
        for half in ("down", "up"):
            if getattr(pair, half) is None:
                missing.append(f"{name} {half}")
        if pair.down is None or pair.up is None:
            continue
        r = pair.down.shape[0]
        if pair.down.shape != (r, layer.in_features) or pair.up.shape != (layer.out_features, r):
            wrong_shape.append(f"{name}: down {tuple(pair.down.shape)}, up {tuple(pair.up.shape)}, "
                               f"but the layer maps {layer.in_features} -> {layer.out_features}")
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


def save_smooth_lora(unet, path: str | Path, adapter_name: str = ADAPTER, format: str = "diffusers") -> Path:
    """Write the adapter ``adapter_name`` to ``path`` (a folder, or a ``.safetensors`` file name); return the file.

    - ``"diffusers"``: diffusers' own LoRA file with its adapter metadata (alpha,
      targets), so ``pipe.load_lora_weights(path)`` in any diffusers program
      reproduces the model; default name ``pytorch_lora_weights.safetensors``.
    - ``"kohya"``: ``lora_unet_..._to_q.lora_down.weight`` keys with ``.alpha``
      (AUTOMATIC1111, ComfyUI, and diffusers load it); default ``smooth_lora_kohya.safetensors``.
    - ``"release"``: the release's attention-processor keys, alpha / r folded into ``up``.

    The strength set by :func:`set_smooth_lora_strength` is a runtime setting and is not saved.
    """
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    _require_adapter(unet, adapter_name)
    config = unet.peft_config[adapter_name]
    names = {"diffusers": DIFFUSERS_LORA_FILE, "kohya": "smooth_lora_kohya.safetensors",
             "release": SMOOTH_LORA_FILE}
    if format not in names:
        raise ValueError(f"unknown format {format!r}; use one of {sorted(names)}")
    path = Path(path)
    folder, filename = (path.parent, path.name) if path.suffix == ".safetensors" else (path, names[format])
    state = {k: v.detach().float().cpu().contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
    if format == "diffusers":
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=filename,
                                                  unet_lora_adapter_metadata=config.to_dict())
        return folder / filename
    if config.use_dora or config.use_rslora:
        raise ValueError(f"the {format} format has no place for DoRA or rsLoRA; save as 'diffusers'")
    layers = {n: m for n, m in unet.named_modules() if adapter_name in getattr(m, "lora_A", {})}
    out = _to_kohya(state, layers, adapter_name) if format == "kohya" else _to_release(state, layers, adapter_name)
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / filename), metadata={"format": "pt"})
    return folder / filename


def _to_kohya(state, layers, adapter_name) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_kohya

    out = convert_state_dict_to_kohya({"unet." + k: v for k, v in state.items()})
    for name, module in layers.items():  # diffusers writes alpha = rank; keep the true alpha
        key = "lora_unet_" + name.replace(".", "_") + ".alpha"
        if key not in out:
            raise RuntimeError(f"diffusers' kohya converter wrote no {key}")
        out[key] = torch.tensor(float(module.lora_alpha[adapter_name]))
    return out


def _to_release(state, layers, adapter_name) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in layers.items():
        match = re.fullmatch(r"(.+)\.(to_q|to_k|to_v|to_out)(\.0)?", name)
        if match is None:
            raise ValueError(f"the release format only holds attention projections, not {name}")
        stem = f"{match[1]}.processor.{match[2]}_lora"
        out[f"{stem}.down.weight"] = state[f"{name}.lora_A.weight"]
        scale = module.lora_alpha[adapter_name] / module.r[adapter_name]  # not .scaling: it holds the strength
        out[f"{stem}.up.weight"] = state[f"{name}.lora_B.weight"] * scale
    return out


# --------------------------------------------------------------------------- helpers


def _base(module):
    """The Linear inside a peft-wrapped layer, or the module itself."""
    return getattr(module, "base_layer", module)


def _require_adapter(unet, adapter_name: str) -> None:
    loaded = list(getattr(unet, "peft_config", {}))
    if adapter_name not in loaded:
        raise ValueError(f"the UNet has no adapter {adapter_name!r} (loaded: {loaded}); "
                         "load one with load_smooth_lora or attach_lora first")


@contextmanager
def _undo_on_error(unet, adapter_name: str):
    """If the block raises, remove what it attached and restore every requires_grad flag."""
    had_adapters = bool(getattr(unet, "peft_config", {}))
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    try:
        yield
    except BaseException:
        if had_adapters:
            unet.delete_adapters(adapter_name)
        elif getattr(unet, "peft_config", None) or getattr(unet, "_hf_peft_config_loaded", False):
            unet.unload_lora()  # strips every peft layer: back to plain Linear modules
        for p, flag in flags:
            p.requires_grad_(flag)
        raise


@contextmanager
def _keep_requires_grad(unet):
    """peft's set_adapter/enable_adapters mark active LoRA tensors trainable; keep what the user chose."""
    flags = [(p, p.requires_grad) for n, p in unet.named_parameters() if ".lora_" in n]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
