"""I-LoRA (Ren et al., ICASSP 2025): fast and slow LoRA learners on one frozen base, with replay.

    slow update after every optimizer step:  theta_slow <- lam * theta_slow + (1 - lam) * theta_fast
    fast objective:  CE(current U replay) + gamma * L_cons(h(x_M; fast), h(x_M; slow))
L_cons averages, over the L+1 hidden-state tensors, the mean squared difference on the real tokens of the
replayed rows: plain MSE as the paper writes it (`consistency: mse`), or the code's one-sided form
(`one_sided`: target = max(fast, slow), so only entries where the slow activation is larger are penalised).
lam is the weight on the old slow weights; the official code's effective value is 0.25 (ema_alpha), which keeps
the slow learner close to the fast one. Unlike the official code, the update really changes the slow adapter,
replayed pads carry the ignore label, and attention masks are passed. The slow adapter starts as a copy of the
fast one. Which learner is evaluated is not stated in the paper: `eval_learner` (slow by default, as in CLS-ER).
As in the code, the first task trains without replay and without the consistency term (the code skips both while
the task is its hard-coded first task), while its rows already enter the buffer; the EMA runs from the first step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from benchmark.api import MODEL_INPUTS, hidden_states
from strategies.base import Hooks, LoraSettings, register
from strategies.common.buffer import BufferConfig, ReplayBuffer
from strategies.common.checks import check_choice, check_lora, check_nested, check_range
from strategies.common.lora import adapter_weights, add_lora, activate
from strategies.replay import mix

FAST, SLOW = "fast", "slow"


@dataclass
class ILoRAConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)
    ema_lambda: float = 0.25  # weight on the old slow weights
    gamma: float = 1.0  # consistency weight (reg_weight)
    consistency: str = "mse"  # mse | one_sided
    eval_learner: str = "slow"  # slow | fast
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(policy="reservoir", size=500))
    ratio: float = 1.0  # replay batch size / current batch size

    def __post_init__(self):
        check_lora(self.lora, "lora")
        check_range(self.ema_lambda, "ema_lambda", 0, 1)
        check_range(self.gamma, "gamma", 0)
        check_choice(self.consistency, "consistency", ("mse", "one_sided"))
        check_choice(self.eval_learner, "eval_learner", ("slow", "fast"))
        check_nested(self.buffer, "buffer", BufferConfig)
        # current rows enter the buffer while a task trains, which the fraction policy (finished tasks only) ignores
        self.buffer.check("buffer", policies=("reservoir", "per_task"))
        check_range(self.ratio, "ratio", 0)


def ema_update(slow: dict[str, torch.Tensor], fast: dict[str, torch.Tensor], lam: float) -> None:
    """slow <- lam * slow + (1 - lam) * fast, in place."""
    with torch.no_grad():
        for k, s in slow.items():
            s.mul_(lam).add_(fast[k].detach(), alpha=1.0 - lam)


def consistency_loss(fast_h: list[torch.Tensor], slow_h: list[torch.Tensor], mask, kind: str) -> torch.Tensor:
    """Mean over layers of the masked mean squared difference between fast and (target) slow hidden states.
    `mask`: the real tokens, one tensor for all layers or one per layer (an encoder-decoder's two stacks)."""
    masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(fast_h)
    total = fast_h[0].new_zeros(())
    for f, s, mk in zip(fast_h, slow_h, masks):
        m = mk[..., None].to(f.dtype)
        target = torch.maximum(f.detach(), s) if kind == "one_sided" else s
        total = total + (((f - target) ** 2) * m).sum() / (m.sum() * f.shape[-1]).clamp(min=1)
    return total / len(fast_h)


@register("ilora", ILoRAConfig)
class ILoRA(Hooks):
    needs_hidden_states = True
    holds_parameter_refs = True

    def prepare_model(self, model, ctx):
        self.buffer = ReplayBuffer.for_run(self.cfg.buffer, ctx)
        model = add_lora(model, self.cfg.lora, FAST)
        model = add_lora(model, self.cfg.lora, SLOW)
        self.fast, self.slow = adapter_weights(model, FAST), adapter_weights(model, SLOW)
        with torch.no_grad():
            for k, s in self.slow.items():
                s.copy_(self.fast[k])
        activate(model, [FAST], [FAST])
        return model

    def train_batch(self, ctx, batch, items):
        self.buffer.add(items, ctx.stage - 1)  # as in the code: current samples enter before the forward
        if ctx.stage == 1:
            return batch
        return mix(ctx, batch, self.buffer, self.cfg.ratio)

    def after_stage(self, ctx) -> None:
        self.buffer.share(ctx.accelerator)  # each process's shard of rows and draws resume as its own

    def loss(self, ctx, batch, outputs, loss):
        rep = batch.get("is_replay")
        if rep is None or not bool(rep.any()):
            return loss
        sub = {k: v[rep] for k, v in batch.items() if k in MODEL_INPUTS}
        with torch.no_grad(), self._use(ctx, SLOW):
            slow = hidden_states(ctx.forward(sub, model=ctx.model, output_hidden_states=True), sub)
        idx = rep.nonzero().squeeze(-1).to(ctx.device)
        fast_h = [h[idx] for h, _ in hidden_states(outputs, batch)]
        cons = consistency_loss(fast_h, [h for h, _ in slow], [m.to(ctx.device) for _, m in slow], self.cfg.consistency)
        ctx.log("ilora_consistency", cons)
        return loss + self.cfg.gamma * cons

    def after_optimizer_step(self, ctx) -> None:
        ema_update(self.slow, self.fast, self.cfg.ema_lambda)

    @contextlib.contextmanager
    def _use(self, ctx, adapter: str):
        activate(ctx.model, [adapter], [])
        try:
            yield
        finally:
            activate(ctx.model, [FAST], [FAST])  # the fast learner is the only one that ever takes gradients

    def eval_model(self, ctx):
        return self._use(ctx, self.cfg.eval_learner)

    def state_dict(self):
        tensors, meta = self.buffer.state("buffer/")
        tensors.update({f"slow/{k}": v for k, v in self.slow.items()})
        return tensors, meta

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.buffer.load("buffer/", tensors, meta)
        with torch.no_grad():
            for k, v in self.slow.items():
                v.copy_(tensors[f"slow/{k}"])
