"""Every compared model through one protocol, each scored once: cached scores are read, the rest measured.

1. resolve every model's source (:func:`smoothlib.evaluate.models.resolve_source`); a bad one
   stops the run before anything is measured;
2. per model, the cache key: the protocol, the world, the source's content
   (:func:`~smoothlib.evaluate.models.fingerprint`) and the settings (items, steps, guidance, ...);
   its file is ``<out>/cache/<protocol>-<first 16 hex of the key's SHA-256>.json``;
3. models without a cache file (or all, with ``remeasure``): each LoRA is loaded and removed
   once as a check, then each model is applied in turn, this process scores its items
   (:mod:`smoothlib.evaluate.distributed`), the records are gathered and merged in item order,
   summarised, and the main process writes the cache file;
4. the entries come back in the order of the models given.

The label a model is given is not part of the key: renaming a LoRA reads its cached scores.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .distributed import gather_records, merge_records, my_indices
from .models import ModelSpec, fingerprint, model_applied, resolve_source


def cache_file(out: Path, key: dict) -> Path:
    """Where the scores of ``key`` are cached under the output folder ``out``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(out) / "cache" / f"{key['protocol']}-{digest}.json"


def evaluate_models(world, specs: list[ModelSpec], protocol: str, world_id: str, settings: dict, num_items: int,
                    measure: Callable[[object, list[int]], list[dict]], summarize: Callable[[object, list[dict]], dict],
                    out: str | Path, state, remeasure: bool = False, progress: bool = True) -> list[dict]:
    """The recipe of the module docstring; ``measure(world, indices)`` scores items, ``summarize(world, records)``
    turns all of a model's records into its numbers."""
    sources = [resolve_source(world, s) for s in specs]
    entries, todo = [], []
    for spec, source in zip(specs, sources):
        key = {"protocol": protocol, "world": world_id, "model": fingerprint(source), "settings": settings}
        path = cache_file(Path(out), key)
        cached = json.loads(path.read_text()) if path.exists() and not remeasure else None
        if cached is not None and cached.get("key") != key:
            cached = None   # a digest collision or a hand-edited file: measure again
        entries.append({"label": spec.label, "role": spec.role, "source": spec.source, "cached": cached is not None,
                        **(cached or {"key": key})})
        if cached is None:
            todo.append((len(entries) - 1, spec, source, path))
    for _, spec, source, _ in todo:
        with model_applied(world, spec, source):
            pass
    bar = tqdm(todo, desc=f"{protocol}: models", disable=not (progress and state.is_main_process))
    for n, spec, source, path in bar:
        bar.set_postfix_str(spec.label)
        start = time.perf_counter()
        with model_applied(world, spec, source):
            records = measure(world, my_indices(num_items, state))
        items = merge_records(gather_records(records), num_items)
        record = {"key": entries[n]["key"], "summary": summarize(world, items), "items": items,
                  "eval_wall_s": round(time.perf_counter() - start, 1), "num_processes": state.num_processes}
        entries[n].update(record)
        if state.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
    return entries
