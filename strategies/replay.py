"""Experience replay, in the two forms the papers use; `mode` says which.

mode: mix (default) is MIGU's LoRAReplay: after each task, int(fraction * |train|) of its training examples are
    stored (buffer policy `fraction`, 2 %), and every later task trains on its own data plus all stored examples,
    shuffled together. Each stored example is seen about once per epoch and replay is a small share of every
    gradient (MIGU's CL_Benchmark/data_sampling.py adds the sample to the training files).
mode: interleave is LLMCL/I-LoRA's experience replay: every current batch of B rows is extended with
    `ratio` x B rows drawn from the buffer (1:1 by default). A fractional expected count is honoured by
    drawing floor(ratio x B) rows plus one more with probability frac(ratio x B), never rounding to zero.
    `include_current` offers the current task's rows to the buffer while it trains (I-LoRA's code does).

Buffer policies: reservoir (Vitter's Algorithm R), per_task ring, fraction. Replayed samples are never written
back into the buffer; what is stored is identical on every process, what is drawn differs per process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from benchmark.api import concat_batches
from strategies.base import Hooks, LoraSettings, OptionError, register
from strategies.common.buffer import BufferConfig, ReplayBuffer
from strategies.common.checks import check_adapter, check_choice, check_lora, check_nested, check_range
from strategies.common.lora import apply_adapter

MODES = ("mix", "interleave")


@dataclass
class ReplayConfig:
    adapter: str = "lora"  # lora | full | none (another composed part owns the model)
    lora: LoraSettings = field(default_factory=LoraSettings)
    mode: str = "mix"  # mix (MIGU's LoRAReplay) | interleave (LLMCL / I-LoRA experience replay)
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(policy="fraction", fraction=0.02))
    ratio: float = 1.0  # interleave: replayed rows per current row (expected value; may be fractional)
    include_current: bool = False  # interleave: the current task's rows enter the buffer while it trains

    def __post_init__(self):
        check_choice(self.mode, "mode", MODES)
        check_adapter(self.adapter, "adapter")
        check_lora(self.lora, "lora")
        check_nested(self.buffer, "buffer", BufferConfig)
        self.buffer.check("buffer")
        check_range(self.ratio, "ratio", 0)
        if self.mode == "mix" and self.include_current:
            raise OptionError("include_current applies to mode interleave only")
        if self.include_current and self.buffer.policy == "fraction":
            # the fraction policy stores a finished task's examples only: rows offered while training are dropped
            raise OptionError("include_current needs buffer.policy reservoir or per_task, not fraction")


def replay_count(ratio: float, n_current: int, u: float) -> int:
    """How many rows to replay with n_current current rows: floor(ratio*n) plus one with probability frac(ratio*n),
    given a uniform draw u in [0, 1); the expected value is exactly ratio*n."""
    want = ratio * n_current
    base = math.floor(want)
    return base + (1 if u < want - base else 0)


def mix(ctx, batch, buffer: ReplayBuffer, ratio: float):
    """The batch with replayed rows appended (see replay_count) and an `is_replay` row flag."""
    n_cur = batch["input_ids"].shape[0]
    batch = {**batch, "is_replay": torch.zeros(n_cur, dtype=torch.bool)}
    if len(buffer) == 0:
        return batch
    k = replay_count(ratio, n_cur, buffer.draw_rng.random())
    if k == 0:
        return batch
    rep = ctx.encoder.collate(buffer.sample(k))
    rep["is_replay"] = torch.ones(rep["input_ids"].shape[0], dtype=torch.bool)
    return concat_batches(batch, rep, ctx.tokenizer.pad_token_id)


@register("replay", ReplayConfig)
class Replay(Hooks):
    def __init__(self, cfg: ReplayConfig):
        super().__init__(cfg)
        self.buffer: ReplayBuffer | None = None

    def prepare_model(self, model, ctx):
        self.buffer = ReplayBuffer.for_run(self.cfg.buffer, ctx)
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def train_items(self, ctx, items):
        if self.cfg.mode != "mix":
            return items
        # the runner shuffles (length-bucketed) the union; stored rows keep their own task's prompt and answer
        return list(items) + self.buffer.items()

    def train_batch(self, ctx, batch, items):
        if self.cfg.mode != "interleave":
            return batch
        mixed = mix(ctx, batch, self.buffer, self.cfg.ratio)  # draw before adding: the current batch is not replayed
        if self.cfg.include_current and self.cfg.buffer.policy != "fraction":
            self.buffer.add(items, ctx.stage - 1)
        return mixed

    def after_stage(self, ctx) -> None:
        # include_current offered the task's rows while it trained (never with the fraction policy: refused)
        if not self.cfg.include_current:
            self.buffer.store_finished([e for t in ctx.tasks for e in ctx.encoder.encode(t, t.train)], ctx.stage - 1)
        self.buffer.share(ctx.accelerator)  # each process's draws (and shard) resume as its own

    def state_dict(self):
        return self.buffer.state("buffer/")

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.buffer.load("buffer/", tensors, meta)
