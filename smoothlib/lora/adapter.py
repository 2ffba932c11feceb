"""A LoRA adapter on a live UNet: attach a fresh one, scale it, switch it off, remove it.

Every function works on the peft adapters diffusers keeps on a ``UNet2DConditionModel``
(``unet.peft_config``), named ``"smooth"`` (:data:`ADAPTER`) unless told otherwise; none
reads or writes a file (that is :mod:`smoothlib.lora.io`). The strength and on/off
switch are runtime settings: they never change the stored LoRA tensors.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

ADAPTER = "smooth"
"""The default adapter name, the one the Smooth LoRA is loaded and trained under."""
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
"""The layers of every attention block the Smooth LoRA adapts."""
RESNET_CONVOLUTIONS = ("conv1", "conv2")
"""The two 3x3 convolutions of every ResNet block: what LoRA on the convolutions (LoCon) adds to the
attention projections (not the release). Their LoRA is a conv pair: A [r, in, 3, 3], B [out, r, 1, 1]."""


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


def set_lora_strength(unet, strength: float, adapter_name: str = ADAPTER) -> None:
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


def remove_lora(unet, adapter_name: str = ADAPTER, missing_ok: bool = False) -> None:
    """Delete the adapter ``adapter_name`` from ``unet`` (peft's ``delete_adapters``), e.g. to load another.

    Once the last adapter is gone, peft's empty wrappers are stripped too: the layers are
    the plain base Linear modules again and the UNet computes exactly as the base model.
    The requires_grad flags of the other parameters stay as they are. Raises ValueError
    if the UNet has no such adapter, unless ``missing_ok`` (then it does nothing).
    """
    if missing_ok and adapter_name not in getattr(unet, "peft_config", {}):
        return
    _require_adapter(unet, adapter_name)
    with _keep_requires_grad(unet):
        unet.delete_adapters(adapter_name)
    if not getattr(unet, "peft_config", None):
        unet.unload_lora()  # no adapter left: back to plain Linear modules, as before attach_lora


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
