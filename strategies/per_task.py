"""PerTaskFT (the papers' plasticity reference, after Progressive Prompts' tables): a fresh LoRA from the base
model for each task, trained on that task alone, and each task evaluated with its own adapter. It cannot forget,
and it needs to be told at test time which task an example belongs to (`uses_task_identity`): the record says so
(`strategy.task_identity`) and the leaderboard labels the row and never pairs it with a task-agnostic one.

The tables' row fine-tunes a whole T5-large per task; here each task gets its own LoRA of the shared settings on
the frozen base model, which is what a suite of LoRA methods compares against (docs/strategies.md, Faithfulness).
A task not trained yet is evaluated with the base model (no adapter), so its zero-shot row and FWT read 0 transfer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from peft import PeftModel

from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_lora
from strategies.common.lora import activate, add_lora


def adapter_name(stage: int) -> str:
    return f"task{stage}"


@dataclass
class PerTaskConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        check_lora(self.lora, "lora")


@register("per_task", PerTaskConfig)
class PerTask(Hooks):
    uses_task_identity = True
    holds_parameter_refs = True  # switches adapters per module, which FSDP's flattened parameters do not allow

    def __init__(self, cfg: PerTaskConfig):
        super().__init__(cfg)
        self.adapter_of: dict[str, str] = {}  # task -> the adapter trained on it

    def prepare_model(self, model, ctx):
        return model  # adapters are created per task in before_stage

    def _add(self, ctx, stage: int, tasks: list[str]) -> None:
        name = adapter_name(stage)
        ctx.model = add_lora(ctx.model, self.cfg.lora, name)  # a fresh LoRA: B = 0, the base model's outputs
        activate(ctx.model, active=[name], train=[name])  # earlier adapters neither act nor train
        self.adapter_of.update({t: name for t in tasks})

    def before_stage(self, ctx) -> None:
        self._add(ctx, ctx.stage, [t.name for t in ctx.tasks])
        ctx.model.to(ctx.device)

    @contextlib.contextmanager
    def eval_task(self, ctx, task):
        model = ctx.model
        if not isinstance(model, PeftModel):  # before the first task: the base model for every task
            yield
            return
        current = adapter_name(len(set(self.adapter_of.values())))
        own = self.adapter_of.get(task)
        try:
            if own is None:
                with model.disable_adapter():  # not trained yet: the base model
                    yield
            else:
                activate(model, active=[own], train=[current])
                yield
        finally:
            activate(model, active=[current], train=[current])

    def state_dict(self):
        return {}, {"adapter_of": self.adapter_of}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        # rebuild the finished tasks' adapters in their order; the runner then loads their weights
        by_adapter: dict[str, list[str]] = {}
        for task, name in meta["adapter_of"].items():
            by_adapter.setdefault(name, []).append(task)
        for name in sorted(by_adapter, key=lambda n: int(n[len("task"):])):
            self._add(ctx, int(name[len("task"):]), by_adapter[name])
        ctx.model.to(ctx.device)
