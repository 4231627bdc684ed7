"""Replay memory shared by replay and I-LoRA: reservoir (Vitter's Algorithm R), per-task ring, or fixed fraction.

Stored items are tokenized examples (benchmark.modeling.data.Encoded). Replayed samples are never written back, and pads
of replayed rows carry the ignore label (both were bugs of LLMCL's ER/I-LoRA).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from benchmark.api import Encoded, rng_from_json, rng_to_json
from strategies.common.processes import gather_each, own_item


POLICIES = ("reservoir", "per_task", "fraction")


@dataclass
class BufferConfig:
    policy: str = "reservoir"  # reservoir | per_task | fraction
    size: int = 500  # M slots (reservoir, per_task)
    fraction: float = 0.02  # fraction policy: int(fraction * |train|) examples kept from each finished task

    # no __post_init__: a nested block is built before its owner, which calls check() with the full key
    # (`strategy replay.buffer.size`), where a check of its own could only say `buffer.size`
    def check(self, key: str, policies: tuple[str, ...] = POLICIES) -> None:
        from strategies.common.checks import check_choice, check_range

        check_choice(self.policy, f"{key}.policy", policies)
        check_range(self.size, f"{key}.size", 1, integer=True)
        check_range(self.fraction, f"{key}.fraction", 0, 1, low_open=True)


class ReplayBuffer:
    """What is stored from finished tasks is the same on every process (`rng`, seeded by the run seed); what is
    drawn for replay differs per process (`draw_rng`, seeded by seed and rank), so a global step replays distinct
    rows; rows offered while a task trains (I-LoRA, include_current) are each process's own shard.

    Under several processes the checkpoint, written by the main process alone, holds every process's buffer:
    `share(accelerator)` gathers them at the end of a stage (every process calls it: strategies/common/processes.py)
    and `load` gives each process its own back, so that a resumed run draws as the uninterrupted one did."""

    def __init__(self, cfg: BufferConfig, n_tasks: int, seed: int, rank: int = 0, processes: int = 1):
        cfg.check("buffer")  # owners check theirs when built; this covers a buffer made directly
        self.cfg, self.n_tasks, self.rank, self.processes = cfg, n_tasks, rank, processes
        self.rng = random.Random(seed)
        self.draw_rng = random.Random(f"{seed}/{rank}")
        self.slots: list[Encoded | None] = [] if cfg.policy == "fraction" else [None] * cfg.size
        self.seen = 0  # reservoir: examples offered so far
        self.seen_in_task: dict[int, int] = {}
        self.shared: list[tuple[dict, dict]] | None = None  # every process's state, from share()

    @classmethod
    def for_run(cls, cfg: BufferConfig, ctx) -> "ReplayBuffer":
        """The buffer of a strategy in a run: seeded by the run seed, drawing as this process."""
        acc = ctx.accelerator
        return cls(cfg, len(ctx.stream.tasks), ctx.seed, acc.process_index, acc.num_processes)

    def items(self) -> list[Encoded]:
        return [s for s in self.slots if s is not None]

    def __len__(self) -> int:
        return len(self.items())

    def add(self, examples: list[Encoded], task_index: int) -> None:
        """Offer examples one by one (reservoir / per_task); the fraction policy uses add_task instead."""
        for ex in examples:
            if self.cfg.policy == "reservoir":
                if self.seen < self.cfg.size:
                    self.slots[self.seen] = ex
                else:
                    j = self.rng.randint(0, self.seen)  # uniform over {0..n}
                    if j < self.cfg.size:
                        self.slots[j] = ex
                self.seen += 1
            elif self.cfg.policy == "per_task":
                per = max(self.cfg.size // self.n_tasks, 1)
                n = self.seen_in_task.get(task_index, 0)
                slot = (n % per) + task_index * per
                if slot < len(self.slots):
                    self.slots[slot] = ex
                self.seen_in_task[task_index] = n + 1

    def store_finished(self, examples: list[Encoded], task_index: int) -> None:
        """A finished task's training examples, as the policy keeps them: a fraction of the task (add_task) or
        offered one by one (add)."""
        if self.cfg.policy == "fraction":
            self.add_task(examples)
        else:
            self.add(examples, task_index)

    def add_task(self, examples: list[Encoded]) -> None:
        """fraction policy: keep int(fraction * |train|) random examples of a finished task (MIGU's 2%)."""
        k = int(self.cfg.fraction * len(examples))
        self.slots += self.rng.sample(examples, k)

    def sample(self, k: int) -> list[Encoded]:
        """k stored examples drawn uniformly without replacement (all of them when fewer are stored)."""
        pool = self.items()
        return self.draw_rng.sample(pool, min(k, len(pool)))

    # -- resume: the buffer as tensors plus JSON --
    def share(self, accelerator, gather=None) -> None:
        """Gather every process's buffer for the checkpoint, after the stage's last change to it (on every process;
        nothing to do on one). Only the main process, which writes the checkpoint, keeps them."""
        shared = gather_each(accelerator, self._own_state(""), gather)
        self.shared = shared if accelerator.is_main_process else None

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        """This process's buffer; after share() under several processes, every process's (`ranks`)."""
        if self.shared is None or len(self.shared) < 2:
            return self._own_state(prefix)
        tensors, metas = {}, []
        for r, (t, m) in enumerate(self.shared):
            tensors.update({f"{prefix}rank{r}/{k}": v for k, v in t.items()})
            metas.append(m)
        return tensors, {"ranks": metas}

    def _own_state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, index = {}, []
        for i, s in enumerate(self.slots):
            if s is None:
                index.append(None)
                continue
            tensors[f"{prefix}{i}.prompt"] = torch.tensor(s.prompt, dtype=torch.int64)
            tensors[f"{prefix}{i}.answer"] = torch.tensor(s.answer, dtype=torch.int64)
            index.append([s.label, s.task])
        return tensors, {"index": index, "seen": self.seen, "seen_in_task": {str(k): v for k, v in self.seen_in_task.items()},
                         "rng": rng_to_json(self.rng), "draw_rng": rng_to_json(self.draw_rng)}

    def load(self, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.shared = None
        own = own_item(meta.get("ranks"), self.rank, self.processes, "the replay buffer")
        if own is not None:
            prefix, meta = f"{prefix}rank{self.rank}/", own
        self.slots = []
        for i, entry in enumerate(meta["index"]):
            if entry is None:
                self.slots.append(None)
                continue
            p, a = tensors[f"{prefix}{i}.prompt"], tensors[f"{prefix}{i}.answer"]
            self.slots.append(Encoded(tuple(p.tolist()), tuple(a.tolist()), int(entry[0]), entry[1]))
        self.seen = meta["seen"]
        self.seen_in_task = {int(k): v for k, v in meta["seen_in_task"].items()}
        rng_from_json(meta["rng"], self.rng)
        rng_from_json(meta["draw_rng"], self.draw_rng)
