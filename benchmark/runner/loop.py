"""The training loop of one stage: batches, accumulation windows, the answer loss and the strategy's hooks."""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import time
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from benchmark.config import RunConfig, TrainerConfig
from benchmark.errors import ClbenchError
from benchmark.modeling.data import IGNORE, Encoded, length_bucketed_batches
from benchmark.modeling.model import base_model
from benchmark.records.schema import Stage
from benchmark.runner.context import RunContext
from task_streams import Task

if TYPE_CHECKING:  # strategies import benchmark.api, which imports this room: typing only
    from strategies.base import Strategy


class TrainingDiverged(ClbenchError, RuntimeError):
    """A non-finite loss: the run stops rather than publish numbers of a broken model."""


@functools.lru_cache(maxsize=None)
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def _answer_span(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """First and last positions holding an answer token in any row (decoder-only batches)."""
    # found on the host copy of the labels: on an accelerator these int() calls would otherwise wait for the
    # device at every step
    is_answer = batch["labels"].cpu() != IGNORE
    first = int(is_answer.int().argmax(-1).min())
    last = int(is_answer.shape[1] - 1 - is_answer.flip(-1).int().argmax(-1).min())
    return first, last


def answer_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The targets of the logits that answer_loss computes, position for position (IGNORE where none)."""
    if "decoder_input_ids" in batch:
        return batch["labels"]
    first, last = _answer_span(batch)
    return batch["labels"][:, first : last + 1]


def answer_logits(out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of answer_loss's outputs that line up with answer_targets(batch): all of them where the model
    kept only the answer span (or is an encoder-decoder model), else that span."""
    if "decoder_input_ids" in batch:
        return out.logits
    first, last = _answer_span(batch)
    return out.logits if out.logits.shape[1] == last - first + 1 else out.logits[:, first - 1 : last]


def answer_loss(ctx: RunContext, batch: dict[str, torch.Tensor], need_hidden: bool, model=None):
    """Mean cross-entropy over answer tokens only, projecting onto the vocabulary only the positions that
    predict an answer token somewhere in the batch (rows are length-bucketed, so that span is short). An
    encoder-decoder model's decoder reads the answer only, so all of its positions are projected. `model`: another
    model than the training one (a strategy's teacher); the logits line up with answer_targets(batch)."""
    if "decoder_input_ids" in batch:
        out = ctx.forward(batch, model=model, output_hidden_states=need_hidden)
        labels = batch["labels"].to(ctx.device)
        ce = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                                               ignore_index=IGNORE)
        return ce, out
    first, last = _answer_span(batch)
    labels = batch["labels"].to(ctx.device)
    if _forward_takes(type(base_model(ctx.train_model or ctx.model)), "logits_to_keep"):
        keep = torch.arange(first - 1, last, device=ctx.device)  # position p predicts token p + 1
        out = ctx.forward(batch, model=model, logits_to_keep=keep, output_hidden_states=need_hidden)
        logits = out.logits
    else:
        out = ctx.forward(batch, model=model, output_hidden_states=need_hidden)
        logits = out.logits[:, first - 1 : last]
    target = labels[:, first : last + 1]
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    return ce, out


def stage_batches(items: list[Encoded], cfg: RunConfig, stage: int, epoch: int, world: int, rank: int) -> list[list[Encoded]]:
    """The same global batch list on every process (seeded), each process taking its rows of every batch."""
    lengths = [len(e.prompt) + len(e.answer) for e in items]
    global_bs = cfg.trainer.batch_size * world
    seed = hash((cfg.seed, stage, epoch)) & 0xFFFFFFFF
    batches = length_bucketed_batches(lengths, global_bs, seed=seed)
    batches = [b for b in batches if len(b) >= world]
    return [[items[i] for i in b[rank::world]] for b in batches]


def trainable_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _checked_groups(groups: list[dict], params: list[torch.nn.Parameter]) -> list[dict]:
    """A strategy's parameter groups, refused unless they hold every trainable parameter exactly once (a parameter
    left out would silently never train)."""
    seen = [id(p) for g in groups for p in g["params"]]
    if len(seen) != len(set(seen)) or set(seen) != {id(p) for p in params}:
        raise ClbenchError("the strategy's param_groups must hold every trainable parameter exactly once "
                           f"({len(set(seen))} of {len(params)} held, {len(seen) - len(set(seen))} twice)")
    return groups


