"""Items split across processes under ``accelerate launch``, and their records merged back in order.

With N processes, process i takes the contiguous block of item indices that
``accelerate.PartialState().split_between_processes`` gives it (the first P mod N processes one
more), scores those items, and every record carries its item's index. The main process gathers
all records (``accelerate.utils.gather_object``, concatenated in process order) and
:func:`merge_records` orders them by index, checking each item came back exactly once. A single
process (no ``accelerate launch``) takes every item and the gather returns its own records.
"""
from __future__ import annotations


def process_state():
    """accelerate's ``PartialState``: one process and the best device unless launched; launched processes
    without CUDA (``torchrun`` on CPUs, ``accelerate launch --cpu``) join over gloo."""
    import os

    import torch
    from accelerate import PartialState

    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes") or (
        launched and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def my_indices(num_items: int, state) -> list[int]:
    """The item indices this process scores: its block of ``range(num_items)``."""
    from accelerate import PartialState

    with PartialState.split_between_processes(state, list(range(num_items))) as mine:
        return list(mine)


def gather_records(records: list[dict]) -> list[dict]:
    """All processes' records on every process (a no-op in a single process)."""
    from accelerate.utils import gather_object

    return list(gather_object(records))


def merge_records(records: list[dict], num_items: int) -> list[dict]:
    """Records ordered by their ``"index"``; an item missing or scored twice is an error."""
    by_index: dict[int, dict] = {}
    for r in records:
        if r["index"] in by_index:
            raise RuntimeError(f"item {r['index']} was scored by two processes")
        by_index[r["index"]] = r
    missing = sorted(set(range(num_items)) - set(by_index))
    if missing:
        raise RuntimeError(f"items {missing[:10]} came back from no process")
    return [by_index[i] for i in range(num_items)]
