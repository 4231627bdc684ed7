"""Checks of a run configuration that need no data and no model: run before anything loads, so that a bad
value fails in a second with its key named instead of minutes later (or never, running something else).

Hydra has already checked keys and types against benchmark/config.py; these are the value ranges and the
machine's abilities that a type cannot express.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from benchmark.config import RunConfig
from benchmark.errors import ClbenchError

DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("none", "wandb")
MIN_PROMPT_TOKENS = 8  # the prompt's fixed head and tail alone take about this many tokens


def check(cfg: RunConfig) -> None:
    """Raise one ClbenchError listing every problem found (each naming its key), or return None."""
    problems = [p for p in (*_ranges(cfg), *_choices(cfg), *_machine(cfg)) if p]
    if not problems:  # the folder test writes to disk: only for an otherwise valid configuration
        problems = [_writable("results_dir", Path(cfg.results_dir))]
    problems = [p for p in problems if p]
    if problems:
        raise ClbenchError("; ".join(problems))


def _at_least(key: str, value, minimum) -> str | None:
    return None if value >= minimum else f"{key} must be >= {minimum}, got {value}"


def _one_of(key: str, value, allowed: tuple[str, ...]) -> str | None:
    return None if value in allowed else f"{key} must be one of {'|'.join(allowed)}, got {value!r}"


def _ranges(cfg: RunConfig) -> list[str | None]:
    t = cfg.trainer
    lr_ok = math.isfinite(t.lr) and t.lr > 0
    return [
        _at_least("trainer.batch_size", t.batch_size, 1),
        _at_least("trainer.grad_accum", t.grad_accum, 1),
        _at_least("trainer.epochs", t.epochs, 1),
        None if lr_ok else f"trainer.lr must be a finite number > 0, got {t.lr}",
        _at_least("trainer.max_prompt_tokens", t.max_prompt_tokens, MIN_PROMPT_TOKENS),
        _at_least("trainer.log_every", t.log_every, 1),  # a step counter is taken modulo it
        None if 0 <= t.warmup_ratio <= 1 else f"trainer.warmup_ratio must be in [0, 1], got {t.warmup_ratio}",
        _at_least("trainer.weight_decay", t.weight_decay, 0),
        _at_least("trainer.max_grad_norm", t.max_grad_norm, 0),
        _at_least("trainer.max_steps_per_task", t.max_steps_per_task, 0),
        _at_least("trainer.num_threads", t.num_threads, 0),
        *(_at_least(f"trainer.epochs_per_task.{task}", n, 1) for task, n in (getattr(t, "epochs_per_task", None) or {}).items()),
        # data.* and eval.* validate themselves when built (DataConfig / EvalConfig.__post_init__)
    ]


def _choices(cfg: RunConfig) -> list[str | None]:
    return [
        _one_of("trainer.device", cfg.trainer.device, DEVICES),
        _one_of("trainer.mixed_precision", cfg.trainer.mixed_precision, MIXED_PRECISION),
        _one_of("model.dtype", cfg.model.dtype, DTYPES),
        _one_of("logger.name", cfg.logger.name, LOGGERS),
    ]


def _machine(cfg: RunConfig) -> list[str | None]:
    import torch

    cuda = torch.cuda.is_available()
    device, mp = cfg.trainer.device, cfg.trainer.mixed_precision
    problems = []
    if device == "cuda" and not cuda:
        problems.append("trainer.device=cuda but torch sees no CUDA device (use trainer.device=auto or cpu)")
    # accelerate quietly runs fp16 on the CPU in fp32, and the record would still say fp16
    if mp == "fp16" and (device == "cpu" or not cuda):
        problems.append("trainer.mixed_precision=fp16 needs a CUDA device (use bf16 or no on the CPU)")
    if mp == "bf16" and device != "cpu" and cuda and not torch.cuda.is_bf16_supported():
        problems.append(f"trainer.mixed_precision=bf16 is not supported by {torch.cuda.get_device_name()} (use fp16)")
    return problems


def _writable(key: str, folder: Path) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".preflight-"):
            pass
    except OSError as e:
        return f"{key}={folder} is not a writable folder ({e.strerror or e})"
    return None
