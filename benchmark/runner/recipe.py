"""The training recipe, end to end: load -> evaluate zero-shot -> for each stage (train, evaluate all tasks,
checkpoint) -> metrics -> run record. Strategies act only through their hooks (strategies/base.py)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from benchmark import evaluation, predictions, preflight, records
from benchmark.checkpoint import Checkpointer
from benchmark.errors import PROGRESS, ClbenchError
from benchmark.lock import RunLock
from benchmark.config import RunConfig
from benchmark.data import IGNORE, MODEL_INPUTS, Encoded, Encoder, length_bucketed_batches, use_chat_template
from benchmark.metrics import all_metrics, general_retention
from benchmark.model import decoder_start, enable_activation_checkpointing, load_model
from strategies.base import build as build_strategy
from task_streams import DataConfig, Stream, Task, load_stream


@dataclass
class RunContext:
    """What the hooks see. `model` is the unwrapped model; `train_model` the (possibly DDP-wrapped) one."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    encoder: Encoder
    accelerator: Accelerator
    stream: Stream
    seed: int
    stage: int = 0  # 1-based index of the stage being trained (0 before training)
    tasks: list[Task] = field(default_factory=list)  # tasks of the current stage
    optimizer: Any = None
    train_model: Any = None
    step: int = 0  # optimizer steps in this stage
    task_ce: torch.Tensor | None = None  # answer cross-entropy of the batch being trained, before any strategy term
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def log(self, key: str, value) -> None:
        # kept as tensors: converting here would force a device sync on every step
        self.logs[key] = value.detach() if torch.is_tensor(value) else torch.tensor(float(value))

    def forward(self, batch: dict[str, torch.Tensor], model=None, **kw):
        """Forward a batch (on any device) through the training model (or `model`)."""
        batch = {k: v.to(self.device) for k, v in batch.items() if k in MODEL_INPUTS}
        return (model or self.train_model or self.model)(**batch, **kw)


def _base_model(model):
    """The transformers model under DDP and PEFT wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.lru_cache(maxsize=None)
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def answer_loss(ctx: RunContext, batch: dict[str, torch.Tensor], need_hidden: bool):
    """Mean cross-entropy over answer tokens only, projecting onto the vocabulary only the positions that
    predict an answer token somewhere in the batch (rows are length-bucketed, so that span is short). An
    encoder-decoder model's decoder reads the answer only, so all of its positions are projected."""
    if "decoder_input_ids" in batch:
        out = ctx.forward(batch, output_hidden_states=need_hidden)
        labels = batch["labels"].to(ctx.device)
        ce = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                                               ignore_index=IGNORE)
        return ce, out
    # the answer span is found on the host copy of the labels: on an accelerator these int() calls would
    # otherwise wait for the device at every step
    is_answer = batch["labels"].cpu() != IGNORE
    first = int(is_answer.int().argmax(-1).min())
    last = int(is_answer.shape[1] - 1 - is_answer.flip(-1).int().argmax(-1).min())
    labels = batch["labels"].to(ctx.device)
    if _forward_takes(type(_base_model(ctx.train_model or ctx.model)), "logits_to_keep"):
        keep = torch.arange(first - 1, last, device=ctx.device)  # position p predicts token p + 1
        out = ctx.forward(batch, logits_to_keep=keep, output_hidden_states=need_hidden)
        logits = out.logits
    else:
        out = ctx.forward(batch, output_hidden_states=need_hidden)
        logits = out.logits[:, first - 1 : last]
    target = labels[:, first : last + 1]
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    return ce, out


def _stage_batches(items: list[Encoded], cfg: RunConfig, stage: int, epoch: int, world: int, rank: int) -> list[list[Encoded]]:
    """The same global batch list on every process (seeded), each process taking its rows of every batch."""
    lengths = [len(e.prompt) + len(e.answer) for e in items]
    global_bs = cfg.trainer.batch_size * world
    seed = hash((cfg.seed, stage, epoch)) & 0xFFFFFFFF
    batches = length_bucketed_batches(lengths, global_bs, seed=seed)
    batches = [b for b in batches if len(b) >= world]
    return [[items[i] for i in b[rank::world]] for b in batches]


