"""The run record matches benchmark/records/schema.py exactly, and task versions identify a run's data without
changing the hash of any record made while every task was at version 1 (issue #13, item 3)."""
import copy
import json
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from benchmark.records import schema as record_schema
from benchmark.records import store as records
from benchmark.config import compose
from task_streams import registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "results" / "examples"


@pytest.fixture(scope="module")
def record(two_task_run):
    return two_task_run[1]


def test_a_real_record_has_exactly_the_schema_keys_and_types(record):
    # `general` only in runs with lm-eval tasks (tests/test_general.py checks such a record against the schema)
    assert set(record) == set(typing.get_type_hints(record_schema.RunRecord)) - {"general"}
    assert record_schema.problems(record) == []
    assert {t: s["version"] for t, s in record["stream"]["splits"].items()} == {"dbpedia": 1, "agnews": 1}
    assert records.recorded_task_versions(record) == {"dbpedia": 1, "agnews": 1}


def test_the_checker_names_what_differs(record):
    bad = copy.deepcopy(record)
    bad["cost"]["wall_s"] = "slow"
    bad["setup"]["world_size"] = True  # a bool is not a count
    del bad["matrix"]["unit"]
    bad["stream"]["splits"]["dbpedia"]["train"]["extra"] = 1
    bad["scores"]["beam"] = bad["scores"]["loglik"]
    bad["surprise"] = {}
    assert record_schema.problems(bad) == [
        "record.surprise: not in the schema",
        "record.stream.splits.dbpedia.train.extra: not in the schema",
        "record.matrix.unit: missing",
        "record.cost.wall_s: expected float, got str 'slow'",
        "record.setup.world_size: expected int, got bool True",
        "record.scores key 'beam': expected one of ['generate', 'loglik'], got 'beam'",
    ]


def test_optional_keys_may_be_absent_and_null_only_where_declared(record):
    rec = copy.deepcopy(record)
    rec["provenance"]["hardware"].pop("memory_gb", None)
    rec["metrics"]["bwt"] = None
    assert record_schema.problems(rec) == []
    rec["metrics"]["aa"] = None
    assert record_schema.problems(rec) == ["record.metrics.aa: expected float, got null"]


# ---------------------------------------------------------------- task versions


def _bumped(tmp_path: Path, task: str, version: int) -> Path:
    """A copy of task_streams' YAML files with one task at another version."""
    for name in ("tasks.yaml", "streams.yaml"):
        shutil.copy(registry.HERE / name, tmp_path / name)
    spec = yaml.safe_load((tmp_path / "tasks.yaml").read_text())
    spec["tasks"][task]["version"] = version
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def test_every_task_declares_version_1():
    spec = yaml.safe_load((registry.HERE / "tasks.yaml").read_text())["tasks"]
    assert {t: s.get("version") for t, s in spec.items()} == {t: 1 for t in spec}


def test_a_version_bump_changes_the_hash_of_the_streams_holding_the_task(tmp_path, monkeypatch):
    demo = {"stream": {"name": "demo", "tasks": None, "missing": None}, "seed": 1}  # dbpedia, amazon, agnews
    custom = {"stream": {"name": "demo", "tasks": ["yelp", "amazon"], "missing": None}, "seed": 1}
    other = {"stream": {"name": "long_order6", "tasks": None, "missing": None}, "seed": 1}  # holds amazon too
    before = {k: records.config_hash(c) for k, c in (("demo", demo), ("custom", custom), ("other", other))}
    monkeypatch.setattr(registry, "HERE", _bumped(tmp_path, "amazon", 2))
    assert records.stream_task_versions(demo) == {"dbpedia": 1, "amazon": 2, "agnews": 1}
    assert records.identity_config(demo)["task_versions"] == {"amazon": 2}
    assert records.config_hash(demo) != before["demo"]
    assert records.config_hash(custom) != before["custom"]  # stream.tasks, not the stream's name, decides
    assert records.config_hash(other) != before["other"]
    no_amazon = {"stream": {"name": "demo", "tasks": ["dbpedia", "agnews"], "missing": None}, "seed": 1}
    monkeypatch.setattr(registry, "HERE", ROOT / "task_streams")
    unchanged = records.config_hash(no_amazon)
    monkeypatch.setattr(registry, "HERE", _bumped(tmp_path, "amazon", 2))
    assert records.config_hash(no_amazon) == unchanged
    # a stored record is identified by the versions it ran with, not by today's tasks.yaml
    assert records.config_hash(demo, {"dbpedia": 1, "amazon": 1, "agnews": 1}) == before["demo"]


def test_version_1_leaves_the_hash_of_existing_records_unchanged():
    """Every committed record whose stored hash the version-free identity still reproduces (records.LATER_DEFAULTS
    decides which) keeps it now that versions are read."""
    kept = 0
    for path in sorted(EXAMPLES.glob("*/runs/*.json")):
        rec = json.loads(path.read_text())
        if records.config_hash(rec["config"], task_versions={}) != rec["config_hash"]:
            continue
        assert records.stream_task_versions(rec["config"]), path  # the versions were read, all 1
        assert records.config_hash(rec["config"]) == rec["config_hash"], path
        assert records.config_hash(rec["config"], records.recorded_task_versions(rec)) == rec["config_hash"], path
        kept += 1
    assert kept >= 10


def test_a_composed_config_has_the_hash_it_had_before_versions(tmp_path, monkeypatch):
    from benchmark.config import config_dict

    cfg = config_dict(compose(["stream=standard_order1"]))
    plain = records.config_hash(cfg, task_versions={})  # as computed before task versions existed
    assert records.config_hash(cfg) == plain
    monkeypatch.setattr(registry, "HERE", _bumped(tmp_path, "yahoo", 3))  # skipped for lack of data, still declared
    assert records.config_hash(cfg) != plain

