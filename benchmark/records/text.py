"""Answer normalisation: how a generation is compared with its gold label (pure Python, shared by the scorer and
by re-scoring from prediction files)."""
from __future__ import annotations

import string

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation as in the O-LoRA scorer: lower-case, no punctuation, single spaces (articles kept)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(text.split())