def _trainable_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def stage_epochs(tcfg, tasks: list[Task]) -> int:
    """trainer.epochs, or a task's own count from trainer.epochs_per_task for a one-task stage (O-LoRA's
    long-benchmark script trains MNLI for 2 epochs)."""
    if len(tasks) == 1:
        return int(tcfg.epochs_per_task.get(tasks[0].name, tcfg.epochs))
    return tcfg.epochs


class TrainingDiverged(ClbenchError, RuntimeError):
    """A non-finite loss: the run stops rather than publish numbers of a broken model."""


def accumulation_windows(n_micro: int, grad_accum: int) -> list[range]:
    """Micro-batch indices of each optimizer step of a stage: full windows, then the stage's own remainder."""
    return [range(i, min(i + grad_accum, n_micro)) for i in range(0, n_micro, grad_accum)]


def train_stage(ctx: RunContext, strategy, items: list[Encoded]) -> dict[str, Any]:
    """One stage. Gradient accumulation is owned here, not by accelerate's counter: every stage starts with no
    gradient and a fresh window, steps its own remainder, and ends with no gradient. Each micro-batch's loss is
    weighted by its share of the window's answer tokens (over all processes), so batch b x accumulation k trains
    exactly like batch k*b, and a strategy's per-step terms count once per step."""
    cfg, acc = ctx.cfg, ctx.accelerator
    tcfg = cfg.trainer
    model = ctx.model
    model.train()
    params = _trainable_params(model)
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    epochs = stage_epochs(tcfg, ctx.tasks)
    batches = [b for ep in range(epochs) for b in _stage_batches(items, cfg, ctx.stage, ep, acc.num_processes, acc.process_index)]
    if tcfg.max_steps_per_task:
        batches = batches[: tcfg.max_steps_per_task * tcfg.grad_accum]
    windows = accumulation_windows(len(batches), tcfg.grad_accum)
    warmup = int(tcfg.warmup_ratio * len(windows))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ctx.train_model, ctx.optimizer = acc.prepare(model, optimizer)
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.step = 0
    need_hidden = strategy.needs_hidden_states
    tokens = padded = 0
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=ctx.device)
    first_bad = None  # optimizer step of the first non-finite loss, checked once per log interval (a host sync)
    bad = torch.zeros((), dtype=torch.bool, device=ctx.device)
    bar = tqdm(total=len(windows), desc=f"train {ctx.stage}/{len(ctx.stream.tasks)} {'+'.join(t.name for t in ctx.tasks)}",
               disable=not acc.is_local_main_process, leave=False, file=sys.stdout)
    for w, window in enumerate(windows):
        # batches first (the strategy may append replayed rows), so the window's answer tokens are known
        prepared = []
        for i in window:
            batch = ctx.encoder.collate(batches[i])
            prepared.append((batches[i], strategy.train_batch(ctx, batch, batches[i])))
        counts = [int((b["labels"] != IGNORE).sum()) for _, b in prepared]
        window_tokens = _reduce_sum(acc, [float(sum(counts))])[0]
        for j, ((_, batch), n) in enumerate(zip(prepared, counts)):
            last = j == len(prepared) - 1
            # gradients are all-reduced only on the window's last micro-batch
            sync = contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(ctx.train_model)
            with sync:
                with acc.autocast():
                    ce, out = answer_loss(ctx, batch, need_hidden)
                    ctx.task_ce = ce
                    ctx.log("ce", ce)
                    loss = strategy.loss(ctx, batch, out, ce)
                # DDP averages gradients over processes: the factor world makes that a token-weighted sum
                acc.backward(loss * (n * acc.num_processes / window_tokens))
            tokens += n
            padded += sum(batch[k].numel() for k in ("input_ids", "decoder_input_ids") if k in batch)
            loss_sum += loss.detach()
            bad |= ~torch.isfinite(loss.detach())
        ctx.task_ce = None
        strategy.before_optimizer_step(ctx)  # before clipping: a masked gradient must not count in the norm
        if tcfg.max_grad_norm:
            acc.clip_grad_norm_(params, tcfg.max_grad_norm)
        strategy.optimizer_step(ctx)
        strategy.after_optimizer_step(ctx)
        scheduler.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.step += 1
        bar.update(1)
        if ctx.step % tcfg.log_every == 0 or w == len(windows) - 1:
            if bool(bad):
                first_bad = ctx.step
                break
            logs = {k: round(float(v), 4) for k, v in ctx.logs.items()}
            bar.set_postfix(loss=round(float(loss.detach()), 4))
            _log_wandb(ctx, {f"train/{k}": v for k, v in logs.items()})
    bar.close()
    ctx.train_model = acc.unwrap_model(ctx.train_model, keep_fp32_wrapper=False)
    if first_bad is not None:
        raise TrainingDiverged(f"training diverged: non-finite loss at stage {ctx.stage} "
                               f"({'+'.join(t.name for t in ctx.tasks)}) by optimizer step {first_bad}; "
                               f"lower trainer.lr (now {tcfg.lr:g}); finished stages are kept in the checkpoint")
    if acc.device.type != "cpu":  # returns the optimizer's device memory; on CPU it is only a 0.25 s gc.collect
        acc.free_memory()
    secs = time.perf_counter() - t0
    return {"steps": ctx.step, "micro_batches": len(batches), "epochs": epochs, "seconds": round(secs, 3),
            "answer_tokens": tokens, "padded_tokens": padded,
            "answer_tokens_per_s": round(tokens / secs, 2) if secs else None,
            "padded_tokens_per_s": round(padded / secs, 2) if secs else None,
            "mean_loss": round(float(loss_sum) / max(len(batches), 1), 5), "examples": len(items)}


