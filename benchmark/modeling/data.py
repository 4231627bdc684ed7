"""Tokenize once, batch by length, pad dynamically; the loss only sees answer tokens."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from task_streams import Example, Task
from task_streams.registry import PROMPT_ENCODING, PROMPT_ENCODINGS

IGNORE = -100
# the batch keys a model's forward takes (decoder-only: the first three; encoder-decoder: the prompt goes to the
# encoder, the answer is the decoder's input shifted right behind its start token, and its target)
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "decoder_input_ids", "decoder_attention_mask")


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: the prompt ids, the answer ids (label + eos) and the gold label index."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    label: int
    task: str


PLACEHOLDER = "\x00clbench-prompt\x00"
MIN_SENTENCE_TOKENS = 8  # a prompt keeps at least this much of its sentence, however long its head


def chat_turn(tokenizer) -> tuple[str, str]:
    """The text the tokenizer's chat template puts before and after a user message, generation prompt included
    (for SmolLM2-Instruct: its default system turn, `<|im_start|>user\n` ... `<|im_end|>\n<|im_start|>assistant\n`)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": PLACEHOLDER}], tokenize=False,
                                         add_generation_prompt=True)
    before, sep, after = text.partition(PLACEHOLDER)
    if not sep:
        from benchmark.errors import ClbenchError

        raise ClbenchError("the tokenizer's chat template does not place the user message verbatim; use data.chat_template=off")
    return before, after


