"""General ability of the model as it is evaluated for the accuracy matrix: perplexity on held-out chapters of the
general corpus (eval.general_*), and lm-evaluation-harness tasks (config `general`, benchmark/config.py).

lm-eval runs on the model in memory (`HFLM(pretrained=model)`: adapters active, the strategy's `eval_model`, the
training precision), never written to disk, never merged (merging changes the base weights in place, and
unmerging does not restore them exactly).
Its request cache stays off (its keys ignore the model, so two adapters would share scores), and its seeding
and any draw it makes never reach the training random state (benchmark/modeling/model.py isolated_rng). The
local tasks (LOCAL_TASKS) read MMLU from the file task_streams/mmlu.py fetched at set-up, with lm-eval's own MMLU
templates; any other name is an lm-eval task with its data from the hub.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from benchmark.config import GeneralConfig
from benchmark.errors import ClbenchError
from benchmark.modeling import scoring
from benchmark.modeling.model import isolated_rng
from benchmark.records import predictions
from benchmark.records.schema import GeneralRow, GeneralTask
from benchmark.records.store import canonical_json
from benchmark.runner.context import RunContext
from benchmark.runner.loop import reduce_sum
from task_streams import mmlu

if TYPE_CHECKING:
    from strategies.base import Strategy

METRIC = "acc"  # lm-eval's accuracy: the choice of highest summed log-likelihood (what MMLU reports)
# the subject header of lm-eval's MMLU YAMLs (lm_eval/tasks/mmlu/default, .../continuation), per document here
# because one task holds every subject
LETTER_HEADER = "The following are multiple choice questions (with answers) about {{subject}}.\n\n"
CLOZE_HEADER = "The following are questions (with answers) about {{subject}}.\n\n"


def _mmlu_config(name: str, header: str, text: str, choice: Any, target: str) -> dict[str, Any]:
    """An lm-eval task config over the local MMLU file; the templates are lm-eval's own (mmlu/default:
    _default_template_yaml, mmlu/continuation: _continuation_template_yaml)."""
    return {"task": name, "output_type": "multiple_choice", "test_split": "test", "description": header,
            "doc_to_text": text, "doc_to_choice": choice, "doc_to_target": target,
            "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


LOCAL_TASKS: dict[str, dict[str, Any]] = {
    "mmlu": _mmlu_config("mmlu", LETTER_HEADER,
                         "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                         "D. {{choices[3]}}\nAnswer:", ["A", "B", "C", "D"], "answer"),
    "mmlu_cloze": _mmlu_config("mmlu_cloze", CLOZE_HEADER, "Question: {{question.strip()}}\nAnswer:", "{{choices}}",
                               "{{answer}}"),
}


@dataclass
class Prepared:
    """One lm-eval task, its documents chosen once per run."""

    name: str
    config: dict[str, Any]  # lm-eval's task config (a local task's documents are given through custom_dataset)
    ids_sha256: str  # "" for a hub task: its documents are known once it has run
    source: str


def prepare(cfg: GeneralConfig) -> list[Prepared]:
    """The run's lm-eval tasks, their documents drawn (per_subject, seed) before the model loads."""
    if not cfg.tasks:
        return []
    out = []
    for name in cfg.tasks:
        if name in LOCAL_TASKS:
            if cfg.num_fewshot:
                raise ClbenchError(f"general.num_fewshot={cfg.num_fewshot}: the local MMLU file holds the test split "
                                   f"only, so {name} runs zero-shot (general.num_fewshot=0)")
            out.append(_local(name, cfg))
        else:
            out.append(Prepared(name, {}, "", f"hub:{name}"))
    _check_hub_names([p.name for p in out if not p.config])
    return out


