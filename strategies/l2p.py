"""L2P, Learning to Prompt (Wang et al., CVPR 2022), in TRACE's language-model form: a pool of `pool` prompts of
`length` rows, each with a key; the base model is frozen and only the pool trains. For each input a query q (the
mean of the frozen token embeddings of the input's first `query_tokens` tokens after the chat template's fixed
header, which is the same for every input) picks the `top_k` prompts whose
keys are most cosine-similar, prepended in order of similarity; the surrogate loss pulls the chosen keys to the
query:

    L = CE - pull * sum over the batch's chosen (row, prompt) of cos(q_row, k_prompt) / B

Reference: BeyonderXX/TRACE @462e39f, model/Dynamic_network/L2P.py (pool 10, top 3, pull coefficient 0.5, prompts
initialised from random vocabulary embeddings divided by 100, cosine similarity, prepended in similarity order), after
JH-LEE-KR/l2p-pytorch. No task identity at test: every input picks its own prompts. Deliberate differences
(docs/strategies.md, Faithfulness):
- keys are parameters that the pull term trains (the original L2P's; TRACE fixes them at the mean of each initial
  prompt, computed once, so its pull term has no gradient at all); they start at that mean, as TRACE's;
- the query averages `query_tokens` tokens of the input, those after the chat template's header: the task header
  and instruction in this benchmark's prompts (TRACE averages every position, left padding and, in training, the answer included, so its
  training and test queries differ); the same tokens in training, scoring and generation, never the answer while
  the prompts are at least that long (checked on every training and scored prompt);
- the pool trains at lr 0.3, the prompt-tuning rate of Progressive Prompts' scripts (TRACE trains it at its global
  rate), with weight decay 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.api import ClbenchError
from strategies.base import Hooks, register
from strategies.common.checks import check_range
from strategies.common.soft_prompt import SoftPrefix, freeze, own_rate, vocab_rows

MODULE = "clbench_l2p"


@dataclass
class L2PConfig:
    pool: int = 10  # prompts in the pool
    length: int = 5  # rows per prompt
    top_k: int = 3  # prompts chosen per input
    pull: float = 0.5  # weight of the key-query pull term
    query_tokens: int = 32  # the input's first tokens the query averages
    init_scale: float = 0.01  # the vocabulary rows the prompts start from, scaled (TRACE: / 100)
    lr: float = 0.3  # learning rate of the pool (prompts and keys), which is all that trains
    weight_decay: float = 0.0

    def __post_init__(self):
        check_range(self.pool, "pool", 1, integer=True)
        check_range(self.length, "length", 1, integer=True)
        check_range(self.top_k, "top_k", 1, self.pool, integer=True)
        check_range(self.pull, "pull", 0)
        check_range(self.query_tokens, "query_tokens", 1, integer=True)
        check_range(self.init_scale, "init_scale", 0, low_open=True)
        check_range(self.lr, "lr", 0, low_open=True)
        check_range(self.weight_decay, "weight_decay", 0)


def head_mask(real: torch.Tensor, k: int, skip: int = 0) -> torch.Tensor:
    """[B, L] bool: each row's first k tokens that are not padding, after its first `skip` such tokens."""
    count = real.long().cumsum(-1)
    return real & (count > skip) & (count <= skip + k)


def select(query: torch.Tensor, keys: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [B, top_k] in decreasing cosine similarity, the summed chosen similarities / B)."""
    sim = F.normalize(query.float(), dim=-1, eps=1e-12) @ F.normalize(keys.float(), dim=-1, eps=1e-12).T
    idx = sim.topk(top_k, dim=-1).indices
    return idx, sim.gather(1, idx).sum() / query.shape[0]


class PromptPool(nn.Module):
    def __init__(self, cfg: L2PConfig, embedding: nn.Embedding, skip: int = 0):
        super().__init__()
        self.cfg = cfg
        self.skip = skip  # the tokens of the chat template's header, the same in every prompt
        self.embedding = [embedding]  # the frozen input embedding (a list: not a submodule, not saved twice)
        rows = vocab_rows(embedding, cfg.pool * cfg.length, cfg.init_scale)
        self.prompts = nn.Parameter(rows.view(cfg.pool, cfg.length, -1))
        # only the pull term moves the keys: without it they stay put, and do not train (DDP would find them unused)
        self.keys = nn.Parameter(self.prompts.detach().mean(1).clone(), requires_grad=cfg.pull > 0)
        self.pulled: torch.Tensor | None = None  # the last prefixed forward's pull term, for the loss

    def length(self) -> int:
        return self.cfg.top_k * self.cfg.length

    def query(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        head = head_mask(real, self.cfg.query_tokens, self.skip)
        with torch.no_grad():
            emb = self.embedding[0](input_ids).float()
        w = head.to(emb.dtype)[..., None]
        return (emb * w).sum(1) / w.sum(1).clamp(min=1)

    def prefix(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        idx, self.pulled = select(self.query(input_ids, real), self.keys, self.cfg.top_k)
        return self.prompts[idx].flatten(1, 2)  # [B, top_k * length, d], most similar first


@register("l2p", L2PConfig)
class L2P(Hooks):
    holds_parameter_refs = True  # the hooks read the pool's parameters, which FSDP would flatten

    def prepare_model(self, model, ctx):
        freeze(model)
        self.pool = PromptPool(self.cfg, model.get_input_embeddings(), skip=len(ctx.encoder.turn[0]))
        model.add_module(MODULE, self.pool)
        self.prefix = SoftPrefix(model, self.pool)
        for task in ctx.stream.tasks:  # the scored prompts, before any training: the same query in every test
            self._check_prompts(ctx.encoder.encode(task, task.scored(ctx.cfg.eval.split)), "scored")
        return model

    def _check_prompts(self, items, split: str) -> None:
        # a prompt shorter than the query's tokens would put answer (or label) tokens into its query
        short = min(items, key=lambda e: len(e.prompt), default=None)
        need = self.pool.skip + self.cfg.query_tokens
        if short is not None and len(short.prompt) < need:
            raise ClbenchError(f"strategy l2p.query_tokens={self.cfg.query_tokens} (after a chat header of "
                               f"{self.pool.skip}) exceeds a {split} prompt of task {short.task} "
                               f"({len(short.prompt)} tokens): the query would read its answer; lower it")

    def train_items(self, ctx, items):
        self._check_prompts(items, "training")
        return items

    def loss(self, ctx, batch, outputs, loss):
        pulled, self.pool.pulled = self.pool.pulled, None
        if pulled is None or not self.cfg.pull:
            return loss
        ctx.log("l2p_pull", pulled)
        return loss - self.cfg.pull * pulled

    def param_groups(self, ctx, params):
        return own_rate(params, self.pool, self.cfg.lr, self.cfg.weight_decay)
