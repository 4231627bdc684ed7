"""The modeling room: torch primitives that know nothing of runs.

    model.py    model and tokenizer loading (SmolLM2, Hugging Face causal and T5 models, tiny test models),
                hidden states, activation checkpointing
    data.py     prompt encoding (chat templates), collation, length-bucketed batches
    scoring.py  evaluation: greedy generation and label log-likelihood in one pass, perplexity
"""
