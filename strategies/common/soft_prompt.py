"""Soft prompts in front of the input, for every forward the runner makes: training, packed label scoring and the
cached generation that continues from it, perplexity, lm-eval. Nothing in the runner knows about them: forward hooks
on the model (torch's public hook API) turn `input_ids` into `inputs_embeds` with the prompt rows in front, and
extend the attention mask and the position ids to match.

    decoder-only, a call without a cache:  [prefix | row]; the prefix sits at positions 0..n-1 and attends causally
        to itself, every token of the row attends to the whole prefix, the row's positions shift by n (left pads
        stay masked, between the prefix and the text); the logits (and hidden states) returned are the row's only
    decoder-only, a call continuing a cache:  the cache holds the prefix already; the mask gains n leading ones and
        the positions shift by n
    encoder-decoder (T5):  the prefix goes before the encoder's input; the mask the decoder's cross-attention reads
        gains n leading ones, so the decoder attends to the prompt's encoder states too

A packed-scoring call's 4-D mask [B, 1, Q, K] becomes [B, 1, n+Q, n+K] by the same rules, so the label scores, the
logits that start generation and the cropped KV cache all come from the same prefixed prompt.

Why not PEFT's prompt learning (PromptTuningConfig): PeftModelForCausalLM drops the position ids the runner passes
(with left padding every position then moves), extends only a 2-D attention mask (the packed scoring's 4-D mask
would not cover the virtual tokens), and continues a KV cache only inside its own `generate`, which clbench's cached
decoding does not call. Each would change the scores; tests/test_soft_prompt.py checks these hooks against a plain
forward over explicitly concatenated embeddings instead.
"""
from __future__ import annotations

from typing import Protocol

import torch

from benchmark.api import IGNORE, ClbenchError, base_model, is_seq2seq


