"""Distribution engines: which one accelerate runs, which a launcher asked for, and what each strategy may run
under; and the torch.distributed environment of a SLURM job started by submitit."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from accelerate import Accelerator

if TYPE_CHECKING:
    from strategies.base import Strategy


def engine_name(acc: Accelerator) -> str:
    return str(acc.distributed_type.value if hasattr(acc.distributed_type, "value") else acc.distributed_type).lower()


def requested_engine() -> str | None:
    """The sharding engine `accelerate launch` was configured with (it passes it to each process in the environment),
    whether or not the Accelerator could honour it."""
    from accelerate.utils import parse_flag_from_env

    return next((e for e in ("fsdp", "deepspeed") if parse_flag_from_env(f"ACCELERATE_USE_{e.upper()}")), None)


def check_engine(strategy: Strategy, acc: Accelerator) -> None:
    """Refuse, before any model is loaded, a distribution engine or precision under which a strategy would run
    silently wrong. DeepSpeed is refused for every strategy: it owns gradient accumulation and steps inside
    backward, which bypasses the per-stage accumulation windows and the strategies' optimizer hooks."""
    from strategies.base import StrategyConfigError

    engine = engine_name(acc)
    name = getattr(strategy, "name", type(strategy).__name__)
    asked = requested_engine()
    if "deepspeed" in (engine, asked):
        raise StrategyConfigError(f"strategy {name} under DeepSpeed is refused: DeepSpeed (ZeRO, GPU only) steps the "
                                  "optimizer inside backward and owns accumulation (use DDP or FSDP through accelerate)")
    if asked and asked != engine:
        raise StrategyConfigError(f"accelerate distributed_type {asked.upper()} cannot run on {acc.device.type}: "
                                  f"accelerate shards only on GPUs and other accelerators and would silently run "
                                  f"{engine} instead; on the CPU use DDP: torchrun --nproc_per_node N -m benchmark.cli")
    reason = strategy.refuse(engine, str(acc.mixed_precision))
    if reason:
        raise StrategyConfigError(f"strategy {name} cannot run under {engine.upper()} / mixed_precision "
                                  f"{acc.mixed_precision}: {reason}")


def launch_rank() -> int:
    # before the Accelerator exists: torchrun and accelerate launch set RANK in every process they start
    return int(os.environ.get("RANK", "0"))


def export_submitit_distributed() -> bool:
    """Under hydra/launcher=slurm_multinode every SLURM task that submitit starts is one process of the run, but
    nothing sets the torch.distributed variables that torchrun or `accelerate launch` would: export them from SLURM's
    (rank = SLURM_PROCID, master = the job's first node, one GPU per task). True if exported."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=True)
    return True
