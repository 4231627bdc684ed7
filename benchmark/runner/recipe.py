"""The training recipe, end to end: load -> evaluate zero-shot -> for each stage (train, evaluate all tasks,
checkpoint) -> metrics -> run record. Strategies act only through their hooks (strategies/base.py); the loop
of one stage is benchmark/runner/loop.py, one evaluation benchmark/runner/evaluate.py, and the record is
assembled by benchmark/records/build.py."""
from __future__ import annotations

import contextlib
import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from benchmark.config import RunConfig, config_dict
from benchmark.errors import PROGRESS
from benchmark.fileio import rng_from_json, rng_to_json
from benchmark.modeling.data import Encoder, use_chat_template
from benchmark.modeling.model import decoder_start, enable_activation_checkpointing, load_model, local_weights_sha256
from benchmark.records import build, predictions, store
from benchmark.records.schema import Setup, Stage
from benchmark.runner import engines, preflight, schedule
from benchmark.runner.checkpoint import Checkpointer
from benchmark.runner.context import RunContext
from benchmark.runner import general
from benchmark.runner.evaluate import evaluate_all, record_evaluation
from benchmark.runner.lock import RunLock
from benchmark.runner.loggers import make_logger
from benchmark.runner.loop import stage_epochs, train_stage
from task_streams import DataConfig, Stream, Task, load_stream

if TYPE_CHECKING:
    from strategies.base import Strategy


@dataclass
class RunPaths:
    """Where one run (a configuration and a seed) keeps its files, computed once."""

    config_hash: str
    seed: int
    results_dir: Path

    @property
    def run_key(self) -> str:
        return f"{self.config_hash}-s{self.seed}"

    @property
    def runs(self) -> Path:
        return self.results_dir / "runs"

    @property
    def checkpoints(self) -> Path:
        return self.results_dir / "checkpoints" / self.run_key


@dataclass
class RunState:
    """What the run has produced so far, saved with every stage's checkpoint (torchtune's named recipe state)."""

    matrices: dict[str, list[list[float]]] = field(default_factory=dict)  # per score mode, one row per evaluation
    generation: list = field(default_factory=list)
    anatomy: list = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)  # the prediction files written, with their sha256
    stage_stats: list[Stage] = field(default_factory=list)
    ppl_before: float | None = None
    general: dict[str, Any] = field(default_factory=dict)  # the record's `general` block so far (lm-eval tasks)
    trained_names: list[str] = field(default_factory=list)  # parameters any stage trained (saved per checkpoint)
    previous_attempts_s: float = 0.0  # wall time of earlier attempts up to their last checkpoint
    resumed_after_stages: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    eval_rows: list[dict] = field(default_factory=list)  # what each evaluation scored and cost
    eval_s: float = 0.0
    estimate_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def run(cfg: RunConfig, strategy: Strategy | None = None) -> Path | None:
    """One run; returns the record path (on the main process). `strategy` overrides cfg.strategy (tests)."""
    t_start = time.perf_counter()
    if cfg.dry_run:
        print(dry_run(cfg, strategy), flush=True)
        return None
    preflight.check(cfg)  # the machine's abilities, before anything loads
    engines.export_submitit_distributed()
    cfg_dict = resolved_config(cfg)
    stream = _stream(cfg)  # read (and hashed) before the identity: its files' content is part of it
    content = content_facts(cfg, cfg_dict, stream)
    paths = RunPaths(store.config_hash(cfg_dict, stream_versions(stream), content), cfg.seed, Path(cfg.results_dir))
    main = engines.launch_rank() == 0
    lock = RunLock(paths.checkpoints) if main else contextlib.nullcontext()
    with lock:  # before loading, so that a second process on this run fails at once
        if cfg.resume:
            done = store.find_finished(paths.runs, paths.config_hash, cfg.seed)
            if done is not None:
                if main:
                    print(f"run {paths.run_key} has already finished: {done} (resume=false runs it again)", flush=True)
                return done if main else None
        return _run_unlocked(cfg, strategy, paths, t_start, stream, content)


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """The run's configuration as the record stores and hashes it: the strategy node holds every field of its
    config dataclass (a YAML that leaves a default out and one that states it make the same run)."""
    # here, not at the top: strategies import benchmark.api, which imports this room
    from strategies.base import complete

    cfg_dict = config_dict(cfg)
    cfg_dict["strategy"] = complete(cfg_dict["strategy"])
    return cfg_dict


def stream_versions(stream: Stream) -> dict[str, int]:
    """{task: version} of the stream's tasks as loaded (a user's own tasks included)."""
    return {t.name: int(t.provenance["version"]) for t in stream.tasks}