def use_chat_template(mode: str, tokenizer, model_name: str) -> bool:
    """data.chat_template: auto = when the tokenizer has a template, on = required, off = never."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        from benchmark.errors import ClbenchError

        raise ClbenchError(f"data.chat_template=on but the tokenizer of model {model_name!r} has no chat template "
                           "(use auto or off)")
    return has if mode == "auto" else mode == "on"


class Encoder:
    """Caches tokenizations: a prompt piece is tokenized once whatever the number of runs or evaluations.

    With `chat` the prompt becomes the user turn of the tokenizer's chat template and the answer the assistant
    turn, ended by the tokenizer's eos (for chat models the end-of-turn token), for training and evaluation alike.
    """

    def __init__(self, tokenizer, max_prompt_tokens: int = 256, chat: bool = False, decoder_start: int | None = None,
                 encoding: int = PROMPT_ENCODING):
        self.tok = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.chat = chat
        if encoding not in PROMPT_ENCODINGS:
            from benchmark.errors import ClbenchError

            raise ClbenchError(f"data.prompt_encoding must be one of {PROMPT_ENCODINGS}, got {encoding!r}")
        self.encoding = encoding
        # an encoder-decoder model's decoder start token (T5: the pad id); None for a decoder-only model
        self.decoder_start = decoder_start
        self._cache: dict[str, tuple[int, ...]] = {}
        if tokenizer.eos_token_id is None:
            from benchmark.errors import ClbenchError

            raise ClbenchError("the tokenizer has no eos token; set one so that answers can end")
        before, after = chat_turn(tokenizer) if chat else ("", "")
        self.turn_text = (before, after)
        # an encoder input ends with eos, as T5's tokenizer (and the papers' code) make it
        self.end = (tokenizer.eos_token_id,) if decoder_start is not None else ()
        self.turn = (self.ids(before) if before else (), (self.ids(after) if after else ()) + self.end)

    @property
    def seq2seq(self) -> bool:
        return self.decoder_start is not None

    def ids(self, text: str) -> tuple[int, ...]:
        hit = self._cache.get(text)
        if hit is None:
            hit = self._cache[text] = tuple(self.tok(text, add_special_tokens=False)["input_ids"])
        return hit

    def answer(self, label: str) -> tuple[int, ...]:
        # plain text: a leading space keeps "Answer: World" a natural continuation; in a chat the assistant turn
        # starts on its own line, and a decoder starts afresh, so the label comes bare
        return self.ids(label if self.chat or self.seq2seq else " " + label) + (self.tok.eos_token_id,)

    def prompt(self, ex: Example) -> tuple[int, ...]:
        """The prompt's ids, at most max_prompt_tokens (but never fewer than MIN_SENTENCE_TOKENS of the sentence):
        only the sentence is truncated."""
        return self._whole(ex) if self.encoding == 2 else self._pieces(ex)

    def _pieces(self, ex: Example) -> tuple[int, ...]:
        """Encoding 1: chat turn, head, sentence and tail tokenised apart and joined (a boundary such as the options
        line's trailing " \n" then tokenises differently from the whole prompt's)."""
        head, tail = self.ids(ex.head), self.ids(ex.tail)
        before, after = self.turn
        room = max(self.max_prompt_tokens - len(before) - len(head) - len(tail) - len(after), MIN_SENTENCE_TOKENS)
        return before + head + self.ids(ex.sentence)[:room] + tail + after

    def _whole(self, ex: Example) -> tuple[int, ...]:
        """Encoding 2: the prompt tokenised as one string, as the papers' collators and lm-evaluation-harness do.
        A sentence too long is cut at a token boundary of its own tokenisation, and the string tokenised again."""
        before, after = self.turn_text
        text = lambda sentence: before + ex.head + sentence + ex.tail + after  # noqa: E731
        limit = self.max_prompt_tokens - len(self.end)
        ids = self.ids(text(ex.sentence))
        if len(ids) <= limit:
            return ids + self.end
        ends = self._token_ends(ex.sentence)
        keep = max(len(ends) - (len(ids) - limit), MIN_SENTENCE_TOKENS)
        while True:
            ids = self.ids(text(ex.sentence[:ends[keep - 1]] if keep else ""))
            if len(ids) <= limit or keep <= MIN_SENTENCE_TOKENS:
                return ids + self.end
            keep = max(keep - (len(ids) - limit), MIN_SENTENCE_TOKENS)

    def _token_ends(self, text: str) -> list[int]:
        """The character offset where each token of `text` ends (a fast tokenizer's offsets; else by decoding)."""
        try:
            spans = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return [end for _, end in spans]
        except (NotImplementedError, ValueError, KeyError):
            ids = self.ids(text)
            return [len(self.tok.decode(ids[:i + 1])) for i in range(len(ids))]

    def encode(self, task: Task, examples: list[Example]) -> list[Encoded]:
        index = {label: i for i, label in enumerate(task.labels)}
        return [Encoded(self.prompt(ex), self.answer(ex.label), index[ex.label], task.name) for ex in examples]

    def encode_texts(self, texts: list[str], max_tokens: int) -> list[tuple[int, ...]]:
        return [self.ids(t)[:max_tokens] for t in texts]

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        return collate_train(items, self.tok.pad_token_id, self.decoder_start)

    def collate_lm(self, seqs: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
        return collate_lm(seqs, self.tok.pad_token_id, self.decoder_start, self.tok.eos_token_id)


def token_bounded_batches(lengths: list[int], max_tokens: int, extra: int = 0) -> list[list[int]]:
    """Indices sorted by length (longest first, so that a batch too large for the device fails at once), cut into
    batches whose padded size, rows x (longest + extra), stays within max_tokens; a row longer than the budget
    is a batch of its own. `extra`: tokens each row adds after its prompt (generation, packed labels)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * (lengths[batches[-1][0]] + extra) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def length_bucketed_batches(lengths: list[int], batch_size: int, seed: int, shuffle: bool = True,
                            window: int = 50) -> list[list[int]]:
    """Batches of similar length: shuffle, sort inside windows of `window` batches, shuffle the batch order.

    Sorting only inside windows keeps the epoch random while cutting padding; the whole thing is a pure
    function of the seed, so runs are reproducible and all processes agree on the batches.
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def pad_batch(seqs: list[tuple[int, ...]], pad_id: int, side: str = "right",
              label_from: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Padded input_ids / attention_mask / labels (+ position_ids when left-padded).

    Training pads on the right: with left padding the pad rows attend to nothing, and CUDA's fused attention
    kernels then return NaN gradients that poison the weights (seen on an H100 in bf16). Evaluation pads on the
    left so that generation can continue every row; its position ids count real tokens only.
    labels are IGNORE before label_from[row] (the prompt) and on pads; with label_from None every real token is
    a label (plain language modelling).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, s in enumerate(seqs):
        off = width - len(s) if side == "left" else 0
        ids[row, off : off + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, off : off + len(s)] = 1
        first = off + (label_from[row] if label_from is not None else 0)
        labels[row, first : off + len(s)] = ids[row, first : off + len(s)]
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if side == "left":
        out["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return out


def seq2seq_batch(sources: list[tuple[int, ...]], targets: list[tuple[int, ...]], pad_id: int,
                  decoder_start: int) -> dict[str, torch.Tensor]:
    """Encoder-decoder rows, right-padded: the source to the encoder; the decoder reads [start] + target[:-1] and
    predicts target (labels are aligned with the decoder's positions, no shift)."""
    enc = pad_batch(sources, pad_id, "right")
    dec = pad_batch([(decoder_start,) + t[:-1] for t in targets], pad_id, "right")
    labels = pad_batch(targets, pad_id, "right")["labels"]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "decoder_input_ids": dec["input_ids"], "decoder_attention_mask": dec["attention_mask"], "labels": labels}


def collate_train(items: list[Encoded], pad_id: int, decoder_start: int | None = None) -> dict[str, torch.Tensor]:
    """Prompt + answer rows, right-padded; only the answer tokens (label and eos) carry labels. With a decoder
    start token (encoder-decoder models) the prompt is the encoder's input and the answer the decoder's."""
    if decoder_start is not None:
        return seq2seq_batch([it.prompt for it in items], [it.answer for it in items], pad_id, decoder_start)
    return pad_batch([it.prompt + it.answer for it in items], pad_id, "right", [len(it.prompt) for it in items])


def lm_split(seq: tuple[int, ...], eos_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An encoder-decoder model's language-modelling form of a passage: its first half (+ eos) to the encoder,
    its second half as the decoder's target (continuation)."""
    cut = len(seq) // 2
    return seq[:cut] + (eos_id,), seq[cut:]


def collate_lm(seqs: list[tuple[int, ...]], pad_id: int, decoder_start: int | None = None,
               eos_id: int | None = None) -> dict[str, torch.Tensor]:
    """Plain language-model batches (general text), right-padded: every real token is a label (decoder-only),
    or the continuation of each passage's first half is (encoder-decoder, see lm_split)."""
    if decoder_start is not None:
        pairs = [lm_split(s, eos_id) for s in seqs]
        return seq2seq_batch([p[0] for p in pairs], [p[1] for p in pairs], pad_id, decoder_start)
    return pad_batch(seqs, pad_id, "right")


def concat_batches(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two right-padded batches, padding each key's narrower part on the right; other keys are concatenated."""
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE, "decoder_input_ids": pad_id,
            "decoder_attention_mask": 0}
    out = {}
    for key in a:
        if key in fill:
            width = max(a[key].shape[1], b[key].shape[1])
            parts = [torch.nn.functional.pad(x[key], (0, width - x[key].shape[1]), value=fill[key]) for x in (a, b)]
        else:
            parts = [a[key], b[key]]
        out[key] = torch.cat(parts)
    return out


def padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    """Fraction of padded positions over all positions of the given batches."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / total if total else 0.0
