"""LoRA file formats, each with its reading and writing side by side.

A layer [out, in] of rank r has a down tensor A [r, in] and an up tensor B [out, r]; ``<layer>``
is its module name in the UNet (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``),
``<block>`` that name without the projection:

===================  ==========================================================  ================================
format               keys of one layer                                           alpha
===================  ==========================================================  ================================
attention-processor  ``<block>.processor.to_q_lora.down|up.weight``              none: alpha / r folded into up
(the release)        (``to_out_lora`` for ``to_out.0``; no ``unet.``)
diffusers/peft       ``unet.<layer>.lora_A|lora_B.weight``                       header ``lora_adapter_metadata``
kohya/webui          ``lora_unet_<layer, "." -> "_">.lora_down|lora_up.weight``  tensor ``lora_unet_<...>.alpha``
===================  ==========================================================  ================================

:func:`parse` turns any of them into peft's layout, one :class:`_Pair` per layer;
:func:`to_release` and :func:`to_kohya` write peft's state dict back out (the
diffusers file itself is written by diffusers, in :func:`smoothlib.lora.save_lora`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

_PEFT_KEY = re.compile(r"(.+)\.lora_([AB])\.weight")


class LoraLoadError(ValueError):
    """A LoRA that cannot be applied as it is: wrong file type, unknown format, keys or shapes that do not fit."""


@dataclass
class _Pair:
    down: torch.Tensor | None = None  # A, [r, in] ([r, in, kh, kw] on a Conv2d)
    up: torch.Tensor | None = None    # B, [out, r] ([out, r, 1, 1] on a Conv2d)
    alpha: float | None = None


def parse(state_dict, metadata, unet) -> tuple[str, dict[str, _Pair], list[str]]:
    """Any supported format -> (format name, {layer name: down/up/alpha}, unexpected keys)."""
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
    state_dict = _release_to_peft({k.removeprefix("unet."): v for k, v in state_dict.items()})
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


# --------------------------------------------------------------------------- attention-processor (the release)


def _release_to_peft(state_dict) -> dict[str, torch.Tensor]:
    """Release keys -> peft keys with diffusers' own converter (it leaves peft keys, and others, as they are)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    return convert_unet_state_dict_to_peft(state_dict)


def to_release(state, layers, adapter_name) -> dict[str, torch.Tensor]:
    """peft's state dict -> the release's keys, alpha / r folded into ``up``; attention projections only."""
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


# --------------------------------------------------------------------------- diffusers/peft


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


# --------------------------------------------------------------------------- kohya/webui


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


def to_kohya(state, layers, adapter_name) -> dict[str, torch.Tensor]:
    """peft's state dict -> kohya keys with each layer's true ``.alpha`` (diffusers' converter writes alpha = rank)."""
    from diffusers.utils import convert_state_dict_to_kohya

    out = convert_state_dict_to_kohya({"unet." + k: v for k, v in state.items()})
    for name, module in layers.items():  # diffusers writes alpha = rank; keep the true alpha
        key = "lora_unet_" + name.replace(".", "_") + ".alpha"
        if key not in out:
            raise RuntimeError(f"diffusers' kohya converter wrote no {key}")
        out[key] = torch.tensor(float(module.lora_alpha[adapter_name]))
    return out
