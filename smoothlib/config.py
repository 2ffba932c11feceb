"""The training configuration: one dataclass for the command line, the notebooks and the toy world.

Defaults are the released Smooth LoRA's recipe (the release's script and model card: rank 8 on the
four attention projections, AdamW at a constant 1e-4, gradient-norm clip 1,
30,000 optimizer steps of batch 96 = 3 per GPU x 4 GPUs x 8 accumulation
steps, seed 42, lambda = 1), except where a field says otherwise.

Every value is checked when a :class:`TrainConfig` is built (so on the command line when
the flags are parsed): a bad one raises :class:`ConfigError` naming its flag, e.g.
``--learning-rate must be a finite number > 0, got nan``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field

from .checks import check_choice, check_number
from .lora import ATTENTION_PROJECTIONS, LORA_FORMATS, RESNET_CONVOLUTIONS
from .regularizer import check_settings

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
"""The diffusers.optimization schedules the trainer can run (each needs only warmup and total steps)."""

REGULARIZER_FIELDS = {"every": "reg_every", "sub_batch": "reg_sub_batch", "estimator": "estimator",
                      "h": "regularizer_h", "t_buckets": "reg_t_buckets", "relative": "reg_relative",
                      "t_min": "reg_t_min", "log_ratio": "reg_log_ratio", "sync": "sync_running_mean"}
"""The StepVariationRegularizer argument behind each config field (its rules are checked there, once)."""

RESUME_FIXED = ("rank", "lora_alpha", "lora_resnets", "reg_t_buckets")
"""Settings a resume can never change: the checkpoint's tensors are shaped or scaled by them."""

RESUME_FREE = ("output_dir", "resume", "max_train_steps", "checkpointing_steps", "checkpoints_total_limit",
               "validation_prompts", "validation_steps", "validation_guidance", "validation_num_steps",
               "report_to", "lora_formats", "dataloader_num_workers", "progress",
               "gradient_checkpointing", "overwrite_output_dir", "resume_override")
"""Settings a resume may change without naming them: the run's length, bookkeeping and memory.
Every other setting must equal the checkpoint's unless named in ``resume_override``."""


_RANGES = {  # field: the check_number bounds of its values
    "resolution": dict(low=1, integer=True), "caption_dropout": dict(low=0, below=1), "rank": dict(low=1, integer=True),
    "lora_alpha": dict(low=0, exclusive=True, optional=True), "lambda_reg": dict(low=0), "noise_offset": dict(low=0),
    "learning_rate": dict(low=0, exclusive=True), "lr_warmup_steps": dict(low=0, integer=True),
    "adam_beta1": dict(low=0, below=1), "adam_beta2": dict(low=0, below=1), "adam_epsilon": dict(low=0, exclusive=True),
    "weight_decay": dict(low=0), "max_grad_norm": dict(low=0, exclusive=True),
    **{name: dict(low=1, integer=True) for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                                                    "checkpointing_steps", "validation_steps", "validation_num_steps")},
    "seed": dict(low=0, below=2**32, integer=True), "checkpoints_total_limit": dict(low=1, integer=True, optional=True),
    "validation_guidance": dict(low=0), "dataloader_num_workers": dict(low=0, integer=True),
    "ema_decay": dict(low=0, below=1), "lambda_warmup_steps": dict(low=0, integer=True),
}


class ConfigError(ValueError):
    """A setting is invalid, or contradicts the output folder or the checkpoint it resumes (the message names the flag)."""