class PrefixSource(Protocol):
    def length(self) -> int:
        """n, the number of prompt rows every call gets now (0: the model runs unchanged)."""

    def prefix(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """[B, n, d] prompt rows for these rows; `real` [B, L] marks the tokens that are not padding (and, in a
        packed-scoring call, the prompt plus the last label's tokens)."""


def vocab_rows(embedding: torch.nn.Embedding, n: int, scale: float = 1.0) -> torch.Tensor:
    """n rows copied from the vocabulary embedding at random token ids (Progressive Prompts' and TRACE's
    initialisation), times `scale` (TRACE's L2P divides by 100). Draws from torch's global generator, as every
    adapter initialisation does, so that a seeded run and its resume draw the same rows."""
    ids = torch.randint(embedding.num_embeddings, (n,))
    return embedding.weight.detach()[ids.to(embedding.weight.device)].float().cpu() * scale


def own_rate(params: list, module: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Parameter groups: `module`'s trainable parameters at their own rate and decay, any other at the trainer's."""
    own = {id(p) for p in module.parameters()}
    rest = [p for p in params if id(p) not in own]
    return ([{"params": [p for p in params if id(p) in own], "lr": lr, "weight_decay": weight_decay}]
            + ([{"params": rest}] if rest else []))


def freeze(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _lead_ones(mask: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([torch.ones_like(mask[:, :1]).expand(-1, n), mask], dim=1)


def _extend_4d(mask: torch.Tensor, n: int) -> torch.Tensor:
    """[B, 1, Q, K] (bool: True = may attend; float: 0 = may attend, the dtype's minimum = may not) to
    [B, 1, n+Q, n+K]: the prefix attends causally to itself, every row token to the whole prefix."""
    allowed = mask if mask.dtype == torch.bool else mask == 0
    B, H, Q, K = allowed.shape
    out = torch.zeros(B, H, n + Q, n + K, dtype=torch.bool, device=mask.device)
    out[:, :, :n, :n] = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    out[:, :, n:, :n] = True
    out[:, :, n:, n:] = allowed
    if mask.dtype == torch.bool:
        return out
    return torch.zeros(out.shape, dtype=mask.dtype, device=mask.device).masked_fill_(~out, torch.finfo(mask.dtype).min)


def extend_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    return _lead_ones(mask, n) if mask.dim() == 2 else _extend_4d(mask, n)


def _real(mask: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the tokens that are not padding (a 4-D mask: those its last row attends to)."""
    if mask is None:
        return torch.ones_like(ids, dtype=torch.bool)
    if mask.dim() == 2:
        return mask[:, -ids.shape[1]:].bool()  # a T5 encoder's mask may be extended already
    last = mask[:, 0, -1]
    return last if mask.dtype == torch.bool else last == 0


def _cache(kwargs: dict):
    for key in ("past_key_values", "cache"):  # transformers 5.24 renamed the first to the second
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None


class SoftPrefix:
    """The hooks that put `source`'s rows before every input of `model`; `remove()` takes them off."""

    def __init__(self, model, source: PrefixSource):
        self.source = source
        base = base_model(model)
        self.embed = base.get_input_embeddings()
        self._crop = 0  # positions of the prefix in the pending decoder-only call's outputs
        if is_seq2seq(base):
            hooks = [(base.get_encoder(), self._encoder_pre, None), (base, self._seq2seq_pre, self._seq2seq_post)]
        else:
            hooks = [(base, self._decoder_pre, self._decoder_post)]
        self.handles = []
        for module, pre, post in hooks:
            self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            if post is not None:
                self.handles.append(module.register_forward_hook(post, with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @staticmethod
    def _keywords(args: tuple, kwargs: dict) -> dict:
        # lm-eval calls model(input_ids) positionally; every other call names its arguments
        if len(args) > 1:
            raise ClbenchError("soft prompts: the model was called with more than one positional argument")
        return {"input_ids": args[0], **kwargs} if args else dict(kwargs)

    def _prefixed(self, kwargs: dict, n: int) -> torch.Tensor:
        ids = kwargs.pop("input_ids", None)
        if ids is None:
            raise ClbenchError("soft prompts: the model was called with inputs_embeds; call it with input_ids")
        embeds = self.embed(ids)
        prefix = self.source.prefix(ids, _real(kwargs.get("attention_mask"), ids))
        if prefix.shape[1] != n:
            raise ClbenchError(f"soft prompts: a prefix of {prefix.shape[1]} rows where {n} were announced")
        kwargs["inputs_embeds"] = torch.cat([prefix.to(embeds.dtype).expand(ids.shape[0], -1, -1), embeds], dim=1)
        return ids

    def _decoder_pre(self, module, args, kwargs):
        self._crop = 0
        n = self.source.length()
        if not n:
            return None
        kwargs = self._keywords(args, kwargs)
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        cache = _cache(kwargs)
        if cache is not None and cache.get_seq_length() > 0:  # the cache holds the prefix already
            if mask is not None:
                if mask.dim() != 2:
                    raise ClbenchError("soft prompts: a 4-D attention mask after a cache is not supported")
                kwargs["attention_mask"] = _lead_ones(mask, n)
            if pos is not None:
                kwargs["position_ids"] = pos + n
            return (), kwargs
        ids = self._prefixed(kwargs, n)
        if mask is not None:
            kwargs["attention_mask"] = extend_mask(mask, n)
        if pos is not None:
            head = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], -1)
            kwargs["position_ids"] = torch.cat([head, pos + n], dim=1)
        if kwargs.get("labels") is not None:
            kwargs["labels"] = torch.cat([torch.full_like(ids[:, :1], IGNORE).expand(-1, n), kwargs["labels"]], 1)
        keep = kwargs.get("logits_to_keep")
        if torch.is_tensor(keep):
            kwargs["logits_to_keep"] = keep + n  # the same positions of the row, now n further on
        self._crop = n
        return (), kwargs

    def _decoder_post(self, module, args, kwargs, out):
        n, self._crop = self._crop, 0
        if not n:
            return out
        keep = kwargs.get("logits_to_keep")
        if not torch.is_tensor(keep) and not keep and getattr(out, "logits", None) is not None:
            out.logits = out.logits[:, n:]  # every position was kept: the prefix's too
        if getattr(out, "hidden_states", None) is not None:
            out.hidden_states = tuple(h[:, n:] for h in out.hidden_states)
        return out

    def _encoder_pre(self, module, args, kwargs):
        n = self.source.length()
        if not n:
            return None
        kwargs = self._keywords(args, kwargs)
        mask = kwargs.get("attention_mask")
        ids = self._prefixed(kwargs, n)
        if mask is None:
            kwargs["attention_mask"] = torch.ones(ids.shape[0], n + ids.shape[1], dtype=torch.long, device=ids.device)
        elif mask.shape[1] == ids.shape[1]:  # not yet extended by the model's own hook (_seq2seq_pre)
            kwargs["attention_mask"] = _lead_ones(mask, n)
        return (), kwargs

    def _seq2seq_pre(self, module, args, kwargs):
        n = self.source.length()
        kwargs = self._keywords(args, kwargs)
        mask = kwargs.get("attention_mask")
        if not n or mask is None:
            return (), kwargs
        ids, enc = kwargs.get("input_ids"), kwargs.get("encoder_outputs")
        # the mask of the encoder's input: as long as the ids, or n shorter than encoder states that hold the prefix
        length = ids.shape[1] if ids is not None else (enc[0].shape[1] - n if enc is not None else None)
        if length is not None and mask.shape[1] == length:
            kwargs["attention_mask"] = _lead_ones(mask, n)
        return (), kwargs

    def _seq2seq_post(self, module, args, kwargs, out):
        n = self.source.length()
        if n and getattr(out, "encoder_hidden_states", None) is not None:
            out.encoder_hidden_states = tuple(h[:, n:] for h in out.encoder_hidden_states)
        return out
