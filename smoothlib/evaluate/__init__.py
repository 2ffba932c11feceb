"""Evaluation for any world and LoRA: the paper's Table 1 (ISTD beside quality) and Table 2 (reconstruction).

The command is ``smoothlib-eval`` (:mod:`~smoothlib.evaluate.cli`; also ``python -m smoothlib.evaluate``); its rooms:
:mod:`~smoothlib.evaluate.models` (the compared models and their sources),
:mod:`~smoothlib.evaluate.protocols` (both protocols, item by item),
:mod:`~smoothlib.evaluate.quality` (what is measured beside ISTD in each world),
:mod:`~smoothlib.evaluate.distributed` (items split across ``accelerate launch`` processes and merged),
:mod:`~smoothlib.evaluate.runner` (every model once, through the cache) and
:mod:`~smoothlib.evaluate.report` (report.json, report.md, figure.png). docs/evaluation.md has the recipes.
"""
from __future__ import annotations

from .models import EvalInputError, ModelSpec, model_specs
from .protocols import istd_records, reconstruction_records, summarize_istd, summarize_reconstruction

__all__ = ["EvalInputError", "ModelSpec", "istd_records", "model_specs", "reconstruction_records",
           "summarize_istd", "summarize_reconstruction"]