@functools.cache
def _task_manager():
    """lm-eval's index of its task YAMLs (about 7 s to build): once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _check_hub_names(names: list[str]) -> None:
    """Every name that is not a local task is one of lm-eval's (its index of task YAMLs; reads no data)."""
    if not names:
        return
    known = set(_task_manager().all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ClbenchError(f"general.tasks: {', '.join(unknown)} is neither a local task ({', '.join(LOCAL_TASKS)}) "
                           f"nor an lm-evaluation-harness task")


def _local(name: str, cfg: GeneralConfig) -> Prepared:
    return local_task(name, mmlu.subset(mmlu.questions(mmlu.fetch()), cfg.per_subject, cfg.seed))


def local_task(name: str, questions: list) -> Prepared:
    """The local task `name` (LOCAL_TASKS) over these MMLU questions (task_streams.mmlu.Question)."""
    docs = [q.doc() for q in questions]

    def dataset(**_: Any) -> dict[str, Any]:
        import datasets

        return {"test": datasets.Dataset.from_list(docs)}

    return Prepared(name, {**LOCAL_TASKS[name], "custom_dataset": dataset}, mmlu.ids_sha256(q.id for q in questions),
                    f"local:{mmlu.MEMBER} sha256:{mmlu.SHA256}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval logs every request batch at INFO and warns about custom datasets: kept to warnings of its own."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _plain(value: Any) -> Any:
    """A task config without what has no stable text: functions (their repr holds an address) and the local
    dataset's loader (lm-eval stores its source text; the documents are identified by ids_sha256 instead)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not callable(v) and k != "custom_dataset"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value if not callable(v)]
    return value


def config_sha256(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(_plain(config)).encode()).hexdigest()


def sample_line(task: str, sample: dict[str, Any]) -> dict[str, Any]:
    """One document of lm-eval's per-sample log, kept to what re-scores it: the document (its id for a local task),
    the target, the log-likelihood of every choice, the metric, and lm-eval's hashes of the prompt and target."""
    doc = sample.get("doc") or {}
    return {"task": task, "doc_id": sample["doc_id"], "id": doc.get("id"), "target": sample.get("target"),
            "loglik": [float(r[0]) for r in sample.get("filtered_resps", [])], METRIC: float(sample[METRIC]),
            "doc_hash": sample.get("doc_hash"), "prompt_hash": sample.get("prompt_hash"),
            "target_hash": sample.get("target_hash")}


def file_name(task: str, row: int) -> str:
    return f"general-{task}-row{row:02d}.jsonl.gz"


def run_lm_eval(ctx: RunContext, strategy: Strategy, prepared: list[Prepared], cfg: GeneralConfig,
                make_lm: Callable[[Any, Any, int], Any] | None = None) -> dict[str, dict[str, Any]]:
    """{task: lm-eval's results for it, with its samples} on the model as evaluated (the strategy's eval_model,
    the training precision), the model's training state and every random generator kept."""
    from lm_eval import evaluator
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    backend = "seq2seq" if ctx.model_info.get("architecture") == "encoder-decoder" else "causal"
    make_lm = make_lm or (lambda model, tok, bs: HFLM(pretrained=model, tokenizer=tok, batch_size=bs, backend=backend))
    was_training = ctx.model.training
    with isolated_rng(cuda=torch.cuda.is_available()), _quiet(), strategy.eval_model(ctx), ctx.accelerator.autocast():
        tasks = {p.name: ConfigurableTask(config=p.config) for p in prepared if p.config}
        tasks.update(_hub_tasks([p.name for p in prepared if not p.config], cfg))
        lm = make_lm(ctx.model, ctx.tokenizer, cfg.batch_size)
        # general.limit is for hub tasks (lm-eval applies it to every task; the local ones are drawn already)
        hub = any(not p.config for p in prepared)
        # lm-eval's default bootstrap setting: a mean's standard error is then its analytic one, sd / sqrt(n)
        out = evaluator.evaluate(lm=lm, task_dict=tasks, limit=cfg.limit if hub else None, log_samples=True,
                                 verbosity="ERROR")
    ctx.model.train(was_training)  # HFLM leaves the model in eval mode
    missing = [p.name for p in prepared if p.name not in out.get("samples", {})]
    if missing:
        raise ClbenchError(f"general.tasks: {', '.join(missing)} is an lm-eval group, not a task; name its tasks")
    return {p.name: {"results": out["results"][p.name], "version": out["versions"].get(p.name),
                     "config": out["configs"].get(p.name, {}), "samples": out["samples"][p.name]} for p in prepared}


def _hub_tasks(names: list[str], cfg: GeneralConfig) -> dict[str, Any]:
    """lm-eval's own tasks (their data from the hub), at general.num_fewshot shots."""
    if not names:
        return {}
    from lm_eval.tasks import get_task_dict

    try:
        tasks = get_task_dict(names, _task_manager())
    except Exception as e:  # noqa: BLE001  (the hub, the datasets library or the task's own code: one line)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ClbenchError(f"general.tasks: lm-eval could not load {', '.join(names)} ({type(e).__name__}: {first}); "
                           f"without hub access only the local tasks ({', '.join(LOCAL_TASKS)}) run") from None
    for task in tasks.values():
        if hasattr(task, "set_config") and cfg.num_fewshot:
            task.set_config(key="num_fewshot", value=cfg.num_fewshot)
    return tasks


def evaluate_general(ctx: RunContext, strategy: Strategy, prepared: list[Prepared], row: int, after: str,
                     folder: Path, blocks: dict[str, GeneralTask], runner=run_lm_eval) -> None:
    """The lm-eval tasks on the model as evaluated now: each task's row (score, standard error, documents, its
    per-sample log written beside the prediction files) added to `blocks`, the record's `general` block."""
    if not prepared:
        return
    cfg = ctx.cfg.general
    found = runner(ctx, strategy, prepared, cfg)
    for p in prepared:
        res = found[p.name]
        lines = [sample_line(p.name, s) for s in sorted(res["samples"], key=lambda s: s["doc_id"])]
        name = file_name(p.name, row)
        sha = predictions.write(folder / name, lines) if ctx.accelerator.is_main_process else ""
        score, stderr = res["results"][f"{METRIC},none"], res["results"].get(f"{METRIC}_stderr,none")
        block = blocks.setdefault(p.name, GeneralTask(
            metric=METRIC, version=None if res["version"] is None else str(res["version"]),
            config_sha256=config_sha256(res["config"]), documents=len(lines),
            ids_sha256=p.ids_sha256 or mmlu.ids_sha256(line["doc_id"] for line in lines), source=p.source, rows=[]))
        block["rows"] = [r for r in block["rows"] if r["row"] != row] + [GeneralRow(
            row=row, after=after, score=round(100.0 * float(score), 6),
            stderr=round(100.0 * float(stderr), 6) if isinstance(stderr, (int, float)) else 0.0,
            n=len(lines), file=name, sha256=sha)]


def general_files(blocks: dict[str, GeneralTask]) -> list[dict[str, Any]]:
    """The per-sample logs the blocks name, as predictions.publish copies them."""
    return [{"file": r["file"], "sha256": r["sha256"]} for b in blocks.values() for r in b["rows"]]


def rows_to_score(cfg: GeneralConfig, n_rows: int) -> set[int]:
    """The evaluation rows after which the lm-eval tasks run: every one, or the zero-shot and the last."""
    return set(range(n_rows)) if cfg.rows == "all" else {0, n_rows - 1}


# ---------------------------------------------------------------- the general corpus' perplexity


def general_sequences(ctx: RunContext) -> list[tuple[int, ...]]:
    """The general-ability passages (eval.general_passages of the general corpus), tokenised."""
    if not ctx.cfg.eval.general_passages:
        return []
    from task_streams import general

    texts = general.passages("eval", ctx.cfg.eval.general_passages)
    return ctx.encoder.encode_texts(texts, ctx.cfg.eval.general_tokens)


def general_ppl(ctx: RunContext, strategy: Strategy, seqs: list[tuple[int, ...]]) -> float | None:
    if not seqs:
        return None
    ctx.model.eval()
    with strategy.eval_model(ctx), ctx.accelerator.autocast():
        mine = seqs[ctx.accelerator.process_index :: ctx.accelerator.num_processes]
        total, count = scoring.nll_sum(ctx.model, mine, ctx.tokenizer.pad_token_id, ctx.cfg.eval.batch_size, ctx.device,
                                       ctx.tokenizer.eos_token_id)
    ctx.model.train()
    total, count = reduce_sum(ctx.accelerator, [total, count])
    ppl = scoring.perplexity(total, int(count))
    return None if ppl is None else round(ppl, 4)
