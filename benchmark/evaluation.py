"""Evaluation: label log-likelihood ranking (default) or greedy generation with exact match (the papers' mode)."""
from __future__ import annotations

import math
import string
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from benchmark.data import Encoded, length_bucketed_batches, pad_batch


@dataclass
class EvalConfig:
    mode: str = "loglik"  # loglik | generate
    batch_size: int = 16
    normalize: bool = False  # loglik: rank by mean instead of summed answer log-probability
    max_new_tokens: int = 0  # generate: 0 = longest label + 2 tokens
    general_passages: int = 16  # general-ability perplexity passages (0 = off)
    general_tokens: int = 128


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation as in the O-LoRA scorer: lower-case, no punctuation, single spaces (articles kept)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(text.split())


def _left_pad(seqs: list[tuple[int, ...]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = pad_batch(seqs, pad_id, "left")
    return b["input_ids"].to(device), b["attention_mask"].to(device), b["position_ids"].to(device)


def _shard(items: list, rank: int, world: int) -> list[int]:
    return [i for i in range(len(items)) if i % world == rank]


def _token_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the full log-softmax tensor."""
    logits = logits.float()
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.inference_mode()
def loglik_scores_pairs(model, examples: list[Encoded], answers: list[tuple[int, ...]], pad_id: int, batch_size: int,
                        device, normalize: bool = False) -> torch.Tensor:
    """Reference implementation: one full forward per (example, label) pair. Slow; used to check the fast path."""
    scores = torch.empty(len(examples), len(answers))
    for e, ex in enumerate(examples):
        seqs = [ex.prompt + a for a in answers]
        ids, mask, pos = _left_pad(seqs, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        for l, a in enumerate(answers):
            n = len(a)
            tok = torch.tensor(a, device=logits.device)
            lp = _token_logp(logits[l, -n - 1 : -1], tok)
            scores[e, l] = lp.mean() if normalize else lp.sum()
    return scores


class LabelPack:
    """All labels' answer tokens laid out once, to be appended after every prompt of a batch.

    Label l contributes its tokens but the last (which is only predicted) as segment l. Row b of a batch is
    [left pads | prompt b | segment 1 | segment 2 | ...]; a 4-D attention mask lets each segment see the prompt
    and its own earlier tokens only, and its position ids restart where the prompt ends, so every label is
    scored exactly as if it alone followed the prompt, in a single forward with no KV-cache copies.
    """

    def __init__(self, answers: list[tuple[int, ...]], device):
        self.n_lab, self.width = len(answers), max(len(a) for a in answers)
        segs = [a[:-1] for a in answers]
        self.tokens = torch.tensor([t for sg in segs for t in sg], dtype=torch.long, device=device)
        seg_id = torch.tensor([l for l, sg in enumerate(segs) for _ in sg], dtype=torch.long, device=device)
        self.offset = torch.tensor([j for sg in segs for j in range(len(sg))], dtype=torch.long, device=device)
        # a segment token sees the tokens of its own segment up to itself
        self.seg_seg = (seg_id[:, None] == seg_id[None, :]) & (self.offset[None, :] <= self.offset[:, None])
        # gather plan: the logit index (0 = the prompt's last position) and the target of answer token j of label l
        starts = [0]
        for sg in segs[:-1]:
            starts.append(starts[-1] + len(sg))
        where = torch.zeros(self.n_lab, self.width, dtype=torch.long)
        target = torch.zeros(self.n_lab, self.width, dtype=torch.long)
        valid = torch.zeros(self.n_lab, self.width, dtype=torch.bool)
        for l, a in enumerate(answers):
            for j, t in enumerate(a):
                where[l, j] = 0 if j == 0 else 1 + starts[l] + j - 1
                target[l, j], valid[l, j] = t, True
        self.where, self.target, self.valid = where.to(device), target.to(device), valid.to(device)

    def inputs(self, prompts: list[tuple[int, ...]], pad_id: int, dtype) -> dict[str, torch.Tensor]:
        device = self.tokens.device
        b = pad_batch(prompts, pad_id, "left")
        ids, real = b["input_ids"].to(device), b["attention_mask"].to(device).bool()
        B, P = ids.shape
        T = len(self.tokens)
        allowed = torch.zeros(B, P + T, P + T, dtype=torch.bool, device=device)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        allowed[:, :P, :P] = causal[None] & real[:, None, :]
        allowed[:, :P, :P] |= torch.eye(P, dtype=torch.bool, device=device)[None]  # pad rows: no empty softmax
        allowed[:, P:, :P] = real[:, None, :]
        allowed[:, P:, P:] = self.seg_seg[None]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        lengths = real.sum(-1, keepdim=True)
        position_ids = torch.cat([b["position_ids"].to(device), lengths + self.offset[None]], dim=1)
        return {"input_ids": torch.cat([ids, self.tokens[None].expand(B, -1)], dim=1), "attention_mask": mask[:, None],
                "position_ids": position_ids, "logits_to_keep": torch.arange(P - 1, P + T, device=device)}

    def scores(self, logits: torch.Tensor, normalize: bool) -> torch.Tensor:
        """[B, n_labels] from the kept logits [B, 1 + T, V]."""
        B = logits.shape[0]
        lse = torch.logsumexp(logits.float(), dim=-1)  # [B, 1 + T]: one normaliser per kept position
        where, target = self.where.flatten(), self.target.flatten()
        lp = (logits[:, where, target].float() - lse[:, where]).view(B, self.n_lab, self.width)
        lp = lp * self.valid[None]
        summed = lp.sum(-1)
        return summed / self.valid.sum(-1)[None] if normalize else summed


def _takes_custom_mask(model) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) in ("sdpa", "eager")


@torch.inference_mode()
def loglik_scores(model, examples: list[Encoded], answers: list[tuple[int, ...]], pad_id: int, batch_size: int,
                  device, normalize: bool = False, progress: str | None = None) -> torch.Tensor:
    """[n_examples, n_labels] summed (or mean) log-probability of each label's answer tokens after the prompt:
    one forward per batch of prompts with every label packed after each prompt (LabelPack)."""
    if not _takes_custom_mask(model):
        return loglik_scores_cached(model, examples, answers, pad_id, batch_size, device, normalize, progress)
    pack = LabelPack(answers, device)
    dtype = next(model.parameters()).dtype
    scores = torch.empty(len(examples), len(answers))
    batches = length_bucketed_batches([len(e.prompt) for e in examples], batch_size, seed=0, shuffle=False, window=10**9)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        logits = model(**pack.inputs([examples[i].prompt for i in batch], pad_id, dtype)).logits
        scores[batch] = pack.scores(logits, normalize).float().cpu()
    return scores


@torch.inference_mode()
def loglik_scores_cached(model, examples: list[Encoded], answers: list[tuple[int, ...]], pad_id: int, batch_size: int,
                         device, normalize: bool = False, progress: str | None = None) -> torch.Tensor:
    """The same scores for attention kernels that take no custom mask (flash attention): each prompt is forwarded
    once and its KV cache repeated for the labels, which are then scored together."""
    n_lab = len(answers)
    width = max(len(a) for a in answers)
    ans = torch.full((n_lab, width), pad_id, dtype=torch.long)
    ans_mask = torch.zeros((n_lab, width), dtype=torch.long)
    for l, a in enumerate(answers):
        ans[l, : len(a)] = torch.tensor(a)
        ans_mask[l, : len(a)] = 1
    ans, ans_mask = ans.to(device), ans_mask.to(device)
    scores = torch.empty(len(examples), n_lab)
    batches = length_bucketed_batches([len(e.prompt) for e in examples], batch_size, seed=0, shuffle=False, window=10**9)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        ids, mask, pos = _left_pad([examples[i].prompt for i in batch], pad_id, device)
        B = len(batch)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        # the prompt's last position predicts every answer's first token
        lp = torch.zeros(B, n_lab, width, device=device)
        lp[:, :, 0] = _token_logp(out.logits[:, -1:].expand(B, n_lab, -1), ans[None, :, 0].expand(B, -1))
        if width > 1:
            cache = out.past_key_values
            cache.batch_repeat_interleave(n_lab)
            cont = ans[:, :-1].repeat(B, 1)  # row b*n_lab + l: label l after prompt b
            cont_mask = torch.cat([mask.repeat_interleave(n_lab, 0), ans_mask[:, :-1].repeat(B, 1)], dim=1)
            start = mask.sum(-1).repeat_interleave(n_lab)[:, None]
            cont_pos = start + torch.arange(width - 1, device=device)[None]
            logits = model(input_ids=cont, attention_mask=cont_mask, position_ids=cont_pos, past_key_values=cache).logits
            lp[:, :, 1:] = _token_logp(logits, ans[:, 1:].repeat(B, 1)).view(B, n_lab, width - 1)
        lp = lp * ans_mask[None]
        summed = lp.sum(-1)
        res = summed / ans_mask.sum(-1)[None] if normalize else summed
        scores[batch] = res.float().cpu()
    return scores


@torch.inference_mode()
def generate_predictions(model, examples: list[Encoded], pad_id: int, eos_id: int, batch_size: int, device,
                         max_new_tokens: int, decode, progress: str | None = None) -> list[str]:
    """Greedy generation (num_beams=1, no sampling) of up to max_new_tokens after each prompt."""
    out: list[str] = [""] * len(examples)
    batches = length_bucketed_batches([len(e.prompt) for e in examples], batch_size, seed=0, shuffle=False, window=10**9)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        ids, mask, _ = _left_pad([examples[i].prompt for i in batch], pad_id, device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id)
        for row, i in enumerate(batch):
            new = gen[row, ids.shape[1] :].tolist()
            if eos_id in new:
                new = new[: new.index(eos_id)]
            out[i] = decode(new)
    return out


def accuracy(model, examples: list[Encoded], labels: list[str], encoder, cfg: EvalConfig, device,
             rank: int = 0, world: int = 1, progress: str | None = None) -> tuple[int, int]:
    """(correct, total) on this process's shard of the examples; the caller sums over processes."""
    mine = [examples[i] for i in _shard(examples, rank, world)]
    if not mine:
        return 0, 0
    pad_id = encoder.tok.pad_token_id
    if cfg.mode == "loglik":
        answers = [encoder.answer(l) for l in labels]
        scores = loglik_scores(model, mine, answers, pad_id, cfg.batch_size, device, cfg.normalize, progress)
        correct = int((scores.argmax(-1) == torch.tensor([e.label for e in mine])).sum())
    elif cfg.mode == "generate":
        longest = max(len(encoder.answer(l)) for l in labels)
        preds = generate_predictions(model, mine, pad_id, encoder.tok.eos_token_id, cfg.batch_size, device,
                                     cfg.max_new_tokens or longest + 2,
                                     lambda ids: encoder.tok.decode(ids, skip_special_tokens=True), progress)
        gold = [normalize_answer(labels[e.label]) for e in mine]
        correct = sum(normalize_answer(p) == g for p, g in zip(preds, gold))
    else:
        from benchmark.errors import ClbenchError

        raise ClbenchError(f"eval.mode must be 'loglik' or 'generate', got {cfg.mode!r}")
    return correct, len(mine)


@torch.inference_mode()
def nll_sum(model, seqs: list[tuple[int, ...]], pad_id: int, batch_size: int, device) -> tuple[float, int]:
    """Summed next-token NLL and the number of predicted tokens: perplexity = exp(sum / count)."""
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        ids, mask, pos = _left_pad(chunk, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
        target = ids[:, 1:]
        valid = (mask[:, 1:] * mask[:, :-1]).bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total += float(nll[valid].sum())
        count += int(valid.sum())
    return total, count


def perplexity(total: float, count: int) -> float | None:
    """exp(mean NLL); None when undefined (no tokens) or not finite (a diverged model), never NaN in a record."""
    if not count or not math.isfinite(total) or total / count > 700:  # exp(700) is near the float64 limit
        return None
    return math.exp(total / count)

