"""Continual-learning metrics from the accuracy matrix.

Notation: T tasks, R a (S+1) x T matrix of accuracies in percent. Row 0 is the model before any training
(zero-shot); row s is the model after training stage s. For sequential strategies S = T and task i (0-based)
is learned in stage i+1, so a_{t,i} of the papers (1-based t) is R[t, i]. MTL has one stage (S = 1): only the
final-row metrics are defined for it, the others are None.

All averages are macro (mean of per-task scores), as the O-LoRA/MIGU/GeRe papers report, never pooled over
examples.

A cell that was not evaluated (eval.schedule papers or every_k: benchmark/runner/schedule.py) is None; a metric
that would read one is None too, never computed from the cells that happen to be there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

Matrix = Sequence[Sequence[float]]


@dataclass(frozen=True)
class Metric:
    """What every reader needs to know of a metric, stated once (lm-evaluation-harness declares each metric
    with its direction the same way). The schema test, the leaderboard, the claims and the CLI derive from it."""

    key: str
    label: str
    unit: str  # "points" (accuracy %, or differences of it) | "fraction" (shown as %)
    higher_is_better: Optional[bool]  # None: no direction (a descriptive number)
    signed: bool = False  # shown with its sign (+/-): a change or a transfer
    paired: bool = False  # compared with the baseline strategy, paired over seeds
    quality: bool = False  # a column of the leaderboard's quality block (and claimable)

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "fraction" else 1.0

    def text(self, v: Optional[float]) -> str:
        """The value as tables and claims print it: 2 decimals, % for fractions, a sign when signed."""
        if v is None:
            return "–"
        return f"{v * self.scale:+.2f}" if self.signed else f"{v * self.scale:.2f}"


# every key of records.schema.Metrics, in the order tables show them
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("aa", "AA", "points", True, paired=True, quality=True),
    Metric("bwt", "BWT", "points", True, signed=True, paired=True, quality=True),
    Metric("fwt", "FWT", "points", True, signed=True, paired=True, quality=True),
    Metric("forgetting", "Forgetting", "points", False, paired=True, quality=True),
    Metric("ppl_rel_change", "Gen. ppl change", "fraction", False, signed=True, quality=True),
    # lm-eval general tasks (MMLU): mean score after the last stage minus before training, in points
    Metric("general_change", "General (lm-eval) change", "points", True, signed=True, paired=True, quality=True),
    Metric("learning_accuracy", "Learning accuracy", "points", True),
    Metric("avg_incremental_accuracy", "Avg. incremental accuracy", "points", True),
    Metric("zero_shot_aa", "Zero-shot AA", "points", True),
    Metric("ppl_before", "Gen. ppl before", "perplexity", None),
    Metric("ppl_after", "Gen. ppl after", "perplexity", None),
    Metric("fwt_vs_single_task", "FWT vs single-task", "points", True, signed=True),
    Metric("general_before", "General (lm-eval) before", "points", True),
    Metric("general_after", "General (lm-eval) after", "points", True),
)}
QUALITY = [m for m in METRICS.values() if m.quality]
PAIRED = [m.key for m in METRICS.values() if m.paired]


def _sequential(R: Matrix) -> bool:
    return len(R) == len(R[0]) + 1


class _Missing(Exception):
    """A metric read a cell that was not evaluated."""


def _cells(values) -> list[float]:
    values = list(values)
    if any(v is None for v in values):
        raise _Missing
    return values


def _defined(fn, *args) -> Optional[float]:
    try:
        return fn(*args)
    except _Missing:
        return None


def missing_cells(R: Matrix) -> bool:
    return any(v is None for row in R for v in row)


# the metrics that read cells the papers' schedule does not evaluate (and the reason a record gives for their null)
NEEDS_EVERY_ROW = {"forgetting": "reads every row after a task's stage; this schedule did not evaluate them all",
                   "avg_incremental_accuracy": "reads every row's seen tasks; this schedule did not evaluate them all"}


def average_accuracy(R: Matrix) -> float:
    """AA / ACC / OP / AP = (1/T) sum_i R[T, i]: mean accuracy over all tasks after the last stage."""
    last = _cells(R[-1])
    return sum(last) / len(last)


def learning_accuracy(R: Matrix) -> Optional[float]:
    """LA (Riemer et al. 2019) = (1/T) sum_i R[i+1, i]: accuracy on each task right after learning it."""
    if not _sequential(R):
        return None
    T = len(R[0])
    return sum(_cells(R[i + 1][i] for i in range(T))) / T


def backward_transfer(R: Matrix) -> Optional[float]:
    """BWT (Lopez-Paz & Ranzato 2017) = 1/(T-1) sum_{i<T-1} (R[T, i] - R[i+1, i]); negative = forgetting.

    The denominator is T-1 (the last task cannot be forgotten yet).
    """
    if not _sequential(R) or len(R[0]) < 2:
        return None
    T = len(R[0])
    return sum(a - b for a, b in zip(_cells(R[T][:T - 1]), _cells(R[i + 1][i] for i in range(T - 1)))) / (T - 1)


def forgetting(R: Matrix) -> Optional[float]:
    """Average forgetting (Chaudhry et al. 2018): f_i = max_{l in [i+1, T-1]} R[l, i] - R[T, i], F = mean_{i<T-1} f_i.

    The max runs over the rows after task i was learned and before the last one, so F >= -BWT.
    """
    if not _sequential(R) or len(R[0]) < 2:
        return None
    T = len(R[0])
    return sum(max(_cells(R[l][i] for l in range(i + 1, T))) - _cells([R[T][i]])[0] for i in range(T - 1)) / (T - 1)


def forward_transfer(R: Matrix, reference: Optional[Sequence[float]] = None) -> Optional[float]:
    """Forward transfer, in one of two stated forms.

    reference None (GEM form, against the zero-shot row): FWT = 1/(T-1) sum_{i>=1} (R[i, i] - R[0, i]),
    the accuracy on task i after training on the tasks before it, minus the untrained model's.
    reference given (single-task fine-tuned accuracies a~_i): FWT = (1/T) sum_i (R[i+1, i] - a~_i).
    """
    if not _sequential(R):
        return None
    T = len(R[0])
    if reference is not None:
        return sum(v - reference[i] for i, v in enumerate(_cells(R[i + 1][i] for i in range(T)))) / T
    if T < 2:
        return None
    return sum(a - b for a, b in zip(_cells(R[i][i] for i in range(1, T)), _cells(R[0][1:]))) / (T - 1)


def average_incremental_accuracy(R: Matrix) -> Optional[float]:
    """(1/T) sum_t (1/t) sum_{i<t} R[t, i]: mean over stages of the accuracy on the tasks seen so far."""
    if not _sequential(R):
        return None
    T = len(R[0])
    return sum(sum(_cells(R[t][:t])) / t for t in range(1, T + 1)) / T


def general_retention(ppl_before: Optional[float], ppl_after: Optional[float]) -> dict[str, Optional[float]]:
    """General-ability retention on the general corpus: perplexity before/after and the relative change."""
    if ppl_before is None or ppl_after is None or math.isnan(ppl_before) or math.isnan(ppl_after):
        return {"ppl_before": ppl_before, "ppl_after": ppl_after, "ppl_rel_change": None}
    return {"ppl_before": ppl_before, "ppl_after": ppl_after, "ppl_rel_change": ppl_after / ppl_before - 1.0}


GENERAL_KEYS = ("general_before", "general_after", "general_change")  # what general_scores gives


def general_rows(general: dict) -> dict[str, list[float]]:
    """{task: its score per evaluated row, in row order} of a record's `general` block: what general_scores reads."""
    return {task: [r["score"] for r in sorted(block["rows"], key=lambda r: r["row"])] for task, block in general.items()}