def stage_epochs(tcfg: TrainerConfig, tasks: list[Task]) -> int:
    """trainer.epochs, or a task's own count from trainer.epochs_per_task for a one-task stage (O-LoRA's
    long-benchmark script trains MNLI for 2 epochs)."""
    if len(tasks) == 1:
        return int(tcfg.epochs_per_task.get(tasks[0].name, tcfg.epochs))
    return tcfg.epochs


def accumulation_windows(n_micro: int, grad_accum: int) -> list[range]:
    """Micro-batch indices of each optimizer step of a stage: full windows, then the stage's own remainder."""
    return [range(i, min(i + grad_accum, n_micro)) for i in range(0, n_micro, grad_accum)]


def reduce_sum(acc: Accelerator, values: list[float]) -> list[float]:
    """Sums over every process (float64, so token counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        t = acc.reduce(t, reduction="sum")
    return t.tolist()


def train_stage(ctx: RunContext, strategy: Strategy, items: list[Encoded]) -> Stage:
    """One stage. Gradient accumulation is owned here, not by accelerate's counter: every stage starts with no
    gradient and a fresh window, steps its own remainder, and ends with no gradient. Each micro-batch's loss is
    weighted by its share of the window's answer tokens (over all processes), so batch b x accumulation k trains
    exactly like batch k*b, and a strategy's per-step terms count once per step."""
    cfg, acc = ctx.cfg, ctx.accelerator
    tcfg = cfg.trainer
    model = ctx.model
    model.train()
    params = trainable_params(model)
    optimizer = torch.optim.AdamW(_checked_groups(strategy.param_groups(ctx, params), params), lr=tcfg.lr,
                                  weight_decay=tcfg.weight_decay)
    epochs = stage_epochs(tcfg, ctx.tasks)
    batches = [b for ep in range(epochs) for b in stage_batches(items, cfg, ctx.stage, ep, acc.num_processes, acc.process_index)]
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
    names = "+".join(t.name for t in ctx.tasks)
    bar = tqdm(total=len(windows), desc=f"train {ctx.stage}/{len(ctx.stream.tasks)} {names}",
               disable=not acc.is_local_main_process, leave=False, file=sys.stdout)
    for w, window in enumerate(windows):
        # batches first (the strategy may append replayed rows), so the window's answer tokens are known
        prepared = []
        for i in window:
            batch = ctx.encoder.collate(batches[i])
            prepared.append((batches[i], strategy.train_batch(ctx, batch, batches[i])))
        counts = [int((b["labels"] != IGNORE).sum()) for _, b in prepared]
        window_tokens = reduce_sum(acc, [float(sum(counts))])[0]
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
            ctx.logger.log({f"train/{k}": v for k, v in logs.items()})
    bar.close()
    ctx.train_model = acc.unwrap_model(ctx.train_model, keep_fp32_wrapper=False)
    if first_bad is not None:
        raise TrainingDiverged(f"training diverged: non-finite loss at stage {ctx.stage} ({names}) by optimizer "
                               f"step {first_bad}; lower trainer.lr (now {tcfg.lr:g}); finished stages are kept in "
                               "the checkpoint")
    if acc.device.type != "cpu":  # returns the optimizer's device memory; on CPU it is only a 0.25 s gc.collect
        acc.free_memory()
    secs = time.perf_counter() - t0
    return Stage(tasks=[t.name for t in ctx.tasks], steps=ctx.step, micro_batches=len(batches), epochs=epochs,
                 seconds=round(secs, 3), answer_tokens=tokens, padded_tokens=padded,
                 answer_tokens_per_s=round(tokens / secs, 2) if secs else None,
                 padded_tokens_per_s=round(padded / secs, 2) if secs else None,
                 mean_loss=round(float(loss_sum) / max(len(batches), 1), 5), examples=len(items))
