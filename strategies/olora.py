"""O-LoRA (Wang et al., EMNLP Findings 2023): a new LoRA per task, softly orthogonal to all earlier ones.

Per adapted module, with PEFT's lora_A (r x d_in, the down-projection the official code regularises):
    L_orth = sum_modules sum_{j,k} | (A_{1:t-1} A_t^T)_{jk} |        (entry-wise L1 of the r_sum x r overlap)
    L2     = sum_modules ( ||A_t||_F + ||B_t||_F )                    (non-squared norms, as in the code)
    L      = L_CE + lambda1 * L_orth + lambda2 * L2
Earlier adapters are frozen and stay active, so inference sums every task's LoRA and needs no task id. Keeping
them as separate PEFT adapters is the paper's merging: summing B_i A_i x over adapters equals the concatenated
[B_1..B_t][A_1;..;A_t] x of the official code (same alpha/r scale), which tests/test_strategy_math.py checks.
Differences from the code, stated: each adapter has its own dropout mask (the code shares one across branches;
the default dropout here is 0, where both coincide); regularisers are scaled with the CE under gradient
accumulation (the non-DeepSpeed code left them unscaled).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_lora, check_per_task, check_range
from strategies.common.lora import activate, add_lora, lora_layers


@dataclass
class OLoRAConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)
    lambda1: float = 0.5  # orthogonality weight (orders 1-3, T5 and LLaMA scripts)
    lambda2: float = 0.0  # L2 weight on the new adapter
    # per-task overrides, e.g. the order-6 script: {dbpedia: 5, agnews: 5, ...}; conf/strategy/olora_long.yaml
    lambda1_per_task: dict[str, float] = field(default_factory=dict)
    lambda2_per_task: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        check_lora(self.lora, "lora")
        check_range(self.lambda1, "lambda1", 0)
        check_range(self.lambda2, "lambda2", 0)
        check_per_task(self.lambda1_per_task, "lambda1_per_task")
        check_per_task(self.lambda2_per_task, "lambda2_per_task")


def orthogonality_loss(old_A: list[torch.Tensor], new_A: torch.Tensor) -> torch.Tensor:
    """sum |A_old_cat @ A_new^T| for one module; zero when there is no earlier adapter."""
    if not old_A:
        return new_A.new_zeros(())
    return (torch.cat(old_A, dim=0) @ new_A.T).abs().sum()


def adapter_name(stage: int) -> str:
    return f"task{stage}"


@register("olora", OLoRAConfig)
class OLoRA(Hooks):
    holds_parameter_refs = True

    def __init__(self, cfg: OLoRAConfig):
        super().__init__(cfg)
        self.n_adapters = 0

    def prepare_model(self, model, ctx):
        return model  # adapters are created per task in before_stage

    def _add(self, ctx) -> None:
        self.n_adapters += 1
        ctx.model = add_lora(ctx.model, self.cfg.lora, adapter_name(self.n_adapters))
        names = [adapter_name(i) for i in range(1, self.n_adapters + 1)]
        activate(ctx.model, active=names, train=[names[-1]])

    def before_stage(self, ctx) -> None:
        self._add(ctx)
        ctx.model.to(ctx.device)
        task = ctx.tasks[0].name
        self.lambda1 = self.cfg.lambda1_per_task.get(task, self.cfg.lambda1)
        self.lambda2 = self.cfg.lambda2_per_task.get(task, self.cfg.lambda2)
        self._pairs = []  # (earlier A weights, new A, new B) per module
        new = adapter_name(self.n_adapters)
        for _, layer in lora_layers(ctx.model):
            old = [layer.lora_A[adapter_name(i)].weight for i in range(1, self.n_adapters)]
            self._pairs.append((old, layer.lora_A[new].weight, layer.lora_B[new].weight))

    def regularisers(self) -> tuple[torch.Tensor, torch.Tensor]:
        orth = sum(orthogonality_loss(old, a) for old, a, _ in self._pairs)
        l2 = sum(torch.linalg.norm(a) + torch.linalg.norm(b) for _, a, b in self._pairs)
        return orth, l2

    def loss(self, ctx, batch, outputs, loss):
        if not (self.lambda1 or self.lambda2):
            return loss  # IncLoRA (both zero): no terms to compute
        orth, l2 = self.regularisers()
        ctx.log("olora_orth", orth)
        ctx.log("olora_l2", l2)
        return loss + self.lambda1 * orth + self.lambda2 * l2

    def state_dict(self):
        return {}, {"n_adapters": self.n_adapters}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        # rebuild the adapters of the finished tasks; the runner then loads their weights
        for _ in range(meta["n_adapters"]):
            self._add(ctx)
        ctx.model.to(ctx.device)
