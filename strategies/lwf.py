"""LwF (Li & Hoiem, 2017), in its language-model form: the model as it was before the current task is a teacher
whose next-token distribution on the current task's inputs the model keeps while it learns the task.

    L = CE + alpha * mean over answer positions of KL( softmax(z_old / T) || softmax(z_new / T) )

over the full vocabulary, T = 2 and alpha = 1 as in TRACE (BeyonderXX/TRACE @462e39f, model/Regular/LwF.py, the
only language-model LwF found). The teacher is a frozen copy of the LoRA adapter at the end of the previous task, kept
beside the trained one and run in a second forward pass with no gradient (a LoRA's worth of memory, instead of
TRACE's precomputed full-vocabulary logits for the whole next training set). Deliberate differences from TRACE,
also in docs/strategies.md's Faithfulness table: the direction is the paper's and Hinton's KL(old || new) (TRACE's
kl_div(log_softmax(old), softmax(new)) is KL(new || old)); only the positions that predict answer tokens are
distilled (TRACE: every position, prompt and left padding included, divided by the batch size); no T^2 factor, as
in both. At the first step of each task the teacher equals the model, so the term is 0 there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmark.api import IGNORE, answer_logits, answer_loss, answer_targets
from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_lora, check_range
from strategies.common.lora import activate, adapter_weights, add_lora

STUDENT, TEACHER = "default", "teacher"


@dataclass
class LwFConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)
    alpha: float = 1.0  # weight of the distillation term
    temperature: float = 2.0

    def __post_init__(self):
        check_lora(self.lora, "lora")
        check_range(self.alpha, "alpha", 0)
        check_range(self.temperature, "temperature", 0, low_open=True)


def distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, targets: torch.Tensor, T: float) -> torch.Tensor:
    """Mean over the positions with a target (!= IGNORE) of KL(softmax(old/T) || softmax(new/T)), full vocabulary."""
    log_new = F.log_softmax(new_logits.float() / T, -1)
    log_old = F.log_softmax(old_logits.float() / T, -1)
    kl = (log_old.exp() * (log_old - log_new)).sum(-1)
    mask = (targets.to(kl.device) != IGNORE).to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


@register("lwf", LwFConfig)
class LwF(Hooks):
    # the teacher is run by switching PEFT adapters per module, which FSDP's flattened parameters do not allow
    holds_parameter_refs = True

    def __init__(self, cfg: LwFConfig):
        super().__init__(cfg)
        self.has_teacher = False

    def prepare_model(self, model, ctx):
        self.model = add_lora(model, self.cfg.lora, STUDENT)
        return self.model

    def before_stage(self, ctx) -> None:
        if ctx.stage < 2:
            return
        self._add_teacher(ctx)
        teacher, student = adapter_weights(ctx.model, TEACHER), adapter_weights(ctx.model, STUDENT)
        with torch.no_grad():
            for k, w in teacher.items():
                w.copy_(student[k])
        activate(ctx.model, [STUDENT], [STUDENT])

    def loss(self, ctx, batch, outputs, loss):
        if not self.has_teacher or not self.cfg.alpha:
            return loss
        activate(ctx.model, [TEACHER], [STUDENT])
        try:
            with torch.no_grad():
                _, old = answer_loss(ctx, batch, False, model=ctx.model)
        finally:
            activate(ctx.model, [STUDENT], [STUDENT])
        kd = distillation(answer_logits(outputs, batch), answer_logits(old, batch), answer_targets(batch),
                          self.cfg.temperature)
        ctx.log("lwf_kd", kd)
        return loss + self.cfg.alpha * kd

    def _add_teacher(self, ctx) -> None:
        if not self.has_teacher:
            ctx.model = self.model = add_lora(ctx.model, self.cfg.lora, TEACHER)  # PEFT adds it in place
            self.has_teacher = True

    def state_dict(self):
        if not self.has_teacher:
            return {}, {"teacher": False}
        return {k: v.detach().cpu() for k, v in adapter_weights(self.model, TEACHER).items()}, {"teacher": True}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.model = ctx.model
        if meta.get("teacher"):
            self._add_teacher(ctx)
            weights = adapter_weights(ctx.model, TEACHER)
            with torch.no_grad():
                for k, v in tensors.items():
                    weights[k].copy_(v)
            activate(ctx.model, [STUDENT], [STUDENT])
