"""The one producer of a run record: `build_record(...) -> RunRecord`, typed with the schema so that the writer
and benchmark/records/schema.py cannot drift (lm-evaluation-harness annotates its results the same way). The
runner measures; this module assembles. Pure Python: it needs no torch."""
from __future__ import annotations

import random
import time
from typing import Any

from benchmark.records import predictions as predictions_mod
from benchmark.records import store
from benchmark.records.metrics import NEEDS_EVERY_ROW, all_metrics, general_retention, general_rows, general_scores, missing_cells
from benchmark.records.schema import (SCHEMA, Anatomy, Cost, Evaluation, EvaluationRow, GeneralTask, GenerationStats, Identity, Matrix, MatrixBlock, Model, Predictions,
                                      Provenance, RunRecord, Score, ScoreMode, Setup, Stage, Stream, TaskAnatomy)


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def new_run_id(stamp: str, strategy: str, stream: str, run_key: str) -> str:
    """Unique and sortable by creation time; the random tail (from the OS, not the run's random state) keeps two
    runs of one configuration started in the same second apart."""
    return f"{stamp}-{strategy}-{stream}-{run_key}-{random.Random().getrandbits(24):06x}"


def scores_of(matrices: dict[str, Matrix], ppl_before: float | None, ppl_after: float | None,
              general: dict[str, GeneralTask] | None = None) -> dict[ScoreMode, Score]:
    """Each computed mode's matrix with its metrics (the general-ability ones, perplexity and lm-eval tasks, are
    the same for both)."""
    retention = {**general_retention(ppl_before, ppl_after), **general_scores(general_rows(general or {}))}
    return {m: Score(values=R, metrics={**all_metrics(R), **retention}) for m, R in matrices.items()}


def cost_of(stages: list[Stage], *, wall_s: float, peak_memory_mb: float, trainable_params: int, processes: int,
            device: str, mixed_precision: str) -> Cost:
    train_s = sum(s["seconds"] for s in stages)
    tokens = sum(s["answer_tokens"] for s in stages)
    return Cost(wall_s=round(wall_s, 2), train_s=round(train_s, 2),
                answer_tokens_per_s=round(tokens / train_s, 2) if train_s else None, peak_memory_mb=peak_memory_mb,
                trainable_params=trainable_params, processes=processes, device=device, mixed_precision=mixed_precision)


def evaluation_of(schedule: str, every_k: int, rows: list[EvaluationRow], n_tasks: int, eval_s: float,
                  estimate_s: float | None, primary: Score) -> Evaluation:
    """What the evaluations scored and cost, and which metrics are null for cells the schedule did not score."""
    missing = missing_cells(primary["values"])
    return Evaluation(schedule=schedule, every_k=every_k, cells=sum(r["cells"] for r in rows),
                      full_cells=len(primary["values"]) * n_tasks, rows=rows, eval_s=round(eval_s, 2),
                      estimate_s=estimate_s,
                      unavailable={k: why for k, why in NEEDS_EVERY_ROW.items()
                                   if missing and primary["metrics"].get(k) is None})


def build_record(*, run_id: str, created_utc: str, config: dict[str, Any], config_hash: str, stream: Stream,
                 strategy_name: str, task_identity: bool, model: Model, scores: dict[ScoreMode, Score], primary: ScoreMode,
                 stages: list[Stage], generation_rows: list[dict[str, GenerationStats] | None],
                 anatomy_rows: list[dict[str, TaskAnatomy] | None], resumed_after_stages: list[int], cost: Cost,
                 setup: Setup, provenance: Provenance, predictions: Predictions, evaluation: Evaluation,
                 identity: Identity, general: dict[str, GeneralTask] | None = None) -> RunRecord:
    """The record of a finished run. `config` is stored without its LOCATIONS (a record names no local path);
    `identity` holds the content facts that, with the config, made `config_hash`."""
    config = store.without_locations(config)
    matrix = MatrixBlock(rows=["zero-shot"] + ["+".join(s["tasks"]) for s in stages], columns=stream["tasks"],
                         values=scores[primary]["values"], unit="accuracy %")
    anatomy = Anatomy(rows=anatomy_rows, summary=predictions_mod.summarize_anatomy(
        anatomy_rows, [t for st in stages[:-1] for t in st["tasks"]]))
    record = RunRecord(
        schema=SCHEMA,
        run_id=run_id,
        created_utc=created_utc,
        config=config,
        config_hash=config_hash,
        seed=config["seed"],
        stream=stream,
        strategy={"name": strategy_name, "config": config["strategy"], "task_identity": task_identity},
        model=model,
        eval_mode=config["eval"]["mode"],
        matrix=matrix,
        metrics=scores[primary]["metrics"],
        # how prompts were presented: data.chat_template as asked and what it resolved to for this tokenizer
        prompt_format={"chat_template": config["data"]["chat_template"], "applied": model["chat_template"]},
        generation={"max_new_tokens": config["eval"]["max_new_tokens"], "rows": generation_rows},
        anatomy=anatomy,
        resumed={"after_stages": resumed_after_stages, "attempts": 1 + len(resumed_after_stages)},
        cost=cost,
        stages=stages,
        setup=setup,
        provenance=provenance,
        scores=scores,
        primary_mode=primary,
        predictions=predictions,
        evaluation=evaluation,
        identity=identity,
    )
    if general:  # only runs with lm-eval tasks carry the block
        record["general"] = general
    return record
