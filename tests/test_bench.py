"""The performance bench must keep working (its numbers are not asserted: speed goals live in bench/)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains with transformers' Trainer among others
def test_perf_bench_runs_every_training_method_on_the_same_work(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import perf
    finally:
        sys.path.pop(0)
    out = tmp_path / "perf.json"
    perf.main(["--models", "tiny", "--steps", "2", "--warmup", "1", "--only", "train", "--out", str(out)])
    doc = json.loads(out.read_text())
    train = doc["results"]["tiny"]["train"]
    assert set(train) == set(perf.TRAIN_METHODS)
    assert all("error" not in v and v["examples_per_s"] > 0 for v in train.values()), train
    # the same examples go through every method, so the answer tokens trained on are identical
    assert len({v["answer_tokens"] for v in train.values()}) == 1
    # suite and bare loops share the batches: same padding too; Trainer buckets its own way
    assert train["suite"]["padded_tokens"] == train["bare"]["padded_tokens"] == train["bare_hf_loss"]["padded_tokens"]
    assert doc["hardware"]["cpu_count"] >= 1 and doc["summary"]["tiny"]["suite_vs_bare"] > 0
