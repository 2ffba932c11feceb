"""LoRA on the UNet: attach a fresh one, load the released Smooth LoRA (or ours), set its strength, save it.

A LoRA (Hu et al. 2022) adds a low-rank update to a frozen linear layer W [out, in]:

    W' = W + (alpha / r) * B @ A,    A = "down" [r, in],  B = "up" [out, r].

(On a convolution, as the trainer's ``lora_resnets`` adds: A a conv [r, in, kh, kw], B a 1 x 1 conv [out, r, 1, 1],
and the merged kernel is W + (alpha / r) (B A) reshaped.)

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
:func:`save_lora` writes our LoRA for diffusers (with the adapter metadata any peft >= 0.18 reads), for
AUTOMATIC1111/ComfyUI (kohya keys) or in the release's format.

The package's parts: :mod:`.adapter` (the adapter on a live UNet: attach, strength,
on/off, remove), :mod:`.formats` (the three file formats, both directions) and
:mod:`.io` (finding, reading, checking, injecting and writing files).
"""
from .adapter import (ADAPTER, ATTENTION_PROJECTIONS, RESNET_CONVOLUTIONS, attach_lora, attention_projections, lora_disabled,
                      lora_enabled, lora_parameters, remove_lora, set_lora_strength)
from .formats import LoraLoadError
from .io import (DIFFUSERS_LORA_FILE, KOHYA_LORA_FILE, LORA_FORMATS, SMOOTH_LORA_FILE, SMOOTH_LORA_REPO, LoraReport,
                 adapter_metadata, load_smooth_lora, save_lora)

__all__ = [
    "ADAPTER", "ATTENTION_PROJECTIONS", "attach_lora", "attention_projections", "lora_disabled", "lora_enabled",
    "lora_parameters", "remove_lora", "set_lora_strength",
    "LoraLoadError", "LoraReport", "DIFFUSERS_LORA_FILE", "KOHYA_LORA_FILE", "LORA_FORMATS", "SMOOTH_LORA_FILE",
    "SMOOTH_LORA_REPO", "adapter_metadata", "load_smooth_lora", "save_lora",
]