def content_facts(cfg: RunConfig, cfg_dict: dict[str, Any], stream: Stream) -> dict[str, Any]:
    """What identifies the run's results beside its config (records.store.CONTENT_FACTS), each only when it
    holds something."""
    from strategies.base import versions_of

    facts = {"strategy_versions": versions_of(cfg_dict["strategy"]),
             "data_files": stream.unlisted,
             "user_tasks": {t.name: t.provenance["declared"] for t in stream.tasks if "declared" in t.provenance},
             "model_weights": local_weights_sha256(cfg.model.name)}
    return {k: v for k, v in facts.items() if v}


def _strategy(cfg: RunConfig, strategy: Strategy | None) -> Strategy:
    # here, not at the top: strategies import benchmark.api, which imports this room
    from strategies.base import build as build_strategy

    return strategy or build_strategy(dict(config_dict(cfg)["strategy"]))  # validates before any loading


def _stream(cfg: RunConfig) -> Stream:
    data_cfg = cfg.data if isinstance(cfg.data, DataConfig) else DataConfig(**config_dict(cfg)["data"])
    return load_stream(cfg.stream.name, data_cfg, tasks=cfg.stream.tasks, missing=cfg.stream.missing)


def dry_run(cfg: RunConfig, strategy: Strategy | None = None) -> str:
    """The run's plan without loading the model: stages, training examples and optimizer steps, and the cells and
    prompts each evaluation scores under eval.schedule (`clbench-run ... dry_run=true`)."""
    strategy, stream = _strategy(cfg, strategy), _stream(cfg)
    stages = strategy.stages(stream.tasks)
    names = [[t.name for t in st] for st in stages]
    resolved = schedule.resolve(cfg.eval, len(stages))
    rows = schedule.plan(names, stream.task_names, resolved, cfg.eval.every_k)
    n_test = {t.name: len(t.scored(cfg.eval.split)) for t in stream.tasks}
    lines = [f"plan of {getattr(strategy, 'name', '?')} on {stream.name} (no model loaded): {len(stages)} stages, "
             f"eval.schedule {cfg.eval.schedule} -> {resolved}",
             f"{'after':<28}{'train examples':>15}{'steps':>8}{'cells':>7}{'prompts':>9}"]
    steps_total = 0
    for i, row in enumerate(rows):
        tasks = stages[i - 1] if i else []
        n_train = sum(len(t.train) for t in tasks)
        steps = schedule.optimizer_steps(n_train, cfg.trainer, stage_epochs(cfg.trainer, tasks)) if i else 0
        steps_total += steps
        after = "+".join(names[i - 1]) if i else "zero-shot"
        lines.append(f"{after[:27]:<28}{n_train:>15}{steps:>8}{len(row):>7}{sum(n_test[t] for t in row):>9}")
    full = len(rows) * len(stream.task_names)
    lines.append(f"total: {steps_total} optimizer steps (before replayed rows), {schedule.cells(rows)} of {full} "
                 f"cells, {sum(n_test[t] for r in rows for t in r)} prompts scored")
    return "\n".join(lines)


def build_context(cfg: RunConfig, strategy: Strategy | None = None,
                  stream: Stream | None = None) -> tuple[RunContext, Strategy, dict]:
    """Accelerator, seed, strategy, stream, model with the strategy's adapters: everything before the first
    evaluation. Shared by `run` and the bench scripts, so that they measure exactly what a run does."""
    cfg_dict = resolved_config(cfg)
    tcfg = cfg.trainer
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    # gradient accumulation is done by train_stage itself (per-stage windows), not by accelerate's counter
    acc = Accelerator(cpu=tcfg.device == "cpu", mixed_precision=tcfg.mixed_precision)
    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(acc.device.type == "cpu", warn_only=True)
    strategy = _strategy(cfg, strategy)
    engines.check_engine(strategy, acc)
    stream = stream or _stream(cfg)
    model, tok, model_info = load_model(cfg.model, seed=cfg.seed)
    chat = use_chat_template(cfg.data.chat_template, tok, cfg.model.name)
    model_info["chat_template"] = chat  # what auto resolved to, for the record and the leaderboard
    encoder = Encoder(tok, tcfg.max_prompt_tokens, chat=chat, decoder_start=decoder_start(model),
                      encoding=cfg.data.prompt_encoding)
    ctx = RunContext(cfg, model, tok, encoder, acc, stream, cfg.seed, model_info=model_info)
    ctx.model = strategy.prepare_model(model, ctx).to(acc.device)
    if tcfg.gradient_checkpointing:
        enable_activation_checkpointing(ctx.model)
    return ctx, strategy, cfg_dict