def _reduce_sum(acc: Accelerator, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.tolist()


def evaluate_all(ctx: RunContext, strategy, tests: dict[str, list[Encoded]], row: int, after: str) -> list[dict]:
    """Every task of the stream, seen and unseen, scored with the strategy's evaluation model as eval.mode asks.
    Returns the prediction lines of all processes (benchmark/predictions.py), on every process."""
    acc, tok = ctx.accelerator, ctx.tokenizer
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    lines: list[dict] = []
    ctx.model.eval()
    # every row under the precision training uses, the zero-shot row included, so that FWT compares like with like
    with strategy.eval_model(ctx), acc.autocast():
        for task in ctx.stream.tasks:
            examples = tests[task.name]
            mine = evaluation.shard(examples, acc.process_index, acc.num_processes)
            bar = f"eval {after} {task.name}" if acc.is_local_main_process else None
            answers = [ctx.encoder.answer(l) for l in task.labels]
            scored = evaluation.score_examples(ctx.model, [examples[i] for i in mine], answers, tok.pad_token_id,
                                               tok.eos_token_id, ctx.cfg.eval, ctx.device, decode, bar) if mine else []
            for s in scored:
                s.index = mine[s.index]
            if acc.num_processes > 1:
                scored = gather_object(scored)
            scored.sort(key=lambda s: s.index)
            lines += predictions.example_rows(row, after, task.name, task.labels, task.test, scored)
    ctx.model.train()
    return lines


def record_evaluation(ctx: RunContext, state: dict, lines: list[dict], row: int, after: str,
                      just_trained: list[str], folder: Path) -> dict[str, list[float]]:
    """Accuracy per mode, generation lengths and the anatomy of errors of one evaluation, all computed from its
    prediction lines (so that the files re-score to the record), into the run state; the lines go to a file."""
    tasks = ctx.stream.task_names
    accs = predictions.accuracies(lines, tasks)
    for mode, values in accs.items():
        state["matrices"].setdefault(mode, []).append(values)
    state["generation"].append(predictions.generation_stats(lines, tasks))
    state["anatomy"].append(predictions.anatomy(lines, {t.name: t.labels for t in ctx.stream.tasks}, just_trained))
    if ctx.accelerator.is_main_process:
        name = predictions.file_name(row)
        sha = predictions.write(folder / name, lines)
        state["predictions"] = [f for f in state["predictions"] if f["row"] != row] + [
            {"row": row, "after": after, "file": name, "sha256": sha}]
    return accs


def general_ppl(ctx: RunContext, strategy, seqs) -> float | None:
    if not seqs:
        return None
    ctx.model.eval()
    with strategy.eval_model(ctx), ctx.accelerator.autocast():
        mine = seqs[ctx.accelerator.process_index :: ctx.accelerator.num_processes]
        total, count = evaluation.nll_sum(ctx.model, mine, ctx.tokenizer.pad_token_id, ctx.cfg.eval.batch_size, ctx.device,
                                          ctx.tokenizer.eos_token_id)
    ctx.model.train()
    total, count = _reduce_sum(ctx.accelerator, [total, count])
    ppl = evaluation.perplexity(total, int(count))
    return None if ppl is None else round(ppl, 4)


def _rng_state() -> tuple:
    return torch.get_rng_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])


