"""Value checks for strategy config dataclasses, called from their __post_init__ (PEFT's config style), so that a
wrong value fails when `strategies.base.build` makes the config: before any data or model loads, with the key named.
A check names the key relative to its config (`buffer.size`); the builder prefixes where the config sits
(`strategy replay.buffer.size must be an integer >= 1, got 0`).

strategies.base.build already rejects unknown keys and non-numbers for numeric fields; it lets None through, and
nested settings (LoraSettings, BufferConfig) arrive as whatever the YAML held, so these checks take neither for
granted. Nested settings are checked by their owner, which knows the full key to name.
"""
from __future__ import annotations

import math
from typing import Any

from strategies.base import LoraSettings, OptionError

ADAPTERS = ("lora", "full", "none")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_range(value: Any, key: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """`key` must be a finite number (an integer when `integer`) within [low, high]; open ends when asked."""
    ok = _number(value) and (not integer or isinstance(value, int))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        bounds = f" {'<' if high_open else '<='} {high:g}"
    else:
        bounds = ""
    raise OptionError(f"{key} must be {kind}{bounds}, got {value!r}")


def check_choice(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def check_adapter(kind: Any, key: str, allowed: tuple[str, ...] = ADAPTERS) -> None:
    check_choice(kind, key, allowed)


def check_nested(value: Any, key: str, cls: type) -> None:
    """A nested settings block given as something other than a mapping (`lora: 8`) reaches the owner unbuilt."""
    if not isinstance(value, cls):
        raise OptionError(f"{key} must be a mapping of {cls.__name__} keys, got {value!r}")


def check_lora(s: Any, key: str) -> None:
    """LoRA settings PEFT would reject or misread: a string target_modules is a regular expression to PEFT, and a
    dropout of 1 zeroes every update."""
    check_nested(s, key, LoraSettings)
    check_range(s.r, f"{key}.r", 1, integer=True)
    check_range(s.alpha, f"{key}.alpha", 0, low_open=True)
    check_range(s.dropout, f"{key}.dropout", 0, 1, high_open=True)
    mods = s.target_modules
    if not (isinstance(mods, (list, tuple)) and mods and all(isinstance(m, str) and m for m in mods)):
        raise OptionError(f"{key}.target_modules must be a non-empty list of module names, got {mods!r}")


def check_per_task(values: Any, key: str) -> None:
    """{task: number >= 0} whose tasks exist in task_streams/tasks.yaml: a misspelt task would never apply."""
    from task_streams import available_tasks

    if not isinstance(values, dict):
        raise OptionError(f"{key} must be a mapping of task names to numbers, got {values!r}")
    known = available_tasks()
    for task, v in values.items():
        if task not in known:
            raise OptionError(f"{key}: unknown task {task!r}; known tasks: {', '.join(known)}")
        check_range(v, f"{key}.{task}", 0)
