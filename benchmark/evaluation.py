"""Evaluation: label log-likelihood ranking (default) or greedy generation with exact match (the papers' mode)."""
from __future__ import annotations

import math
import string
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from benchmark.data import Encoded, length_bucketed_batches, pad_left


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
    b = pad_left(seqs, pad_id)
    return b["input_ids"].to(device), b["attention_mask"].to(device), b["position_ids"].to(device)


def _forward_tail(model, ids, mask, pos, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions only: the vocabulary projection of the prompt is never computed."""
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -keep:]


def _shard(items: list, rank: int, world: int) -> list[int]:
    return [i for i in range(len(items)) if i % world == rank]


@torch.inference_mode()
def loglik_scores(model, examples: list[Encoded], answers: list[tuple[int, ...]], pad_id: int, batch_size: int,
                  device, normalize: bool = False, progress: str | None = None) -> torch.Tensor:
    """[n_examples, n_labels] summed (or mean) log-probability of each label's answer tokens after the prompt."""
    pairs = [(e, l) for e in range(len(examples)) for l in range(len(answers))]
    seqs = [examples[e].prompt + answers[l] for e, l in pairs]
    scores = torch.empty(len(examples), len(answers))
    batches = length_bucketed_batches([len(s) for s in seqs], batch_size, seed=0, shuffle=False, window=10**9)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        ids, mask, pos = _left_pad([seqs[i] for i in batch], pad_id, device)
        keep = max(len(answers[pairs[i][1]]) for i in batch) + 1
        logp = torch.log_softmax(_forward_tail(model, ids, mask, pos, keep).float(), dim=-1)
        for row, i in enumerate(batch):
            e, l = pairs[i]
            ans = torch.tensor(answers[l], device=logp.device)
            # logits at position j predict token j+1: the answer's n tokens are predicted by the n positions before the end
            tok_logp = logp[row, keep - 1 - len(ans) : keep - 1].gather(-1, ans[:, None]).squeeze(-1)
            scores[e, l] = tok_logp.mean() if normalize else tok_logp.sum()
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
        raise ValueError(f"eval.mode must be 'loglik' or 'generate', got {cfg.mode!r}")
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


def perplexity(total: float, count: int) -> float:
    return math.exp(total / count) if count else float("nan")