def _log_wandb(ctx: RunContext, values: dict[str, Any]) -> None:
    run = getattr(ctx, "_wandb", None)
    if run is not None:
        run.log(values)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    # ru_maxrss is in KiB on Linux: the peak resident set of this process
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _general_sequences(ctx: RunContext) -> list[tuple[int, ...]]:
    if not ctx.cfg.eval.general_passages:
        return []
    from task_streams import general

    texts = general.passages("eval", ctx.cfg.eval.general_passages)
    return ctx.encoder.encode_texts(texts, ctx.cfg.eval.general_tokens)


def config_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True) if not isinstance(cfg, dict) else cfg


def engine_name(acc: Accelerator) -> str:
    return str(acc.distributed_type.value if hasattr(acc.distributed_type, "value") else acc.distributed_type).lower()


def requested_engine() -> str | None:
    """The sharding engine `accelerate launch` was configured with (it passes it to each process in the environment),
    whether or not the Accelerator could honour it."""
    from accelerate.utils import parse_flag_from_env

    return next((e for e in ("fsdp", "deepspeed") if parse_flag_from_env(f"ACCELERATE_USE_{e.upper()}")), None)


def check_engine(strategy, acc: Accelerator) -> None:
    """Refuse, before any model is loaded, a distribution engine or precision under which a strategy would run
    silently wrong. DeepSpeed is refused for every strategy: it owns gradient accumulation and steps inside
    backward, which bypasses the per-stage accumulation windows and the strategies' optimizer hooks."""
    from strategies.base import StrategyConfigError

    engine = engine_name(acc)
    name = getattr(strategy, "name", type(strategy).__name__)
    asked = requested_engine()
    if "deepspeed" in (engine, asked):
        raise StrategyConfigError(f"strategy {name} under DeepSpeed is refused: DeepSpeed (ZeRO, GPU only) steps the "
                                  "optimizer inside backward and owns accumulation (use DDP or FSDP through accelerate)")
    if asked and asked != engine:
        raise StrategyConfigError(f"accelerate distributed_type {asked.upper()} cannot run on {acc.device.type}: "
                                  f"accelerate shards only on GPUs and other accelerators and would silently run "
                                  f"{engine} instead; on the CPU use DDP: torchrun --nproc_per_node N -m benchmark.cli")
    reason = strategy.refuse(engine, str(acc.mixed_precision))
    if reason:
        raise StrategyConfigError(f"strategy {name} cannot run under {engine.upper()} / mixed_precision "
                                  f"{acc.mixed_precision}: {reason}")


