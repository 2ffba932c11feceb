"""The training configuration: one dataclass for the command line, the notebooks and the toy world.

Defaults are the released Smooth LoRA's recipe (the release's script and model card: rank 8 on the
four attention projections, AdamW at a constant 1e-4, gradient-norm clip 1,
30,000 optimizer steps of batch 96 = 3 per GPU x 4 GPUs x 8 accumulation
steps, seed 42, lambda = 1), except where a field says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from .regularizer import ESTIMATORS


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
    """Training images are resized (shorter side) and randomly cropped to this size."""
    caption_dropout: float = 0.0
    """Share of captions replaced by "" (the release uses none; the toy world uses some for guidance)."""
    output_dir: str = "runs/smooth-lora"

    # -- the LoRA
    rank: int = 8
    lora_alpha: float | None = None
    """LoRA alpha; None means alpha = rank (scale 1, as released)."""

    # -- the regularizer (Guo et al. 2024, section 3.2)
    lambda_reg: float = 1.0
    """Weight of L_reg in L = L_mse + lambda * L_reg; 0 trains a plain LoRA (the control)."""
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
    noise_offset: float = 0.0

    # -- optimisation
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    """Any diffusers.optimization schedule name: constant, constant_with_warmup, cosine, linear, ..."""
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    """AdamW weight decay. The paper says 1e-4; the released weights were trained with the script's 1e-2, which we keep."""
    max_grad_norm: float = 1.0
    train_batch_size: int = 3
    """Per process."""
    gradient_accumulation_steps: int = 8
    max_train_steps: int = 30_000
    """Optimizer steps (each of train_batch_size x processes x gradient_accumulation_steps samples)."""
    mixed_precision: str = "no"
    """"no" (fp32), "fp16" or "bf16": autocast for the UNet, LoRA weights kept in fp32."""
    gradient_checkpointing: bool = False
    """Refused with the exact estimator (its double backward breaks recomputation); fine with estimator="finite_difference" or lambda_reg = 0."""
    seed: int = 42

    # -- bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume: str | None = None
    """A checkpoint folder, or "latest" (the newest intact one in output_dir)."""
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int = 500
    validation_guidance: float = 7.5
    validation_num_steps: int = 50
    report_to: str | None = None
    """"tensorboard" writes logs to output_dir/logs (needs the tensorboard package)."""
    save_release_format: bool = False
    """Also write the final LoRA in the release's attention-processor format."""
    dataloader_num_workers: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.lambda_reg < 0:
            raise ValueError(f"lambda_reg must be >= 0, got {self.lambda_reg}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        for name in ("rank", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                     "checkpointing_steps", "validation_steps", "reg_every", "resolution", "reg_t_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.regularizer_h is not None:
            if not self.regularizer_h > 0:
                raise ValueError(f"regularizer_h must be > 0 (or None for the default), got {self.regularizer_h}")
            if self.estimator != "finite_difference":
                raise ValueError("regularizer_h is the finite-difference step: set estimator='finite_difference' "
                                 "or leave regularizer_h unset")
        if self.reg_relative and self.reg_t_buckets == 1:
            raise ValueError("reg_relative needs reg_t_buckets > 1: it weighs the ranges of t equally")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")


def _field_help(cls) -> dict[str, str]:
    """Field docstrings (the string literal after each field) for --help."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, helps = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            helps[node.target.id] = nxt.value.value
    return helps


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One --flag per config field, with its default and docstring."""
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag, text = "--" + f.name.replace("_", "-"), helps.get(f.name, "")
        kind = f.type if isinstance(f.type, str) else str(f.type)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif kind.startswith("list"):
            parser.add_argument(flag, nargs="*", default=default, help=text)
        else:
            base = kind.split("|")[0].strip()
            conv = {"int": int, "float": float, "str": str}[base]
            parser.add_argument(flag, type=conv, default=default, help=f"{text} (default: {default})")


def from_args(args: argparse.Namespace, cls=TrainConfig) -> TrainConfig:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
