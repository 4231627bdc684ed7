"""A validation split for tuning (issue 24, part 1): data.val_per_class examples per class held out of each task's
training file, disjoint from the training subsample and the test split, hashed in the record; eval.split=val
scores it and never the test split, and such records are a configuration apart from test-scored ones."""
import gzip
import json

import pytest

from benchmark import leaderboard
from benchmark.errors import ClbenchError
from task_streams import DataConfig, load_task

from .conftest import compose_cfg


def test_the_validation_split_is_disjoint_from_training_and_test_and_leaves_test_alone():
    plain = load_task("CB", DataConfig(train_per_class=4, test_per_class=2))
    task = load_task("CB", DataConfig(train_per_class=4, test_per_class=2, val_per_class=3))
    ids = {split: {e.id for e in getattr(task, split)} for split in ("train", "val", "test")}
    assert len(ids["val"]) == 3 * len(task.labels)
    assert not ids["val"] & ids["train"] and not ids["val"] & ids["test"]
    assert all(i.startswith("NLI/CB/train.json#") for i in ids["val"])
    assert task.test == plain.test  # the test split does not depend on the validation split
    assert task.provenance["val"]["used"] == 3 * len(task.labels) and task.provenance["val"]["ids_sha256"]
    assert "val" not in plain.provenance and plain.val == []


def test_eval_split_val_scores_only_validation_examples(tiny_run, tmp_path):
    rec = tiny_run("data.val_per_class=1", "eval.split=val", "stream.tasks=[CB,WiC]", results=tmp_path)
    folder = tmp_path / "runs" / rec["predictions"]["folder"]
    scored = set()
    for f in rec["predictions"]["files"]:
        scored |= {json.loads(line)["id"] for line in gzip.decompress((folder / f["file"]).read_bytes()).splitlines()}
    val = {e.id for t in ("CB", "WiC") for e in load_task(t, DataConfig(train_per_class=4, test_per_class=2,
                                                                        val_per_class=1)).val}
    assert scored == val  # no test example was scored
    test = tiny_run("stream.tasks=[CB,WiC]", results=tmp_path)
    assert test["config_hash"] != rec["config_hash"]
    board = leaderboard.build_board(tmp_path / "runs", tmp_path)
    row = next(r for r in board["rows"] if r["config"] == rec["config_hash"])
    assert "scored on validation" in row["settings"]


def test_eval_split_val_without_a_validation_split_fails_at_compose():
    with pytest.raises(ClbenchError, match="eval.split=val needs data.val_per_class"):
        compose_cfg(["model=tiny", "eval.split=val"])
