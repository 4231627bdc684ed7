"""One evaluation of a run: every task of the stream scored with the strategy's evaluation model, its
prediction lines (the source of every accuracy in the record). General ability: benchmark/runner/general.py."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from accelerate.utils import gather_object

from benchmark.modeling import scoring
from benchmark.modeling.data import Encoded
from benchmark.records import predictions
from benchmark.records.predictions import PredictionLine
from benchmark.records.schema import EvaluationRow
from benchmark.runner.context import RunContext

if TYPE_CHECKING:
    from benchmark.runner.recipe import RunState
    from strategies.base import Strategy


def evaluate_all(ctx: RunContext, strategy: Strategy, tests: dict[str, list[Encoded]], row: int,
                 after: str, tasks: list[str] | None = None) -> list[PredictionLine]:
    """The stream's tasks that this row of the evaluation schedule scores (all of them by default), seen and
    unseen, with the strategy's evaluation model as eval.mode asks. Returns the prediction lines of all processes
    (benchmark/records/predictions.py), on every process."""
    acc, tok = ctx.accelerator, ctx.tokenizer
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    lines: list[PredictionLine] = []
    ctx.model.eval()
    # every row under the precision training uses, the zero-shot row included, so that FWT compares like with like
    with strategy.eval_model(ctx), acc.autocast():
        for task in (t for t in ctx.stream.tasks if tasks is None or t.name in tasks):
            examples = tests[task.name]
            mine = scoring.shard(examples, acc.process_index, acc.num_processes)
            bar = f"eval {after} {task.name}" if acc.is_local_main_process else None
            answers = [ctx.encoder.answer(label) for label in task.labels]
            with strategy.eval_task(ctx, task.name):  # task-agnostic strategies: no change
                scored = scoring.score_examples(ctx.model, [examples[i] for i in mine], answers, tok.pad_token_id,
                                                tok.eos_token_id, ctx.cfg.eval, ctx.device, decode, bar) if mine else []
            for s in scored:
                s.index = mine[s.index]
            if acc.num_processes > 1:
                scored = gather_object(scored)
            scored.sort(key=lambda s: s.index)
            lines += predictions.example_rows(row, after, task.name, task.labels, task.scored(ctx.cfg.eval.split), scored)
    ctx.model.train()
    return lines


def record_evaluation(ctx: RunContext, state: RunState, lines: list[PredictionLine], row: int, after: str,
                      just_trained: list[str], folder: Path, seconds: float) -> dict[str, list[float | None]]:
    """Accuracy per mode, generation lengths and the anatomy of errors of one evaluation, all computed from its
    prediction lines (so that the files re-score to the record), into the run state with what it cost; the lines
    go to a file."""
    tasks = ctx.stream.task_names
    state.eval_rows.append(EvaluationRow(after=after, cells=len({line["task"] for line in lines}), prompts=len(lines),
                                         generated_tokens=sum(line["gen_tokens"] or 0 for line in lines),
                                         seconds=round(seconds, 3)))
    accs = predictions.accuracies(lines, tasks)
    for mode, values in accs.items():
        state.matrices.setdefault(mode, []).append(values)
    state.generation.append(predictions.generation_stats(lines, tasks))
    state.anatomy.append(predictions.anatomy(lines, {t.name: t.labels for t in ctx.stream.tasks}, just_trained))
    if ctx.accelerator.is_main_process:
        name = predictions.file_name(row)
        sha = predictions.write(folder / name, lines)
        state.predictions = [f for f in state.predictions if f["row"] != row] + [
            {"row": row, "after": after, "file": name, "sha256": sha}]
    return accs
