"""Experience replay, interleaved: every current batch is extended with stored examples of earlier tasks.

Explicit knobs (reference section 2): buffer policy (reservoir / per_task ring / fraction), buffer size or
fraction, replay ratio per batch, whether the current task's samples enter the buffer while it trains
(`include_current`, as in I-LoRA's code) or only once it is finished (the default). Replayed samples are never
written back. The default (LoRA, 2% of each finished task) is MIGU's LoRAReplay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.data import collate_train, concat_batches
from strategies.base import Hooks, LoraSettings, register
from strategies.buffer import BufferConfig, ReplayBuffer
from strategies.lora import apply_adapter


@dataclass
class ReplayConfig:
    adapter: str = "lora"  # lora | full | none (another composed part owns the model)
    lora: LoraSettings = field(default_factory=LoraSettings)
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(policy="fraction", fraction=0.02))
    ratio: float = 1.0  # replayed examples per current example in a batch
    include_current: bool = False


def mix(ctx, batch, buffer: ReplayBuffer, ratio: float):
    """The batch with round(ratio * B) replayed rows appended and an `is_replay` row flag."""
    n_cur = batch["input_ids"].shape[0]
    batch = {**batch, "is_replay": torch.zeros(n_cur, dtype=torch.bool)}
    k = round(ratio * n_cur)
    if k == 0 or len(buffer) == 0:
        return batch
    rep = collate_train(buffer.sample(k), ctx.tokenizer.pad_token_id)
    rep["is_replay"] = torch.ones(rep["input_ids"].shape[0], dtype=torch.bool)
    return concat_batches(batch, rep, ctx.tokenizer.pad_token_id)


@register("replay", ReplayConfig)
class Replay(Hooks):
    def __init__(self, cfg: ReplayConfig):
        self.cfg = cfg
        self.buffer: ReplayBuffer | None = None

    def prepare_model(self, model, ctx):
        self.buffer = ReplayBuffer(self.cfg.buffer, len(ctx.stream.tasks), ctx.seed)
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def train_batch(self, ctx, batch):
        mixed = mix(ctx, batch, self.buffer, self.cfg.ratio)  # draw before adding: the current batch is not replayed
        if self.cfg.include_current and self.cfg.buffer.policy != "fraction":
            self.buffer.add(ctx.items, ctx.stage - 1)
        return mixed

    def after_task(self, ctx) -> None:
        items = [e for t in ctx.tasks for e in ctx.encoder.encode(t, t.train)]
        if self.cfg.buffer.policy == "fraction":
            self.buffer.add_task(items)
        elif not self.cfg.include_current:
            self.buffer.add(items, ctx.stage - 1)

    def state_dict(self):
        return self.buffer.state("buffer/")

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.buffer.load("buffer/", tensors, meta)