def _resume(ctx: RunContext, strategy: Strategy, ckpt: Checkpointer) -> tuple[RunState, int]:
    """The run state and the stages done, from the last checkpoint."""
    meta, weights, strat_tensors = ckpt.load()  # also restores the random state saved with the stage
    saved_rng = torch.get_rng_state(), rng_to_json()
    # rebuilding adapters (O-LoRA, IncLoRA) draws their random initialisation; the uninterrupted run drew the
    # next task's adapter from the saved state, so the state is put back after the rebuild
    strategy.load_state_dict(strat_tensors, meta["strategy_meta"], ctx)
    Checkpointer.restore_model(ctx.model, weights)
    torch.set_rng_state(saved_rng[0])
    rng_from_json(saved_rng[1])
    state, done = RunState.from_json(meta["run_state"]), meta["stage"]
    # the record's cost counts every attempt
    state.previous_attempts_s = state.elapsed_s
    state.resumed_after_stages.append(done)
    return state, done


def _run_unlocked(cfg: RunConfig, strategy: Strategy | None, paths: RunPaths, t_start: float, stream: Stream,
                  content: dict[str, Any]) -> Path | None:
    general_tasks = general.prepare(cfg.general)  # their questions drawn (and names checked) before the model loads
    ctx, strategy, cfg_dict = build_context(cfg, strategy, stream)
    acc, stream, encoder = ctx.accelerator, ctx.stream, ctx.encoder
    tests = {t.name: encoder.encode(t, t.scored(cfg.eval.split)) for t in stream.tasks}
    stages = strategy.stages(stream.tasks)
    primary = cfg.eval.primary
    resolved = schedule.resolve(cfg.eval, len(stages))
    plan = schedule.plan([[t.name for t in st] for st in stages], stream.task_names, resolved, cfg.eval.every_k)

    ckpt = Checkpointer(paths.checkpoints)
    pred_dir = ckpt.folder / "predictions"  # kept with the checkpoint until the record is written
    state, start = RunState(), 0
    if cfg.resume and ckpt.latest() is not None:
        state, start = _resume(ctx, strategy, ckpt)
        if acc.is_main_process:
            print(f"resuming {paths.run_key} after stage {start}/{len(stages)} from {ckpt.folder}", flush=True)
    PROGRESS.start(paths.run_key, len(stages), saved=start, resume=cfg.resume)
    trained_names: set[str] = set(state.trained_names)
    ctx.logger = make_logger(cfg, cfg_dict, paths.run_key, acc.is_main_process)

    def evaluate(row: int, after: str, just_trained: list[str]) -> list[float | None]:
        """The row's cells of the schedule, and the lm-eval tasks on general.rows, recorded with what they cost."""
        t0 = time.perf_counter()
        lines = evaluate_all(ctx, strategy, tests, row, after, plan[row])
        seconds = time.perf_counter() - t0
        if row in general_rows:
            general.evaluate_general(ctx, strategy, general_tasks, row, after, pred_dir, state.general)
        state.eval_s += time.perf_counter() - t0
        return record_evaluation(ctx, state, lines, row, after, just_trained, pred_dir, seconds)[primary]

    def perplexity() -> float | None:
        t0 = time.perf_counter()
        ppl = general.general_ppl(ctx, strategy, general_seqs)
        state.eval_s += time.perf_counter() - t0
        return ppl

    general_seqs = general.general_sequences(ctx)
    general_rows = general.rows_to_score(cfg.general, len(stages) + 1)
    if start == 0:
        if acc.is_main_process:
            print(f"{len(stages)} stages; eval.schedule {resolved}: {schedule.cells(plan)} of "
                  f"{len(plan) * len(stream.tasks)} cells (dry_run=true prints the whole plan)", flush=True)
        state.ppl_before = perplexity()
        evaluate(0, "zero-shot", [])
    for s in range(start, len(stages)):
        ctx.stage, ctx.tasks = s + 1, stages[s]
        names = [t.name for t in ctx.tasks]
        strategy.before_stage(ctx)
        items = strategy.train_items(ctx, [e for t in ctx.tasks for e in encoder.encode(t, t.train)])
        trained_names |= {n for n, p in ctx.model.named_parameters() if p.requires_grad}
        stats = train_stage(ctx, strategy, items)
        strategy.after_stage(ctx)
        row = evaluate(s + 1, "+".join(names), names)
        state.stage_stats.append(stats)
        state.trained_names = sorted(trained_names)
        if s == 0 and len(stages) > 1:
            state.estimate_s = _estimate(cfg, stages, plan, state, time.perf_counter() - t_start)
        if acc.is_main_process:
            print(f"stage {s + 1}/{len(stages)} ({'+'.join(names)}): " +
                  " ".join(f"{t.name}={v:.1f}" for t, v in zip(stream.tasks, row) if v is not None), flush=True)
            if s == 0 and state.estimate_s is not None:
                print(f"estimated wall time of the run: {state.estimate_s:.0f} s", flush=True)
            strat_tensors, strat_meta = strategy.state_dict()
            state.elapsed_s = round(state.previous_attempts_s + time.perf_counter() - t_start, 2)
            ckpt.save(s + 1, ctx.model, trained_names, strat_tensors,
                      {"strategy_meta": strat_meta, "run_state": state.to_json()})
        acc.wait_for_everyone()
        PROGRESS.stage_saved(s + 1)
        ctx.logger.log({f"acc/{t.name}": v for t, v in zip(stream.tasks, row) if v is not None})

    scores = build.scores_of(state.matrices, state.ppl_before, perplexity(), state.general)
    # what `target_modules: [auto]` resolved to on this model (adapters may be added per stage: read at the end)
    targets = {t for c in getattr(ctx.model, "peft_config", {}).values() for t in (c.target_modules or ())}
    if targets:
        ctx.model_info["lora_targets"] = sorted(targets)
    rec_path = None
    if acc.is_main_process:
        strategy_name = getattr(strategy, "name", None) or cfg_dict["strategy"]["name"]  # the strategy actually run
        stamp = build.utc_stamp()
        run_id = build.new_run_id(stamp, strategy_name, stream.name, paths.run_key)
        # the prediction files first: a record is written only when everything it names exists
        predictions.remove_stale(paths.runs, paths.run_key)
        published = predictions.publish(state.predictions, pred_dir, paths.runs, run_id,
                                        also=general.general_files(state.general))
        n_trainable = sum(p.numel() for n, p in ctx.model.named_parameters() if n in trained_names)
        record = build.build_record(
            run_id=run_id, created_utc=stamp, config=cfg_dict, config_hash=paths.config_hash,
            stream=stream.describe(), strategy_name=strategy_name,
            task_identity=bool(getattr(strategy, "uses_task_identity", False)), model=ctx.model_info, scores=scores,
            primary=primary, stages=state.stage_stats, generation_rows=state.generation,
            anatomy_rows=state.anatomy, resumed_after_stages=state.resumed_after_stages,
            cost=build.cost_of(state.stage_stats, wall_s=state.previous_attempts_s + time.perf_counter() - t_start,
                               peak_memory_mb=_peak_memory_mb(acc.device), trainable_params=n_trainable,
                               processes=acc.num_processes, device=str(acc.device),
                               mixed_precision=str(acc.mixed_precision)),
            setup=_setup(cfg, acc), provenance=store.provenance(), predictions=published,
            evaluation=build.evaluation_of(resolved, cfg.eval.every_k, state.eval_rows, len(stream.tasks),
                                           state.eval_s, state.estimate_s, scores[primary]),
            identity=content, general=state.general)
        rec_path = store.write_record(record, paths.runs)
        if not cfg.keep_checkpoints:
            ckpt.remove()
        ctx.logger.finish(stream.task_names, record["matrix"]["values"], record["metrics"])
    acc.wait_for_everyone()
    return rec_path


