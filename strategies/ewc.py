"""EWC (Kirkpatrick et al., 2017): a quadratic penalty that holds the parameters important to earlier tasks.

After each task t, at its final weights theta*_t, the diagonal Fisher F_t of the trainable parameters is
estimated on the task's training data; from task 2 on the loss is
    L = CE + lambda/2 * sum_{k<t} sum_i F_k,i (theta_i - theta*_k,i)^2
(one anchor per earlier task), or, with `online: true` (Schwarz et al., 2018), one running Fisher
F <- gamma * F + F_t anchored at the latest theta*.

Estimator. The textbook form estimates F once per task at its final weights; TRACE (BeyonderXX/TRACE @462e39f,
model/Regular/EWC.py, the language-model reference whose EWC runs) squares the gradient of each micro-batch's loss.
clbench takes TRACE's estimator, the empirical Fisher of squared per-micro-batch gradients (`fisher: batch`, at
trainer.batch_size; `fisher: example` squares per-example gradients), of the answer cross-entropy, at the
textbook's moment: one pass over the task's training data after it is trained, averaged over its batches. What
TRACE does differently (accumulating over every step of every task, including the penalty's own gradient, never
normalised) is in docs/strategies.md's Faithfulness table. lambda 400 is TRACE's; LLMCL's LoRA EWC uses 0.1 with a
Fisher that is never filled. LoRA parameters by default (`adapter: full` for full fine-tuning).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.api import answer_loss
from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_adapter, check_choice, check_lora, check_range
from strategies.common.lora import apply_adapter

FISHER = ("batch", "example")


@dataclass
class EWCConfig:
    adapter: str = "lora"  # lora | full (the parameters that train, and so the ones the penalty holds)
    lora: LoraSettings = field(default_factory=LoraSettings)
    ewc_lambda: float = 400.0  # lambda of lambda/2 * sum F (theta - theta*)^2 (TRACE's value)
    fisher: str = "batch"  # batch: squared gradients of each training batch's loss (TRACE); example: of each example's
    fisher_batches: int = 0  # how many batches of the task estimate F (0: all of its training data)
    online: bool = False  # one running Fisher and the latest anchor instead of one pair per earlier task
    gamma: float = 1.0  # online only: F <- gamma * F + F_t

    def __post_init__(self):
        check_adapter(self.adapter, "adapter", ("lora", "full"))
        check_lora(self.lora, "lora")
        check_range(self.ewc_lambda, "ewc_lambda", 0)
        check_choice(self.fisher, "fisher", FISHER)
        check_range(self.fisher_batches, "fisher_batches", 0, integer=True)
        check_range(self.gamma, "gamma", 0, 1)


def ewc_penalty(params: dict[str, torch.Tensor], anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
                lam: float) -> torch.Tensor:
    """lambda/2 * sum over (F, theta*) anchors of sum_i F_i (theta_i - theta*_i)^2."""
    total = None
    for fisher, theta in anchors:
        for name, p in params.items():
            term = (fisher[name] * (p.float() - theta[name]) ** 2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def fisher_diagonal(ctx, params: dict[str, torch.nn.Parameter], batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of each batch's answer cross-entropy, in eval mode (no dropout,
    no random draw); the parameters' gradients are left empty."""
    model = ctx.model
    was = model.training
    model.eval()
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for batch in batches:
        for p in params.values():
            p.grad = None
        with ctx.accelerator.autocast():
            ce, _ = answer_loss(ctx, batch, False, model=model)
        ce.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float() ** 2
    for p in params.values():
        p.grad = None
    model.train(was)
    return {n: f / max(len(batches), 1) for n, f in fisher.items()}


@register("ewc", EWCConfig)
class EWC(Hooks):
    def __init__(self, cfg: EWCConfig):
        super().__init__(cfg)
        # one (Fisher, anchor) per earlier task; a single running pair when online
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def prepare_model(self, model, ctx):
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def _params(self, ctx) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}

    def loss(self, ctx, batch, outputs, loss):
        if not self.anchors or not self.cfg.ewc_lambda:
            return loss
        penalty = ewc_penalty(self._params(ctx), self.anchors, self.cfg.ewc_lambda).to(loss.device)
        ctx.log("ewc_penalty", penalty)
        return loss + penalty

    def _fisher_batches(self, ctx) -> list[dict[str, torch.Tensor]]:
        items = [e for t in ctx.tasks for e in ctx.encoder.encode(t, t.train)]
        size = 1 if self.cfg.fisher == "example" else ctx.cfg.trainer.batch_size
        groups = [items[i : i + size] for i in range(0, len(items), size)]
        if self.cfg.fisher_batches:
            groups = groups[: self.cfg.fisher_batches]
        return [ctx.encoder.collate(g) for g in groups]

    def after_stage(self, ctx) -> None:
        params = self._params(ctx)
        fisher = fisher_diagonal(ctx, params, self._fisher_batches(ctx))
        theta = {n: p.detach().float().clone() for n, p in params.items()}  # on the parameters' device
        if self.cfg.online and self.anchors:
            old = self.anchors[0][0]
            fisher = {n: self.cfg.gamma * old[n] + f for n, f in fisher.items()}
        if self.cfg.online:
            self.anchors = [(fisher, theta)]
        else:
            self.anchors.append((fisher, theta))

    def state_dict(self):
        tensors = {}
        for k, (fisher, theta) in enumerate(self.anchors):
            tensors.update({f"fisher/{k}/{n}": v.cpu() for n, v in fisher.items()})
            tensors.update({f"theta/{k}/{n}": v.cpu() for n, v in theta.items()})
        return tensors, {"anchors": len(self.anchors)}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.anchors = []
        for k in range(int(meta["anchors"])):
            def part(kind):
                prefix = f"{kind}/{k}/"
                device = ctx.device if ctx is not None else "cpu"
                return {n[len(prefix):]: v.to(device) for n, v in tensors.items() if n.startswith(prefix)}
            self.anchors.append((part("fisher"), part("theta")))
