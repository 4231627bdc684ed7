"""Rewrite committed run records so that they name no local path (issue 26, finding 3), changing nothing they
measured: the config's LOCATIONS become null (records.store.without_locations), each split's absolute `source`
becomes its path under the data root (what runs write now), and `model.source` the words a run writes now.
The configuration hash, matrices, metrics and prediction files stay as they are; run it, then regenerate the
folder's leaderboard and check it is byte-identical.

    .venv/bin/python bench/strip_local_paths.py results/examples/*/runs
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmark.config import ModelConfig
from benchmark.fileio import atomic_write
from benchmark.modeling.model import _source
from benchmark.records.store import without_locations
from task_streams.registry import catalog


def release_relative(source: str, task: str) -> str:
    """'/any/where/TC/dbpedia/test.json' -> 'TC/dbpedia/test.json' (the task's folder in tasks.yaml)."""
    if not source.startswith("/"):
        return source
    folder = catalog().tasks[task]["path"] + "/"
    at = source.rfind("/" + folder)
    if at < 0:
        raise SystemExit(f"{source}: not under a folder {folder} of the release")
    return source[at + 1:]


def strip(rec: dict) -> dict:
    rec = json.loads(json.dumps(rec))
    rec["config"] = without_locations(rec["config"])
    for task, prov in rec["stream"]["splits"].items():
        for split in ("train", "test"):
            if isinstance(prov.get(split), dict) and "source" in prov[split]:
                prov[split]["source"] = release_relative(prov[split]["source"], task)
    model = rec["model"]
    if str(model.get("source", "")).startswith("/"):
        model["source"] = _source(ModelConfig(name=model["name"]), None)
    return rec


def main(folders: list[str]) -> None:
    changed = 0
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            rec = json.loads(path.read_text(encoding="utf-8"))
            new = strip(rec)
            if new != rec:
                atomic_write(path, json.dumps(new, indent=1, sort_keys=True, allow_nan=False))
                changed += 1
    print(f"{changed} records rewritten")


if __name__ == "__main__":
    main(sys.argv[1:])
