"""Where a run's numbers go besides its record: nothing, or Weights & Biases (offline unless asked), chosen by
`logger.name` (torchtune's metric loggers follow the same small protocol)."""
from __future__ import annotations

from typing import Any, Protocol

from benchmark.config import RunConfig


class Logger(Protocol):
    def log(self, values: dict[str, Any]) -> None: ...
    def finish(self, task_names: list[str], matrix: list[list[float]], metrics: dict[str, Any]) -> None: ...


class NullLogger:
    def log(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, task_names: list[str], matrix: list[list[float]], metrics: dict[str, Any]) -> None:
        pass


class WandbLogger:
    def __init__(self, cfg: RunConfig, cfg_dict: dict, run_key: str):
        import wandb

        self._run = wandb.init(project=cfg.logger.project, mode=cfg.logger.mode, dir=cfg.logger.dir or cfg.results_dir,
                               id=run_key, resume="allow", config=cfg_dict, reinit="finish_previous")

    def log(self, values: dict[str, Any]) -> None:
        self._run.log(values)

    def finish(self, task_names: list[str], matrix: list[list[float]], metrics: dict[str, Any]) -> None:
        import wandb

        rows = [["zero-shot", *matrix[0]]] + [[f"stage {i}", *r] for i, r in enumerate(matrix[1:], 1)]
        self._run.log({"accuracy_matrix": wandb.Table(columns=["after", *task_names], data=rows)})
        self._run.summary.update({k: v for k, v in metrics.items() if v is not None})
        self._run.finish()


# one class per name of benchmark.config.LOGGERS (a test keeps the two lists equal)
LOGGERS: dict[str, type] = {"none": NullLogger, "wandb": WandbLogger}


def make_logger(cfg: RunConfig, cfg_dict: dict, run_key: str, main_process: bool) -> Logger:
    """The configured logger on the main process; the others log nothing."""
    if not main_process or cfg.logger.name == "none":
        return NullLogger()
    return LOGGERS[cfg.logger.name](cfg, cfg_dict, run_key)