def general_scores(rows: dict[str, list[Optional[float]]]) -> dict[str, Optional[float]]:
    """General ability through lm-eval: {task: its score per evaluated row, zero-shot first and the last stage's
    last} -> the mean over tasks before training, after the last stage, and the change (points); {} without
    tasks, so that records of runs without lm-eval tasks carry none of these keys."""
    if not rows:
        return {}
    before = sum(r[0] for r in rows.values()) / len(rows)
    after = sum(r[-1] for r in rows.values()) / len(rows)
    return dict(zip(GENERAL_KEYS, (round(before, 6), round(after, 6), round(after - before, 6))))


def all_metrics(R: Matrix, reference: Optional[Sequence[float]] = None) -> dict[str, Optional[float]]:
    out = {
        "aa": _defined(average_accuracy, R),
        "bwt": _defined(backward_transfer, R),
        "fwt": _defined(forward_transfer, R),
        "forgetting": _defined(forgetting, R),
        "learning_accuracy": _defined(learning_accuracy, R),
        "avg_incremental_accuracy": _defined(average_incremental_accuracy, R),
        "zero_shot_aa": _defined(lambda M: sum(_cells(M[0])) / len(M[0]), R),
    }
    if reference is not None:
        out["fwt_vs_single_task"] = _defined(forward_transfer, R, reference)
    return {k: (None if v is None else round(v, 6)) for k, v in out.items()}
