"""GeRe (Zhang et al., 2025): replay a fixed set of general texts, constraining their activation states.

Reference pass, once, with the base model (before the first task, so the thresholds always come from the base
model and never from a later task's model): last-layer hidden states H* (after the final norm) on the N general
samples; per-dimension mu and sigma over all real tokens; pos = mu + k*sigma, neg = mu - k*sigma (k = 1).
Each reference activation is labelled pos (H* >= pos), neg (H* <= neg) or neutral.
Threshold-based margin (TM) loss on the current hidden states h of the same samples:
    pos: relu(pos - h)   neg: relu(h - neg)   neutral: relu(h - pos) + relu(neg - h)
    L_TM = sum(violations over real tokens) / count(non-zero violations)     (0 when nothing violates)

Objective, matched to what the official code effectively optimises. The code trains with per-device batch 1:
the general set is concatenated to the task data and shuffled, so each micro-batch is either one task sample
(loss CE_task) or one general sample (loss CE_gen + w*L_TM; the code's "/2 when both are present" never fires).
Gradient accumulation averages the micro-batch losses, so a global batch of n_task task and n_gen general samples
optimises  (n_task * CE_task + sum_j (CE_j + w_j * L_TM,j)) / (n_task + n_gen), i.e.
    L = (1 - p) * CE_task + p * mean_j (CE_j + w_j * L_TM,j),     p = n_gen / (n_task + n_gen),
p being the general share of the mixed data (about 1/6 in the paper's runs). Here each task batch of B rows is
joined by `per_batch` = k general rows, so p = k / (B + k). Each general row j is its own micro-batch in the
code, so its CE_j (mean over its tokens), L_TM,j (over its own non-zero violations) and w_j are computed per row
and then averaged (objective version 2; version 1 pooled the k rows' tokens, 1.7 % off the step objective and 20 %
off its gradient on two rows of 110 and 128 tokens). Terms that other composed strategies added to the
loss are left at full weight: only the task CE is rescaled (L = loss - p*CE_task + p*(CE_gen + w*L_TM)).
w is a number (100 by default) or "dy": w_j = CE_j / L_TM,j (detached), the code's rescaling of the margin term to
the size of the cross-entropy of the micro-batch it is in (one general row).
`loss` selects the alternatives the paper compares: tm (GeRe), ce (label fitting only, "BaselineR"),
kl (logit imitation, temperature 2, summed over the vocabulary, mean over tokens), l1 / l2 (feature imitation).
Each step replays `per_batch` general samples drawn from the fixed set (the code mixes the 1000 samples into
the task data instead; the expected replay share is the same when per_batch/B = N/N_task). Draws differ per
process. The reference states are computed under the same autocast as training, so L_TM is 0 at step 0.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.api import IGNORE, final_hidden, is_seq2seq, lm_logits_targets, rng_from_json, rng_to_json
from strategies.base import Hooks, LoraSettings, OptionError, StrategyConfigError, register
from strategies.common.checks import check_adapter, check_choice, check_lora, check_range
from strategies.common.lora import apply_adapter
from strategies.common.processes import gather_each, own_item


LOSSES = ("tm", "ce", "kl", "l1", "l2")


@dataclass
class GeReConfig:
    adapter: str = "lora"  # lora | full | none
    lora: LoraSettings = field(default_factory=LoraSettings)
    n_samples: int = 1000  # the fixed general set (the paper: 1000 SlimPajama lines)
    max_tokens: int = 128  # general sample length (the code: 563)
    per_batch: int = 2  # general samples replayed with every task batch
    loss: str = "tm"  # tm | ce | kl | l1 | l2
    weight: Any = 100.0  # w: a number or "dy"
    sigma: float = 1.0
    temperature: float = 2.0  # kl only

    def __post_init__(self):
        check_adapter(self.adapter, "adapter")
        check_lora(self.lora, "lora")
        check_range(self.n_samples, "n_samples", 1, integer=True)
        check_range(self.max_tokens, "max_tokens", 2, integer=True)  # a next-token loss needs two
        check_range(self.per_batch, "per_batch", 1, integer=True)
        check_choice(self.loss, "loss", LOSSES)
        if self.weight != "dy":
            try:
                check_range(self.weight, "weight", 0)
            except OptionError:
                raise OptionError(f"weight must be a number >= 0 or 'dy', got {self.weight!r}") from None
        check_range(self.sigma, "sigma", 0)  # k of mu +- k*sigma: a negative k swaps pos and neg
        check_range(self.temperature, "temperature", 0, low_open=True)  # logits are divided by it


def general_share(n_task_rows: int, n_general_rows: int) -> float:
    """p: the share of general samples in the mixed batch."""
    return n_general_rows / (n_task_rows + n_general_rows)


def gere_objective(loss: torch.Tensor, task_ce: torch.Tensor, general_ce: torch.Tensor, term: torch.Tensor | None,
                   p: float, w) -> torch.Tensor:
    """loss - p*CE_task + p*mean_j(CE_j + w_j*term_j): the task CE weighted (1-p), the general rows p (each row's
    terms and weight its own, as one micro-batch of the code), other terms kept. general_ce, term and w are
    per-row vectors (or scalars: one row)."""
    general = general_ce if term is None else general_ce + w * term
    return loss - p * task_ce + p * general.mean()


def row_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B]: each row's mean next-token cross-entropy over its own target tokens."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    valid = (target != IGNORE).to(ce.dtype)
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def thresholds(h: torch.Tensor, mask: torch.Tensor, k: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mu +- k*sigma over the real tokens of reference states h [N, L, d] (population std)."""
    flat = h[mask.bool()]
    mu, sd = flat.mean(0), flat.std(0, unbiased=False)
    return mu + k * sd, mu - k * sd


