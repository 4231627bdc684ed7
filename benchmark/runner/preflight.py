"""Checks of a run configuration against the machine, before anything loads: is the device there, can it do the
precision asked for, can results_dir be written. Values are checked where they are declared, by each config
dataclass's __post_init__ (benchmark/config.py), when the configuration is composed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from benchmark.config import RunConfig, raise_problems


def check(cfg: RunConfig) -> None:
    """Raise one ClbenchError listing every problem found (each naming its key), or return None."""
    problems = _machine(cfg)
    if not problems:  # the folder test writes to disk: only for an otherwise runnable configuration
        problems = [_writable("results_dir", Path(cfg.results_dir))]
    raise_problems(problems)


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