def build_context(cfg: RunConfig, strategy=None) -> tuple[RunContext, Any, dict]:
    """Accelerator, seed, strategy, stream, model with the strategy's adapters: everything before the first
    evaluation. Shared by `run` and the bench scripts, so that they measure exactly what a run does."""
    cfg_dict = config_dict(cfg)
    tcfg = cfg.trainer
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    # gradient accumulation is done by train_stage itself (per-stage windows), not by accelerate's counter
    acc = Accelerator(cpu=tcfg.device == "cpu", mixed_precision=tcfg.mixed_precision)
    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(acc.device.type == "cpu", warn_only=True)
    strategy = strategy or build_strategy(dict(cfg_dict["strategy"]))  # validates before any loading
    check_engine(strategy, acc)
    data_cfg = cfg.data if isinstance(cfg.data, DataConfig) else DataConfig(**cfg_dict["data"])
    stream = load_stream(cfg.stream.name, data_cfg, tasks=cfg.stream.tasks, missing=cfg.stream.missing)
    model, tok, model_info = load_model(cfg.model, seed=cfg.seed)
    chat = use_chat_template(cfg.data.chat_template, tok, cfg.model.name)
    model_info["chat_template"] = chat  # what auto resolved to, for the record and the leaderboard
    encoder = Encoder(tok, tcfg.max_prompt_tokens, chat=chat, decoder_start=decoder_start(model))
    ctx = RunContext(cfg, model, tok, encoder, acc, stream, cfg.seed, model_info=model_info)
    ctx.model = strategy.prepare_model(model, ctx).to(acc.device)
    if tcfg.gradient_checkpointing:
        enable_activation_checkpointing(ctx.model)
    return ctx, strategy, cfg_dict


def _launch_rank() -> int:
    # before the Accelerator exists: torchrun and accelerate launch set RANK in every process they start
    return int(os.environ.get("RANK", "0"))