def margin_labels(h_ref: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """+1 where the reference activation is at/above pos, -1 at/below neg, 0 in between."""
    return (h_ref >= pos).to(torch.int8) - (h_ref <= neg).to(torch.int8)


def tm_loss(h: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B]: per row, the mean size of its margin violations (over its non-zero violations only), masked to real
    tokens."""
    v_pos = F.relu(pos - h)
    v_neg = F.relu(h - neg)
    v_mid = F.relu(h - pos) + F.relu(neg - h)
    viol = torch.where(labels > 0, v_pos, torch.where(labels < 0, v_neg, v_mid)) * mask[..., None].to(h.dtype)
    nonzero = (viol > 0).sum((1, 2))
    return viol.sum((1, 2)) / nonzero.clamp(min=1)


@register("gere", GeReConfig, version=2)  # 2: per-row CE, TM and dy weight (see the module's docstring)
class GeRe(Hooks):
    needs_hidden_states = False  # the general batch gets its own forward

    def __init__(self, cfg: GeReConfig):
        super().__init__(cfg)
        self.ref: dict[str, torch.Tensor] | None = None
        self.rngs: list | None = None  # every process's draw state at the last stage's end (several processes)

    def prepare_model(self, model, ctx):
        from task_streams import general

        if self.cfg.loss == "kl" and is_seq2seq(model):
            # the stored states times the head are not the logits when the model rescales before its head (tied T5)
            raise StrategyConfigError("strategy gere.loss=kl needs a decoder-only model; use tm, ce, l1 or l2 with "
                                      f"the encoder-decoder model {type(model).__name__}")
        texts = general.passages("replay", self.cfg.n_samples)
        self.seqs = ctx.encoder.encode_texts(texts, self.cfg.max_tokens)
        # collated once: replay batches are row slices, aligned with the stored reference states (an
        # encoder-decoder model continues each passage's first half: data.lm_split)
        self.batch = ctx.encoder.collate_lm(self.seqs)
        self.rng = random.Random(f"{ctx.seed}/{ctx.accelerator.process_index}")  # distinct draws per process
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    @torch.no_grad()
    def _reference(self, ctx) -> None:
        """H* of the base model: the first task has not trained yet when this runs."""
        batch = self.batch
        was = ctx.model.training
        ctx.model.eval()
        hs = []
        for i in range(0, len(self.seqs), 16):
            sub = {k: v[i : i + 16] for k, v in batch.items()}
            with ctx.accelerator.autocast():  # the precision training runs in, so that L_TM is 0 at step 0
                out = ctx.forward(sub, model=ctx.model, output_hidden_states=True)
                hs.append(final_hidden(out, sub)[0].float().cpu())
        ctx.model.train(was)
        # the mask of the states the head reads: an encoder-decoder model's decoder
        h, mask = torch.cat(hs), batch.get("decoder_attention_mask", batch["attention_mask"])
        pos, neg = thresholds(h, mask, self.cfg.sigma)
        self.ref = {"h": h, "mask": mask, "labels": margin_labels(h, pos, neg), "pos": pos, "neg": neg,
                    "lm_head": ctx.model.get_output_embeddings().weight.detach().float().cpu().clone()}

    def before_stage(self, ctx) -> None:
        if self.ref is None:
            self._reference(ctx)

    def _general_batch(self) -> tuple[list[int], dict[str, torch.Tensor]]:
        idx = sorted(self.rng.sample(range(len(self.seqs)), min(self.cfg.per_batch, len(self.seqs))))
        return idx, {k: v[idx] for k, v in self.batch.items()}

    def loss(self, ctx, batch, outputs, loss):
        idx, gb = self._general_batch()
        out = ctx.forward(gb, output_hidden_states=True)
        dev = out.logits.device
        logits, target = lm_logits_targets(out, gb)
        gen_ce = row_ce(logits, target)  # [k]
        ctx.log("gere_general_ce", gen_ce.mean())
        p = general_share(batch["input_ids"].shape[0], len(idx))
        if self.cfg.loss == "ce":
            return gere_objective(loss, ctx.task_ce, gen_ce, None, p, 0.0)
        h, mask = final_hidden(out, gb)
        h, mask = h.float(), mask.to(dev)
        ref_h = self.ref["h"][idx].to(dev)
        if self.cfg.loss == "tm":
            term = tm_loss(h, self.ref["labels"][idx].to(dev), self.ref["pos"].to(dev), self.ref["neg"].to(dev), mask)
        elif self.cfg.loss in ("l1", "l2"):
            diff = (h - ref_h).abs() if self.cfg.loss == "l1" else (h - ref_h) ** 2
            term = (diff * mask[..., None]).sum((1, 2)) / (mask.sum(1) * h.shape[-1])
        else:  # kl: reference logits from the stored base states and the base model's output head
            T = self.cfg.temperature
            ref_logits = ref_h @ self.ref["lm_head"].to(dev).T
            p_ref = F.log_softmax(ref_logits / T, -1)
            p_cur = F.log_softmax(out.logits.float() / T, -1)
            kl = (p_ref.exp() * (p_ref - p_cur)).sum(-1)
            term = (kl * mask).sum(1) / mask.sum(1)  # [k]
        ctx.log(f"gere_{self.cfg.loss}", term.mean())
        w = (gen_ce.detach() / term.detach().clamp(min=1e-12)) if self.cfg.weight == "dy" else float(self.cfg.weight)
        return gere_objective(loss, ctx.task_ce, gen_ce, term, p, w)

    def after_stage(self, ctx) -> None:
        # the checkpoint (main process) holds every process's draws of general passages
        self.rngs = gather_each(ctx.accelerator, rng_to_json(self.rng))

    def state_dict(self):
        tensors = {f"ref/{k}": v for k, v in (self.ref or {}).items()}
        return tensors, {"rng": rng_to_json(self.rng), **({"rngs": self.rngs} if self.rngs else {})}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.ref = {k[len("ref/"):]: v for k, v in tensors.items() if k.startswith("ref/")} or None
        acc = ctx.accelerator
        own = own_item(meta.get("rngs"), acc.process_index, acc.num_processes, "GeRe's draw state")
        rng_from_json(meta["rng"] if own is None else own, self.rng)
