"""Which cells of the accuracy matrix each evaluation scores (`eval.schedule`).

The papers evaluate each task after learning it and every task at the end. AA, BWT, learning accuracy and FWT
read only the zero-shot row, the cell of each task right after its stage (the diagonal), the cell just before its
stage and the final row: about 4T cells instead of (T+1) x T, 54 instead of 210 for order 6's 14 tasks. Metrics
that need the other cells (forgetting's max over rows, average incremental accuracy, per-task curves) are then
null, never computed from cells that were not evaluated.

    full      every task after every stage
    papers    row 0 and the final row whole; after stage s, the tasks just trained and those of stage s + 1
    every_k   papers, plus a whole row after every k-th stage
    auto      full for streams of up to AUTO_FULL_STAGES stages (the demo and the CPU cuts: every cell is cheap,
              and forgetting and the curves need them), papers beyond (the long streams, where evaluation would
              otherwise be most of a run)

Pure Python: the dry run plans without torch's model.
"""
from __future__ import annotations

import math

from benchmark.config import AUTO_FULL_STAGES, EvalConfig, TrainerConfig


def resolve(cfg: EvalConfig, n_stages: int) -> str:
    """The schedule that runs (auto resolved by the number of stages)."""
    if cfg.schedule == "auto":
        return "full" if n_stages <= AUTO_FULL_STAGES else "papers"
    return cfg.schedule


def plan(stages: list[list[str]], tasks: list[str], schedule: str, every_k: int = 1) -> list[list[str]]:
    """The tasks each evaluation scores, in stream order: row 0 (zero-shot), then one row per stage."""
    rows = [list(tasks)]
    for s in range(1, len(stages) + 1):
        whole = schedule == "full" or s == len(stages) or (schedule == "every_k" and s % every_k == 0)
        wanted = set(tasks) if whole else set(stages[s - 1]) | set(stages[s])
        rows.append([t for t in tasks if t in wanted])
    return rows


def cells(rows: list[list[str]]) -> int:
    return sum(len(r) for r in rows)


def optimizer_steps(n_examples: int, tcfg: TrainerConfig, epochs: int) -> int:
    """Optimizer steps of a stage of n_examples on one process (loop.train_stage's windows, before a strategy
    adds rows of its own)."""
    micro = math.ceil(n_examples / tcfg.batch_size) * epochs
    if tcfg.max_steps_per_task:
        micro = min(micro, tcfg.max_steps_per_task * tcfg.grad_accum)
    return math.ceil(micro / tcfg.grad_accum)
