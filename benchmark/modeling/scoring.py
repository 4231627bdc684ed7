"""Evaluation: every example is scored both ways in one pass, unless `eval.mode` asks for one.

- generation (the papers' mode): greedy decoding of up to `max_new_tokens` (50, the papers' limit), a row stopping
  at EOS and the batch when every row has stopped; exact match after SQuAD-style normalisation.
- label log-likelihood: the label whose answer tokens are most probable after the prompt.

Sharing the prompt: one forward of the prompt with every label packed after it (LabelPack) gives the label
scores, the logits that start generation and, cropped to the prompt, the KV cache that generation continues from.
Models whose attention kernel takes no custom mask (flash attention) score labels from a repeated prompt cache
and generate from a second prompt forward.

Encoder-decoder models (T5): the encoder reads each prompt once; the labels are scored by one decoder pass over
every (prompt, label) pair on the shared encoder states, and greedy decoding runs the decoder with its cache.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch
from tqdm.auto import tqdm

from benchmark.modeling.data import Encoded, collate_lm, length_bucketed_batches, pad_batch, token_bounded_batches
from benchmark.config import EvalConfig
from benchmark.records.schema import EVAL_MODES
from benchmark.errors import ClbenchError
from benchmark.modeling.model import base_model, decoder_start, lm_logits_targets
from benchmark.records.predictions import Scored
from benchmark.records.text import normalize_answer

def _left_pad(seqs: list[tuple[int, ...]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = pad_batch(seqs, pad_id, "left")
    return b["input_ids"].to(device), b["attention_mask"].to(device), b["position_ids"].to(device)


def shard(items: list, rank: int, world: int) -> list[int]:
    """The indices this process evaluates: every world-th item from its rank (the main process gathers)."""
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
            cache = _cache_of(out)
            cache.batch_repeat_interleave(n_lab)
            cont = ans[:, :-1].repeat(B, 1)  # row b*n_lab + l: label l after prompt b
            cont_mask = torch.cat([mask.repeat_interleave(n_lab, 0), ans_mask[:, :-1].repeat(B, 1)], dim=1)
            start = mask.sum(-1).repeat_interleave(n_lab)[:, None]
            cont_pos = start + torch.arange(width - 1, device=device)[None]
            logits = model(input_ids=cont, attention_mask=cont_mask, position_ids=cont_pos,
                           **{_cache_kw(model): cache}).logits
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


def _cache_kw(model) -> str:
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns until 5.40); 4.x knows the old one
    base = base_model(model)  # PEFT forwards **kwargs
    return _cache_name(type(base))


@functools.lru_cache(maxsize=None)
def _cache_name(cls: type) -> str:
    # looked up once per model class: generation asks at every decoded token
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _greedy(model, ids, mask, first_logits, cache, max_new_tokens: int, eos_id: int, pad_id: int):
    """Greedy continuation of left-padded prompts whose KV cache and last-position logits exist already.
    Returns [B, max_new_tokens] tokens (pad after a row's EOS) and, per row, whether EOS came."""
    B = ids.shape[0]
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    next_tok = first_logits.argmax(-1)
    lengths = mask.sum(-1)
    for t in range(max_new_tokens):
        out[:, t] = torch.where(done, torch.full_like(next_tok, pad_id), next_tok)
        done |= next_tok == eos_id
        if t == max_new_tokens - 1 or bool(done.all()):  # one host sync per token, as transformers' generate
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(input_ids=next_tok[:, None], attention_mask=mask, position_ids=(lengths + t)[:, None],
                       use_cache=True, **{_cache_kw(model): cache}).logits[:, -1]
        next_tok = logits.argmax(-1)
    return out, done


def _prompt_forward(model, prompts, pad_id: int, device):
    ids, mask, pos = _left_pad(prompts, pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    return ids, mask, out.logits[:, -1], _cache_of(out)


def _margins(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.shape[1] == 1:
        return scores.argmax(-1), torch.full((scores.shape[0],), float("inf"))
    top = scores.topk(2, dim=-1)
    return top.indices[:, 0], top.values[:, 0] - top.values[:, 1]


def _encode_prompts(model, prompts, pad_id: int, device):
    b = pad_batch(prompts, pad_id, "right")  # relative positions: the encoder needs no left padding
    ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
    base = base_model(model)
    return base.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True), mask


def _seq2seq_label_scores(model, enc, mask, answers, start: int, pad_id: int, normalize: bool) -> torch.Tensor:
    """[B, n_labels]: every label decoded (teacher-forced) after every prompt, on the prompts' encoder states."""
    from transformers.modeling_outputs import BaseModelOutput

    B, n_lab, device = mask.shape[0], len(answers), mask.device
    dec = pad_batch([(start,) + a[:-1] for a in answers], pad_id, "right")
    target = pad_batch(list(answers), pad_id, "right")
    dec_ids, dec_mask = dec["input_ids"].to(device), dec["attention_mask"].to(device)
    tgt, valid = target["input_ids"].to(device), target["attention_mask"].to(device)
    states = enc.last_hidden_state.repeat_interleave(n_lab, 0)  # row b*n_lab + l: label l after prompt b
    logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                   attention_mask=mask.repeat_interleave(n_lab, 0), decoder_input_ids=dec_ids.repeat(B, 1),
                   decoder_attention_mask=dec_mask.repeat(B, 1), use_cache=False).logits
    lp = _token_logp(logits, tgt.repeat(B, 1)).view(B, n_lab, -1) * valid[None]
    summed = lp.sum(-1)
    return summed / valid.sum(-1)[None] if normalize else summed


def _greedy_seq2seq(model, enc, mask, start: int, max_new_tokens: int, eos_id: int, pad_id: int):
    """Greedy decoding from the start token on fixed encoder states, with the decoder's cache; as _greedy."""
    from transformers.modeling_outputs import BaseModelOutput

    B, device = mask.shape[0], mask.device
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cur = torch.full((B, 1), start, dtype=torch.long, device=device)
    enc_out, cache = BaseModelOutput(last_hidden_state=enc.last_hidden_state), None
    for t in range(max_new_tokens):
        kw = {_cache_kw(model): cache} if cache is not None else {}
        step = model(encoder_outputs=enc_out, attention_mask=mask, decoder_input_ids=cur, use_cache=True, **kw)
        cache = _cache_of(step)
        next_tok = step.logits[:, -1].argmax(-1)
        out[:, t] = torch.where(done, torch.full_like(next_tok, pad_id), next_tok)
        done |= next_tok == eos_id
        if bool(done.all()):
            break
        cur = next_tok[:, None]
    return out, done


def _score_seq2seq(model, examples, answers, pad_id, eos_id, cfg: "EvalConfig", device, decode, progress,
                   start: int) -> list["Scored"]:
    results = [Scored(i) for i in range(len(examples))]
    for batch in tqdm(eval_batches(examples, cfg), desc=progress, disable=progress is None, leave=False):
        enc, mask = _encode_prompts(model, [examples[i].prompt for i in batch], pad_id, device)
        if cfg.ranks_labels:
            _set_choices(results, batch, _seq2seq_label_scores(model, enc, mask, answers, start, pad_id,
                                                               cfg.normalize).float().cpu())
        if cfg.generates:
            tokens, ended = _greedy_seq2seq(model, enc, mask, start, cfg.max_new_tokens, eos_id, pad_id)
            _set_generations(results, batch, tokens, ended, eos_id, decode)
    return results


def _set_choices(results: list["Scored"], batch: list[int], scores: torch.Tensor) -> None:
    choice, margin = _margins(scores)
    for row, i in enumerate(batch):
        results[i].choice, results[i].margin = int(choice[row]), float(margin[row])


def _set_generations(results: list["Scored"], batch: list[int], tokens: torch.Tensor, ended: torch.Tensor,
                     eos_id: int, decode) -> None:
    for row, i in enumerate(batch):
        new = tokens[row].tolist()
        n = new.index(eos_id) if eos_id in new else len(new)
        r = results[i]
        r.generation, r.gen_tokens, r.hit_limit = decode(new[:n]), n, not bool(ended[row])


def eval_batches(examples: list[Encoded], cfg: EvalConfig, extra: int = 0) -> list[list[int]]:
    """The evaluation's batches: eval.batch_size prompts of similar length, or, with eval.batch_tokens, as many
    length-sorted prompts as fit that many padded tokens (more short prompts per batch; sized for the device)."""
    lengths = [len(e.prompt) for e in examples]
    if cfg.batch_tokens:
        return token_bounded_batches(lengths, cfg.batch_tokens, extra + (cfg.max_new_tokens if cfg.generates else 0))
    return length_bucketed_batches(lengths, cfg.batch_size, seed=0, shuffle=False, window=10**9)


@torch.inference_mode()  # no autograd graph: without it evaluation held every activation (2.8 -> 5 GB here)
def score_examples(model, examples: list[Encoded], answers: list[tuple[int, ...]], pad_id: int, eos_id: int,
                   cfg: EvalConfig, device, decode, progress: str | None = None) -> list[Scored]:
    """Every example scored as cfg.mode asks, sharing the prompt's forward between both scores where the
    attention kernel takes a custom mask (see the module docstring)."""
    start = decoder_start(model)
    if start is not None:
        return _score_seq2seq(model, examples, answers, pad_id, eos_id, cfg, device, decode, progress, start)
    results = [Scored(i) for i in range(len(examples))]
    packed = cfg.ranks_labels and _takes_custom_mask(model)
    pack = LabelPack(answers, device) if packed else None
    dtype = next(model.parameters()).dtype
    batches = eval_batches(examples, cfg, len(pack.tokens) if pack is not None else 0)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        prompts = [examples[i].prompt for i in batch]
        scores = first = cache = ids = mask = None
        if pack is not None:
            inputs = pack.inputs(prompts, pad_id, dtype)
            out = model(**inputs, use_cache=cfg.generates)
            scores = pack.scores(out.logits, cfg.normalize).float().cpu()
            if cfg.generates:
                first, cache = out.logits[:, 0], _cache_of(out)
                # drop the label segments: the prompt's keys and values saw the prompt only (LabelPack's mask);
                # a negative count means "remove" in transformers 4.x and 5.x alike
                cache.crop(-len(pack.tokens))
                ids, mask, _ = _left_pad(prompts, pad_id, device)
        elif cfg.ranks_labels:
            scores = loglik_scores_cached(model, [examples[i] for i in batch], answers, pad_id, len(batch), device,
                                          cfg.normalize)
        if scores is not None:
            _set_choices(results, batch, scores)
        if cfg.generates:
            if cache is None:
                ids, mask, first, cache = _prompt_forward(model, prompts, pad_id, device)
            tokens, ended = _greedy(model, ids, mask, first, cache, cfg.max_new_tokens, eos_id, pad_id)
            _set_generations(results, batch, tokens, ended, eos_id, decode)
    return results


def _exact_match(generation: str, gold: str) -> bool:
    return normalize_answer(generation) == normalize_answer(gold)


def accuracy(model, examples: list[Encoded], labels: list[str], encoder, cfg: EvalConfig, device,
             rank: int = 0, world: int = 1, progress: str | None = None) -> tuple[int, int]:
    """(correct, total) on this process's shard, by generation when cfg.mode computes it, else by label
    log-likelihood. The runner scores through score_examples and keeps every example's result."""
    if cfg.mode not in EVAL_MODES:
        raise ClbenchError(f"eval.mode must be one of {'|'.join(EVAL_MODES)}, got {cfg.mode!r}")
    mine = [examples[i] for i in shard(examples, rank, world)]
    if not mine:
        return 0, 0
    tok = encoder.tok
    res = score_examples(model, mine, [encoder.answer(l) for l in labels], tok.pad_token_id, tok.eos_token_id, cfg,
                         device, lambda ids: tok.decode(ids, skip_special_tokens=True), progress)
    if cfg.generates:
        return sum(_exact_match(r.generation, labels[e.label]) for r, e in zip(res, mine)), len(mine)
    return sum(r.choice == e.label for r, e in zip(res, mine)), len(mine)


@torch.inference_mode()
def nll_sum(model, seqs: list[tuple[int, ...]], pad_id: int, batch_size: int, device,
            eos_id: int | None = None) -> tuple[float, int]:
    """Summed next-token NLL and the number of predicted tokens: perplexity = exp(sum / count). An encoder-decoder
    model predicts each passage's second half from its first (data.lm_split): its perplexity is a continuation's."""
    start_id = decoder_start(model)
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        if start_id is not None:
            b = {k: v.to(device) for k, v in collate_lm(chunk, pad_id, start_id, eos_id).items()}
            logits, target = lm_logits_targets(model(**{k: v for k, v in b.items() if k != "labels"}), b)
            nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), target, reduction="none",
                                                    ignore_index=-100)
            valid = target != -100
            total += float(nll[valid].sum())
            count += int(valid.sum())
            continue
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

