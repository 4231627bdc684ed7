"""State that differs per process (a draw generator seeded by rank, rows from a process's own data shard) in a
checkpoint that the main process alone writes: every process's item is gathered at the end of a stage, on every
process (a collective: call it where every process passes, such as after_stage), and on resume each process
takes its own back. One process gathers nothing and keeps the one-process checkpoint layout."""
from __future__ import annotations

from typing import Any

from benchmark.api import ClbenchError


def gather_each(accelerator, item: Any, gather=None) -> list | None:
    """Every process's `item` in rank order (None on one process). `gather`: accelerate.utils.gather_object
    unless given (tests pass the gathered list)."""
    if accelerator.num_processes < 2:
        return None
    if gather is None:
        from accelerate.utils import gather_object as gather
    return gather([item])


def own_item(items: list | None, rank: int, processes: int, what: str) -> Any:
    """This process's item of what gather_each saved (None for a one-process checkpoint on one process); a
    checkpoint saved by another number of processes stops the resume with one line, as its items cannot be
    dealt out again."""
    saved = 1 if items is None else len(items)
    if saved != processes:
        raise ClbenchError(f"{what} of this checkpoint was saved by {saved} process(es): resume with the same "
                           f"number (this run has {processes}), or start again with resume=false")
    return None if items is None else items[rank]