def flag(name: str) -> str:
    """The command-line flag of a config field: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    # -- what to train on
    world: str = "sd15"
    """Base model: "sd15", a diffusers SD 1.x repo id, a local pipeline folder, or "toy"."""
    data: str | None = None
    """Image folder with captions (metadata.jsonl, or the JSONL given by ``captions``); "digits" for the toy world's MNIST digits."""
    captions: str | None = None
    """A JSONL of {"file_name", "caption"} lines (the release's layout); default: <data>/metadata.jsonl."""
    resolution: int = 512
    """Training images are resized (shorter side) and randomly cropped to this size. A pixel-space world (the toy one) has one fixed size, which this must equal (16 for toy)."""
    caption_dropout: float = 0.0
    """Share of captions replaced by "" (the release uses none; the toy world uses some for guidance)."""
    output_dir: str = "runs/smooth-lora"
    """The run's folder. A fresh run refuses one that holds another run (see overwrite_output_dir)."""

    # -- the LoRA
    rank: int = 8
    lora_alpha: float | None = None
    """LoRA alpha; None means alpha = rank (scale 1, as released)."""
    lora_resnets: bool = False
    """Adapt the ResNet blocks' conv1 and conv2 too (LoCon), not only the attention projections (the release); the release's file format cannot hold them."""

    # -- the regularizer (Guo et al. 2024, section 3.2)
    lambda_reg: float = 1.0
    """Weight of L_reg in L = L_mse + lambda * L_reg; 0 trains a plain LoRA (the control)."""
    lambda_warmup_steps: int = 0
    """Ramp lambda linearly over the first N optimizer steps: step s (1, 2, ...) uses lambda min(1, s / N) (0: the full lambda from the start, the release)."""
    reg_every: int = 1
    """Lazy regularization: run the regularizer on 1 micro-batch in k, its weight multiplied by k."""
    reg_sub_batch: int | None = None
    """Regularize only this many samples of each micro-batch (None: all)."""
    sync_running_mean: bool = True
    """Average the running mean a across processes (off reproduces the release: one a per GPU)."""
    estimator: str = "exact"
    """How r is measured: "exact" (the release: a vector-Jacobian product, double backward, math attention) or "finite_difference" (a second forward at a shifted input, ordinary backward: any attention kernel, mixed precision, gradient checkpointing)."""
    regularizer_h: float | None = None
    """Finite-difference step, relative: the shift of x_t has norm h ||x_t||. None: sqrt(machine epsilon) of the compute dtype (3.5e-4 fp32, 0.031 fp16, 0.088 bf16)."""
    reg_t_buckets: int = 1
    """Running means of r: 1 (the release: one a for all t) or K, one per range of T/K timesteps."""
    reg_relative: bool = False
    """With reg_t_buckets > 1: penalise ((r - a) / a)^2, so every range of t weighs the same (not the release)."""
    reg_log_ratio: bool = False
    """With reg_t_buckets > 1, instead of reg_relative: penalise (log r - log a)^2 (not the release)."""
    reg_t_min: int = 0
    """Penalise only the samples with t >= reg_t_min (0: every timestep, the release)."""
    noise_offset: float = 0.0
    vae_latents: str = "sample"
    """Training latents of a latent-space world: "sample" draws each from the VAE posterior (the release and diffusers' train_text_to_image) with the micro-batch's generator, "mean" takes its mean. A pixel-space world has no VAE and ignores it."""

    # -- optimisation
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    """A diffusers.optimization schedule: constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial."""
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    """Must be > 0: a LoRA's A matrices start with zero gradients, and 0 / (sqrt(0) + 0) is NaN."""
    weight_decay: float = 1e-2
    """AdamW weight decay. The paper says 1e-4; the released weights were trained with the script's 1e-2, which we keep."""
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    """An exponential moving average of the LoRA weights (diffusers' EMAModel), updated after every optimizer step:
    0 is off (the release). Otherwise the largest decay; after n updates the decay is min(ema_decay, (1 + n) / (10 + n)),
    so an early EMA forgets its start. final/ then holds the average and final-raw/ the last weights; checkpoints hold both."""
    train_batch_size: int = 3
    """Per process."""
    gradient_accumulation_steps: int = 8
    max_train_steps: int = 30_000
    """Optimizer steps (each of train_batch_size x processes x gradient_accumulation_steps samples); on resume, must exceed the checkpoint's step."""
    mixed_precision: str = "no"
    """"no" (fp32), "fp16" or "bf16": autocast for the UNet, LoRA weights kept in fp32."""
    gradient_checkpointing: bool = False
    """Refused with the exact estimator (its double backward breaks recomputation); fine with estimator="finite_difference" or lambda_reg = 0."""
    seed: int = 42

    # -- bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    """Keep this many newest checkpoints (>= 1; "none" keeps all). Before each checkpoint the LoRA weights and optimizer moments are checked: a non-finite one stops the run and is never written."""
    resume: str | None = None
    """A checkpoint folder, or "latest" (the newest intact one in output_dir). Every setting must equal the checkpoint's, except those named in resume_override and these, free to change: max_train_steps (above the checkpoint's step), checkpointing, validation, report_to, progress, lora_formats, dataloader_num_workers, gradient_checkpointing. history.jsonl is cut back to the checkpoint's step."""
    resume_override: list[str] = field(default_factory=list)
    """Settings a resume may change, by name (learning_rate seed ...) or "all"; each change is printed old -> new and takes effect (the learning rate, betas, epsilon and weight decay replace the checkpoint's). rank, lora_alpha and reg_t_buckets can never change."""
    overwrite_output_dir: bool = False
    """Start a fresh run in an output_dir that holds another run: its checkpoint-*, history.jsonl, final/, validation/ and logs/ are moved, never deleted, into output_dir/replaced-<date>-<time>/. A resume from an older checkpoint of output_dir likewise moves the newer intact checkpoints there."""
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int = 500
    validation_guidance: float = 7.5
    validation_num_steps: int = 50
    report_to: str | None = None
    """"tensorboard" writes logs to output_dir/logs (needs the tensorboard package)."""
    lora_formats: list[str] = field(default_factory=lambda: ["diffusers"])
    """The final LoRA's files in output_dir/final/, one per format: "diffusers" (pytorch_lora_weights.safetensors), "kohya" (AUTOMATIC1111 / ComfyUI, smooth_lora_kohya.safetensors), "release" (the release's attention-processor keys, smooth_lora.safetensors)."""
    dataloader_num_workers: int = 0
    progress: bool = True

    def __post_init__(self):
        try:
            self._check()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.lora_formats = list(dict.fromkeys(self.lora_formats))  # each format once, in the order given
        self.resume_override = [n.replace("-", "_") for n in self.resume_override]
        names = {f.name for f in dataclasses.fields(self)}
        for name in self.resume_override:
            if name in RESUME_FIXED:
                raise ConfigError(f"--resume-override: {name} can never change on resume (the checkpoint's "
                                  "tensors are shaped or scaled by it); start a new run instead")
            if name != "all" and name not in names:
                raise ConfigError(f"--resume-override: unknown setting {name!r}; name config fields "
                                  "(e.g. learning_rate seed) or 'all'")

    def _check(self) -> None:
        """Every value in range; the regularizer's settings by its own rules (:func:`~smoothlib.regularizer.check_settings`)."""
        for name, bounds in _RANGES.items():
            check_number(getattr(self, name), flag(name), **bounds)
        check_choice(self.mixed_precision, flag("mixed_precision"), ("no", "fp16", "bf16"))
        check_choice(self.lr_scheduler, flag("lr_scheduler"), LR_SCHEDULERS)
        check_choice(self.vae_latents, flag("vae_latents"), ("sample", "mean"))
        if isinstance(self.lora_formats, str) or not self.lora_formats:
            raise ValueError(f"{flag('lora_formats')} needs a list of one or more of {', '.join(LORA_FORMATS)}, "
                             f"got {self.lora_formats!r}")
        for name in self.lora_formats:
            check_choice(name, flag("lora_formats"), tuple(LORA_FORMATS))
        if self.lora_resnets and "release" in self.lora_formats:
            raise ValueError(f"{flag('lora_formats')} release holds attention projections only, not the ResNet "
                             f"convolutions of {flag('lora_resnets')}: choose diffusers or kohya")
        check_settings(lambda arg: flag(REGULARIZER_FIELDS.get(arg, arg)), **self.regularizer_settings())

    def lora_targets(self) -> tuple[str, ...]:
        """The layers LoRA adapts: the attention projections, and the ResNet convolutions with ``lora_resnets``."""
        return ATTENTION_PROJECTIONS + (RESNET_CONVOLUTIONS if self.lora_resnets else ())

    def lambda_at(self, step: int) -> float:
        """lambda at optimizer step ``step`` (1, 2, ...): lambda_reg min(1, step / lambda_warmup_steps), or lambda_reg."""
        if not self.lambda_warmup_steps:
            return self.lambda_reg
        return self.lambda_reg * min(1.0, step / self.lambda_warmup_steps)

    def regularizer_settings(self) -> dict:
        """The keyword arguments of :class:`~smoothlib.regularizer.StepVariationRegularizer` this config asks for."""
        return {arg: getattr(self, name) for arg, name in REGULARIZER_FIELDS.items()}

    def resume_changes(self, saved: dict, checkpoint) -> list[str]:
        """Check this config against the ``saved`` config of the checkpoint it resumes.

        Returns the allowed changes as "name: old -> new" lines; raises :class:`ConfigError` listing
        every change of a setting in :data:`RESUME_FIXED`, or of one not in :data:`RESUME_FREE` and
        not named in ``resume_override``. Settings the checkpoint does not record are not compared.
        """
        allowed, refused = [], []
        for f in dataclasses.fields(self):
            if f.name in RESUME_FREE or f.name not in saved:
                continue
            old, new = saved[f.name], json.loads(json.dumps(getattr(self, f.name)))
            if old != new:
                line = f"{f.name}: {old!r} -> {new!r}"
                ok = f.name not in RESUME_FIXED and ("all" in self.resume_override or f.name in self.resume_override)
                (allowed if ok else refused).append(line)
        if refused:
            names = [line.split(":")[0] for line in refused]
            fixed = [n for n in names if n in RESUME_FIXED]
            hint = (f"{', '.join(fixed)} can never change on resume: start a new run (another --output-dir)"
                    if fixed else f"resume with the checkpoint's values, or allow the change: "
                                  f"--resume-override {' '.join(names)}")
            raise ConfigError(f"cannot resume from {checkpoint}: these settings differ from the checkpoint's:\n  "
                              + "\n  ".join(refused) + f"\n{hint}")
        return allowed


