"""RunContext: what a strategy's hooks see of the run (`ctx`). Strategies import it from benchmark.api."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from benchmark.config import RunConfig
from benchmark.modeling.data import MODEL_INPUTS, Encoder
from benchmark.runner.loggers import Logger, NullLogger
from task_streams import Stream, Task


@dataclass
class RunContext:
    """What the hooks see. `model` is the unwrapped model; `train_model` the (possibly DDP-wrapped) one."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    encoder: Encoder
    accelerator: Accelerator
    stream: Stream
    seed: int
    stage: int = 0  # 1-based index of the stage being trained (0 before training)
    tasks: list[Task] = field(default_factory=list)  # tasks of the current stage
    optimizer: Any = None
    train_model: Any = None
    step: int = 0  # optimizer steps in this stage
    task_ce: torch.Tensor | None = None  # answer cross-entropy of the batch being trained, before any strategy term
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    logger: Logger = field(default_factory=NullLogger)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def log(self, key: str, value) -> None:
        # kept as tensors: converting here would force a device sync on every step
        self.logs[key] = value.detach() if torch.is_tensor(value) else torch.tensor(float(value))

    def forward(self, batch: dict[str, torch.Tensor], model=None, **kw):
        """Forward a batch (on any device) through the training model (or `model`)."""
        batch = {k: v.to(self.device) for k, v in batch.items() if k in MODEL_INPUTS}
        return (model or self.train_model or self.model)(**batch, **kw)