def export_submitit_distributed() -> bool:
    """Under hydra/launcher=slurm_multinode every SLURM task that submitit starts is one process of the run, but
    nothing sets the torch.distributed variables that torchrun or `accelerate launch` would: export them from SLURM's
    (rank = SLURM_PROCID, master = the job's first node, one GPU per task). True if exported."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=True)
    return True


def run(cfg: RunConfig, strategy=None) -> Path | None:
    """One run; returns the record path (on the main process). `strategy` overrides cfg.strategy (tests)."""
    t_start = time.perf_counter()
    preflight.check(cfg)  # value ranges and machine abilities, before anything loads
    export_submitit_distributed()
    chash = records.config_hash(config_dict(cfg))
    run_key = f"{chash}-s{cfg.seed}"
    main = _launch_rank() == 0
    lock = RunLock(Path(cfg.results_dir) / "checkpoints" / run_key) if main else contextlib.nullcontext()
    with lock:  # before loading, so that a second process on this run fails at once
        if cfg.resume:
            done = records.find_finished(Path(cfg.results_dir) / "runs", chash, cfg.seed)
            if done is not None:
                if main:
                    print(f"run {run_key} has already finished: {done} (resume=false runs it again)", flush=True)
                return done if main else None
        return _run_unlocked(cfg, strategy, t_start)


def _run_unlocked(cfg: RunConfig, strategy, t_start: float) -> Path | None:
    ctx, strategy, cfg_dict = build_context(cfg, strategy)
    acc, stream, encoder, model_info = ctx.accelerator, ctx.stream, ctx.encoder, ctx.model_info
    tests = {t.name: encoder.encode(t, t.test) for t in stream.tasks}
    stages = strategy.stages(stream.tasks)

    run_key = f"{records.config_hash(cfg_dict)}-s{cfg.seed}"
    ckpt = Checkpointer(Path(cfg.results_dir) / "checkpoints" / run_key)
    state: dict[str, Any] = {"matrices": {}, "generation": [], "anatomy": [], "predictions": [], "stage_stats": [],
                             "ppl_before": None, "trained_names": []}
    pred_dir = ckpt.folder / "predictions"  # kept with the checkpoint until the record is written
    start = 0
    if cfg.resume and ckpt.latest() is not None:
        meta, weights, strat_tensors = ckpt.load()  # also restores the random state saved with the stage
        saved_rng = _rng_state()
        # rebuilding adapters (O-LoRA, IncLoRA) draws their random initialisation; the uninterrupted run drew
        # the next task's adapter from the saved state, so the state is put back after the rebuild
        strategy.load_state_dict(strat_tensors, meta["strategy_meta"], ctx)
        Checkpointer.restore_model(ctx.model, weights)
        _set_rng_state(saved_rng)
        state, start = meta["run_state"], meta["stage"]
        # time of earlier attempts up to their last checkpoint; the record's cost counts every attempt
        state["previous_attempts_s"] = state.get("elapsed_s", 0.0)
        state["resumed_after_stages"] = state.get("resumed_after_stages", []) + [start]
        if acc.is_main_process:
            print(f"resuming {run_key} after stage {start}/{len(stages)} from {ckpt.folder}", flush=True)
    PROGRESS.start(run_key, len(stages), saved=start, resume=cfg.resume)
    trained_names: set[str] = set(state["trained_names"])
    wandb_run = _start_wandb(cfg, cfg_dict, run_key) if acc.is_main_process else None
    ctx._wandb = wandb_run  # type: ignore[attr-defined]

    general_seqs = _general_sequences(ctx)
    if start == 0:
        state["ppl_before"] = general_ppl(ctx, strategy, general_seqs)
        record_evaluation(ctx, state, evaluate_all(ctx, strategy, tests, 0, "zero-shot"), 0, "zero-shot", [], pred_dir)
    for s in range(start, len(stages)):
        ctx.stage, ctx.tasks = s + 1, stages[s]
        strategy.before_stage(ctx)
        items = strategy.train_items(ctx, [e for t in ctx.tasks for e in encoder.encode(t, t.train)])
        trained_names |= {n for n, p in ctx.model.named_parameters() if p.requires_grad}
        stats = train_stage(ctx, strategy, items)
        strategy.after_stage(ctx)
        names = [t.name for t in ctx.tasks]
        lines = evaluate_all(ctx, strategy, tests, s + 1, "+".join(names))
        row = record_evaluation(ctx, state, lines, s + 1, "+".join(names), names, pred_dir)[primary_mode(cfg)]
        state["stage_stats"].append({"tasks": [t.name for t in ctx.tasks], **stats})
        state["trained_names"] = sorted(trained_names)
        if acc.is_main_process:
            print(f"stage {s + 1}/{len(stages)} ({'+'.join(t.name for t in ctx.tasks)}): " +
                  " ".join(f"{t.name}={v:.1f}" for t, v in zip(stream.tasks, row)), flush=True)
            strat_tensors, strat_meta = strategy.state_dict()
            state["elapsed_s"] = round(state.get("previous_attempts_s", 0.0) + time.perf_counter() - t_start, 2)
            ckpt.save(s + 1, ctx.model, trained_names, strat_tensors, {"strategy_meta": strat_meta, "run_state": state})
        acc.wait_for_everyone()
        PROGRESS.stage_saved(s + 1)
        _log_wandb(ctx, {f"acc/{t.name}": v for t, v in zip(stream.tasks, row)})

    ppl_after = general_ppl(ctx, strategy, general_seqs)
    retention = general_retention(state["ppl_before"], ppl_after)
    scores = {m: {"values": R_m, "metrics": {**all_metrics(R_m), **retention}} for m, R_m in state["matrices"].items()}
    R, metrics = scores[primary_mode(cfg)]["values"], scores[primary_mode(cfg)]["metrics"]
    n_trainable = sum(p.numel() for n, p in ctx.model.named_parameters() if n in trained_names)
    # what `target_modules: [auto]` resolved to on this model (adapters may be added per stage: read at the end)
    targets = {t for c in getattr(ctx.model, "peft_config", {}).values() for t in (c.target_modules or ())}
    if targets:
        model_info["lora_targets"] = sorted(targets)
    rec_path = None
    if acc.is_main_process:
        runs_dir = Path(cfg.results_dir) / "runs"
        record = _record(cfg_dict, stream, strategy, model_info, R, metrics, state, n_trainable, acc, t_start, run_key)
        record["scores"] = scores
        record["primary_mode"] = primary_mode(cfg)
        # the prediction files first: a record is written only when everything it names exists
        record["predictions"] = predictions.publish(state["predictions"], pred_dir, runs_dir, record["run_id"])
        rec_path = records.write_record(record, runs_dir)
        if not cfg.keep_checkpoints:
            ckpt.remove()
        if wandb_run is not None:
            _finish_wandb(wandb_run, stream, R, metrics)
    acc.wait_for_everyone()
    return rec_path


def primary_mode(cfg: RunConfig) -> str:
    """The scores a record's `matrix` and `metrics` hold: generation when computed (the papers' mode)."""
    return "generate" if cfg.eval.generates else "loglik"


def _record(cfg_dict, stream, strategy, model_info, R, metrics, state, n_trainable, acc, t_start, run_key):
    stage_stats = state["stage_stats"]
    train_s = sum(s["seconds"] for s in stage_stats)
    tokens = sum(s["answer_tokens"] for s in stage_stats)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    strategy_name = getattr(strategy, "name", None) or cfg_dict["strategy"]["name"]  # the strategy actually run
    return {
        "schema": records.SCHEMA,
        "run_id": f"{stamp}-{strategy_name}-{stream.name}-{run_key}-{random.Random().getrandbits(24):06x}",
        "created_utc": stamp,
        "config": cfg_dict,
        "config_hash": run_key.rsplit("-s", 1)[0],
        "seed": cfg_dict["seed"],
        "stream": stream.describe(),
        "strategy": {"name": strategy_name, "config": cfg_dict["strategy"]},
        "model": model_info,
        "eval_mode": cfg_dict["eval"]["mode"],
        "matrix": {"rows": ["zero-shot"] + ["+".join(s["tasks"]) for s in stage_stats], "columns": stream.task_names,
                   "values": R, "unit": "accuracy %"},
        "metrics": metrics,
        # how prompts were presented: data.chat_template as asked and what it resolved to for this tokenizer
        "prompt_format": {"chat_template": cfg_dict["data"]["chat_template"], "applied": model_info["chat_template"]},
        "generation": {"max_new_tokens": cfg_dict["eval"]["max_new_tokens"], "rows": state["generation"]},
        "anatomy": {"rows": state["anatomy"], "summary": predictions.summarize_anatomy(
            state["anatomy"], [t for st in stage_stats[:-1] for t in st["tasks"]])},
        "resumed": {"after_stages": state.get("resumed_after_stages", []), "attempts": 1 + len(state.get("resumed_after_stages", []))},
        "cost": {"wall_s": round(state.get("previous_attempts_s", 0.0) + time.perf_counter() - t_start, 2),
                 "train_s": round(train_s, 2),
                 "answer_tokens_per_s": round(tokens / train_s, 2) if train_s else None,
                 "peak_memory_mb": _peak_memory_mb(acc.device), "trainable_params": n_trainable,
                 "processes": acc.num_processes, "device": str(acc.device), "mixed_precision": str(acc.mixed_precision)},
        "stages": stage_stats,
        # what changes results at the same global batch (the papers' repos warn about GPU count)
        "setup": {"world_size": acc.num_processes, "per_device_batch": cfg_dict["trainer"]["batch_size"],
                  "grad_accum": cfg_dict["trainer"]["grad_accum"],
                  "effective_batch": cfg_dict["trainer"]["batch_size"] * cfg_dict["trainer"]["grad_accum"] * acc.num_processes,
                  "model_dtype": cfg_dict["model"]["dtype"], "mixed_precision": str(acc.mixed_precision),
                  "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                  "engine": engine_name(acc)},
        "provenance": {**records.provenance(), "environment": records.environment_lock()},
    }


def _start_wandb(cfg: RunConfig, cfg_dict: dict, run_key: str):
    if cfg.logger.name == "none":
        return None
    if cfg.logger.name != "wandb":
        raise ClbenchError(f"logger.name must be none or wandb, got {cfg.logger.name!r}")
    import wandb

    return wandb.init(project=cfg.logger.project, mode=cfg.logger.mode, dir=cfg.logger.dir or cfg.results_dir,
                      id=run_key, resume="allow", config=cfg_dict, reinit="finish_previous")


def _finish_wandb(run, stream: Stream, R, metrics) -> None:
    import wandb

    rows = [["zero-shot", *R[0]]] + [[f"stage {i}", *r] for i, r in enumerate(R[1:], 1)]
    run.log({"accuracy_matrix": wandb.Table(columns=["after", *stream.task_names], data=rows)})
    run.summary.update({k: v for k, v in metrics.items() if v is not None})
    run.finish()