def _estimate(cfg: RunConfig, stages: list[list[Task]], plan: list[list[str]], state: RunState,
              elapsed: float) -> float:
    """The run's wall time, predicted after its first stage from the plan (optimizer steps before replayed rows,
    prompts per evaluation) and the throughput measured so far (training seconds per step, evaluation seconds
    per prompt)."""
    first = state.stage_stats[0]
    per_step = first["seconds"] / max(first["steps"], 1)
    prompts_done = sum(r["prompts"] for r in state.eval_rows)
    per_prompt = state.eval_s / max(prompts_done, 1)
    n_test = {t.name: len(t.scored(cfg.eval.split)) for st in stages for t in st}
    steps_left = sum(schedule.optimizer_steps(sum(len(t.train) for t in st), cfg.trainer, stage_epochs(cfg.trainer, st))
                     for st in stages[1:])
    prompts_left = sum(n_test.get(t, 0) for row in plan[2:] for t in row)
    return round(elapsed + steps_left * per_step + prompts_left * per_prompt, 1)


def _setup(cfg: RunConfig, acc: Accelerator) -> Setup:
    """What changes results at the same global batch (the papers' repositories warn about GPU count)."""
    t = cfg.trainer
    return Setup(world_size=acc.num_processes, per_device_batch=t.batch_size, grad_accum=t.grad_accum,
                 effective_batch=t.batch_size * t.grad_accum * acc.num_processes, model_dtype=cfg.model.dtype,
                 mixed_precision=str(acc.mixed_precision),
                 deterministic_algorithms=torch.are_deterministic_algorithms_enabled(), engine=engines.engine_name(acc))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    # ru_maxrss is in KiB on Linux: the peak resident set of this process
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
