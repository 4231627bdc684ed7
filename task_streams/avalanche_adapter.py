"""Expose a Stream as an avalanche-lib benchmark: one experience per task, items (prompt, label index, task).

For Avalanche users who bring their own training loop or plugins; clbench's runner does not depend on it.
"""
from __future__ import annotations

from task_streams.registry import Stream, Task


class _Split:
    """A plain indexable dataset of (prompt, label index, task index) triples."""

    def __init__(self, task: Task, split: str, index: int):
        self.examples = getattr(task, split)
        self.label_index = {l: i for i, l in enumerate(task.labels)}
        self.index = index

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        return ex.prompt, self.label_index[ex.label], self.index


def to_avalanche(stream: Stream):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import AvalancheDataset

    def ds(split: str):
        return [AvalancheDataset([_Split(t, split, i)], collate_fn=list) for i, t in enumerate(stream.tasks)]

    return benchmark_from_datasets(train=ds("train"), test=ds("test"))
