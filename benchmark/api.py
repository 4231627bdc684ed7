"""Everything a strategy may import from benchmark: re-exports only, so that the rooms behind it can move.

Strategies (strategies/*.py, and a user's own module) import from `benchmark.api` and nowhere else in
benchmark (a test checks it): the hooks receive a RunContext, batches are dicts of tensors built from Encoded
examples, and the model helpers read hidden states and logits the same way for decoder-only and T5 models.
"""
from benchmark.errors import ClbenchError  # noqa: F401
from benchmark.fileio import rng_from_json, rng_to_json  # noqa: F401
from benchmark.modeling.data import IGNORE, MODEL_INPUTS, Encoded, concat_batches  # noqa: F401
from benchmark.modeling.model import (base_model, final_hidden, hidden_states, is_seq2seq,  # noqa: F401
                                      lm_logits_targets, replaying_checkpointed_forward)
from benchmark.runner.context import RunContext  # noqa: F401
from benchmark.runner.loop import answer_logits, answer_loss, answer_targets  # noqa: F401

__all__ = ["ClbenchError", "rng_from_json", "rng_to_json", "IGNORE", "MODEL_INPUTS", "Encoded", "concat_batches",
           "base_model", "final_hidden", "hidden_states", "is_seq2seq", "lm_logits_targets",
           "replaying_checkpointed_forward", "RunContext", "answer_loss", "answer_logits", "answer_targets"]