def _field_help(cls) -> dict[str, str]:
    """Field docstrings (the string literal after each field) for --help."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # a class built at run time (dataclasses.make_dataclass) has no source
        return {}
    body, helps = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            helps[node.target.id] = nxt.value.value
    return helps


def _optional(conv):
    """A converter that also reads "none" as None (for the fields that may be None)."""
    def read(text: str):
        return None if text.lower() == "none" else conv(text)
    read.__name__ = conv.__name__
    return read


def _kind(annotation) -> tuple[type, bool]:
    """(the type, may it be None) of a field's annotation: ``int``, ``float | None``, ``list[str]``, ..."""
    args = typing.get_args(annotation)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One --flag per config field, with its default and docstring.

    Field types are read with ``typing.get_type_hints``, so string annotations
    (``from __future__ import annotations``) and real type objects both work.
    """
    helps, hints = _field_help(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag_, text = flag(f.name), helps.get(f.name, "")
        kind, optional = _kind(hints[f.name])
        if kind is bool:
            parser.add_argument(flag_, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag_, nargs="*", default=default, help=text)
        elif kind in (int, float, str):
            conv = _optional(kind) if optional and kind is not str else kind
            parser.add_argument(flag_, type=conv, default=default, help=f"{text} (default: {default})")
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for the type {kind!r}")


def from_args(args: argparse.Namespace, cls=TrainConfig) -> TrainConfig:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
