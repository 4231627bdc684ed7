"""Progressive Prompts (Razdaibiedina et al., ICLR 2023): the base model is frozen; each task learns a new soft
prompt of `length` rows, earlier tasks' prompts are frozen, and every input reads [P'_t; P'_{t-1}; ...; P'_1; x],
newest first. With `mlp` each prompt is reparameterised by its own residual MLP while its task trains,
P' = MLP(P) + P with Linear(d, 800)-ReLU-Linear(800, 400)-Tanh-Linear(400, d) (the authors' MLP2); a finished
task's P' is that MLP's output, frozen. There is no task identity at test: every task is scored with every prompt
learned so far.

Reference: arazd/ProgressivePrompts @01572d6 (T5 `train_t5_cl.py`), and TRACE's decoder-only port
(BeyonderXX/TRACE @462e39f, model/Dynamic_network/PP.py). Defaults are the authors' README command: 10 rows per
task copied from random vocabulary embeddings, learning rate 0.3, weight decay 1e-5, base weights frozen. The
prompts are placed by strategies/common/soft_prompt.py's hooks, so packed scoring, cached generation, T5 and
lm-eval all see them. Deliberate differences (docs/strategies.md, Faithfulness): the MLP is on by default, as in
the paper's main results (the authors' script defaults it off); the authors keep the prompt of the best validation
epoch (early stopping), clbench the last one; they score task i once, right after training it, with [P_i..P_1],
clbench scores every seen task after every stage with all prompts (the continual-learning matrix; `task_prompts:
true` scores task i with [P'_i..P'_1], the authors' test, which needs task identity and is recorded as such); their input is
cut to 512 positions after the prefix is added, clbench cuts the prompt text (trainer.max_prompt_tokens) and never
the prefix. A finished task's P' is recomputed from its frozen prompt and MLP at every forward (the authors store
the detached output): the same numbers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from strategies.base import Hooks, register
from strategies.common.checks import check_range
from strategies.common.soft_prompt import SoftPrefix, freeze, own_rate, vocab_rows

MODULE = "clbench_progprompt"  # the module that holds the prompts, attached to the model (its parameters train)


@dataclass
class ProgPromptConfig:
    length: int = 10  # prompt rows per task (the authors' README command; their paper also runs 50)
    mlp: bool = True  # residual MLP reparameterisation of each task's prompt while it trains
    bottleneck: int = 800  # the MLP's first width; its second is half of it (the authors' MLP2)
    lr: float = 0.3  # learning rate of the prompts and MLPs (replaces trainer.lr for them: they are all that trains)
    weight_decay: float = 1e-5
    # score each task with the prompts up to its own, [P'_i; ...; P'_1], as the authors' test does (it scores task i
    # right after training it): task identity at test, which the record and the leaderboard then state
    task_prompts: bool = False

    def __post_init__(self):
        check_range(self.length, "length", 1, integer=True)
        check_range(self.bottleneck, "bottleneck", 2, integer=True)
        check_range(self.lr, "lr", 0, low_open=True)
        check_range(self.weight_decay, "weight_decay", 0)


class ResidualMLP(nn.Module):
    """MLP(x) + x with the authors' MLP2 layers."""

    def __init__(self, d: int, bottleneck: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d, bottleneck), nn.ReLU(), nn.Linear(bottleneck, bottleneck // 2),
                                    nn.Tanh(), nn.Linear(bottleneck // 2, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + x


class Prompts(nn.Module):
    """Every task's prompt (and MLP), in task order; `rows()` is the prefix, newest first."""

    def __init__(self, cfg: ProgPromptConfig):
        super().__init__()
        self.cfg = cfg
        self.prompts = nn.ParameterList()
        self.mlps = nn.ModuleList()
        self.visible: int | None = None  # how many of the first prompts the prefix holds (None: all)

    def add(self, init: torch.Tensor) -> None:
        d = init.shape[-1]
        ref = next(self.parameters(), init)
        self.prompts.append(nn.Parameter(init.to(ref.device, ref.dtype)))
        if self.cfg.mlp:
            self.mlps.append(ResidualMLP(d, self.cfg.bottleneck).to(ref.device, ref.dtype))

    def _shown(self) -> list[nn.Parameter]:
        return list(self.prompts)[: self.visible]

    def length(self) -> int:
        return sum(p.shape[0] for p in self._shown())

    def rows(self) -> torch.Tensor:
        own = [self.mlps[k](p) if self.cfg.mlp else p for k, p in enumerate(self._shown())]
        return torch.cat(own[::-1], dim=0)

    def prefix(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.rows()[None]  # the same prefix for every row: no task identity, no input dependence


@register("progprompt", ProgPromptConfig)
class ProgPrompt(Hooks):
    holds_parameter_refs = True  # the hooks read the prompt parameters, which FSDP would flatten

    def __init__(self, cfg: ProgPromptConfig):
        super().__init__(cfg)
        self.uses_task_identity = cfg.task_prompts
        self.prompt_of: dict[str, int] = {}  # task -> how many prompts existed once it was trained

    def prepare_model(self, model, ctx):
        freeze(model)
        self.prompts = Prompts(self.cfg)
        model.add_module(MODULE, self.prompts)  # inside the model: the optimizer, DDP and checkpoints see it
        self.prefix = SoftPrefix(model, self.prompts)
        return model

    def _add_task(self, ctx) -> None:
        for p in self.prompts.parameters():
            p.requires_grad_(False)  # earlier prompts and MLPs are frozen
        self.prompts.add(vocab_rows(ctx.model.get_input_embeddings(), self.cfg.length))

    def before_stage(self, ctx) -> None:
        self._add_task(ctx)
        self.prompts.to(ctx.device)
        self.prompt_of.update({t.name: len(self.prompts.prompts) for t in ctx.tasks})

    @contextlib.contextmanager
    def eval_task(self, ctx, task):
        # task_prompts: [P'_i; ...; P'_1] for task i (a task not trained yet reads every prompt so far)
        self.prompts.visible = self.prompt_of.get(task) if self.cfg.task_prompts else None
        try:
            yield
        finally:
            self.prompts.visible = None

    def after_stage(self, ctx) -> None:
        for p in self.prompts.parameters():
            p.requires_grad_(False)

    def param_groups(self, ctx, params):
        return own_rate(params, self.prompts, self.cfg.lr, self.cfg.weight_decay)

    def state_dict(self):
        # the prompts' values are model parameters (checkpointed)
        return {}, {"tasks": len(self.prompts.prompts), "prompt_of": self.prompt_of}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        # rebuild the finished tasks' prompts and MLPs under their names; the runner then loads their values
        for _ in range(meta["tasks"]):
            self._add_task(ctx)
        self.prompt_of = dict(meta["prompt_of"])
        self.after_stage(ctx)
        self.prompts.to(ctx.device)
