"""Records that pool across machines (issue 26, finding 3): a run is identified by its configuration and the
content of its data and model, never by where they sit, and a record names no local path."""
import json
import shutil
from pathlib import Path

from benchmark.records import store
from task_streams import DataConfig, load_stream, release

from .conftest import ROOT, compose_cfg


def _strings(node, out=None):
    out = [] if out is None else out
    if isinstance(node, dict):
        for v in node.values():
            _strings(v, out)
    elif isinstance(node, list):
        for v in node:
            _strings(v, out)
    elif isinstance(node, str):
        out.append(node)
    return out


def _root() -> Path:
    from task_streams import resolve_data_dir

    return resolve_data_dir()


def test_the_same_configuration_under_other_paths_is_one_configuration(tmp_path):
    from benchmark.runner.recipe import resolved_config

    a = resolved_config(compose_cfg(["model=tiny"]))
    b = resolved_config(compose_cfg(["model=tiny", f"data.data_dir={tmp_path}/data", f"model.cache_dir={tmp_path}/c",
                                     f"results_dir={tmp_path}/r", f"logger.dir={tmp_path}/l"]))
    assert store.config_hash(a) == store.config_hash(b)
    # the hashes of the records made before this rule stay what they were (their data_dir was null)
    for rec in _committed():
        if store.config_hash(rec["config"], store.recorded_task_versions(rec), {}) != rec["config_hash"]:
            continue  # made before other rules (upgrade); their groups are fixed by the stored hash
        moved = json.loads(json.dumps(rec["config"]))
        moved["data"]["data_dir"] = "/elsewhere/cl_benchmark"
        assert store.config_hash(moved, store.recorded_task_versions(rec), {}) == rec["config_hash"]


def _committed():
    for p in sorted((ROOT / "results" / "examples").glob("*/runs/*.json")):
        yield json.loads(p.read_text())


def test_a_record_names_no_local_path(two_task_run):
    path, rec = two_task_run
    texts = _strings(rec)
    assert not [t for t in texts if t.startswith("/") or str(path.parent) in t or str(Path.home()) in t]
    split = rec["stream"]["splits"]["dbpedia"]["test"]
    assert split["source"] == "TC/dbpedia/test.json"
    assert split["sha256"] == release.manifest()["files"]["TC/dbpedia/test.json"]["sha256"]
    assert rec["stream"]["release"] == {"manifest_sha256": release.manifest_sha256(), "unlisted": {}}
    assert rec["identity"] == {}  # the release as published, a registered model, strategies at version 1


def test_the_committed_example_records_name_no_local_path():
    for rec in _committed():
        bad = [t for t in _strings(rec) if t.startswith(("/", "~")) or "/home/" in t or "/root/" in t]
        assert not bad, (rec["run_id"], bad[:3])


def test_data_is_identified_by_content_not_by_folder(tmp_path):
    copy = tmp_path / "elsewhere" / "cl"
    shutil.copytree(_root(), copy)
    cfg = DataConfig(data_dir=str(copy), train_per_class=1, test_per_class=1)
    same = load_stream("demo", cfg)
    assert same.unlisted == {} and same.describe()["splits"] == load_stream(
        "demo", DataConfig(train_per_class=1, test_per_class=1)).describe()["splits"]
    test_file = copy / "TC" / "agnews" / "test.json"
    rows = json.loads(test_file.read_text())
    rows[0]["sentence"] = rows[0]["sentence"] + " (edited)"
    test_file.write_text(json.dumps(rows))
    edited = load_stream("demo", cfg)
    assert list(edited.unlisted) == ["TC/agnews/test.json"]
    config = {"data": {"data_dir": str(copy)}, "stream": {"name": "demo"}}
    assert store.config_hash(config, content={"data_files": edited.unlisted}) != store.config_hash(config, content={})


def test_an_objective_version_enters_the_identity_only_when_it_is_not_1():
    from strategies.base import versions_of

    assert versions_of({"name": "seq_lora"}) == {}
    assert versions_of({"name": "gere"}) == {"gere": 2}
    assert versions_of({"name": "compose", "parts": [{"name": "replay"}, {"name": "gere"}]}) == {"gere": 2}
    config = {"strategy": {"name": "gere"}}
    assert store.config_hash(config) == store.config_hash(config, content={"strategy_versions": {"gere": 2}})
    assert store.config_hash(config) != store.config_hash(config, content={})  # a version-1 record never pools


def test_a_record_of_a_local_model_pools_with_its_copy_elsewhere(tmp_path):
    base = {"model": {"name": "/a/b/my-model", "cache_dir": None}, "seed": 1}
    moved = {"model": {"name": "/c/other", "cache_dir": "/x"}, "seed": 2}
    weights = {"model_weights": "ab" * 32}
    assert store.config_hash(base, content=weights) == store.config_hash(moved, content=weights)
    assert store.config_hash(base, content=weights) != store.config_hash(base, content={"model_weights": "cd" * 32})


def test_a_new_objective_version_is_still_paired_with_the_baseline(tmp_path):
    from benchmark import leaderboard

    board = leaderboard.build_board(ROOT / "results" / "examples" / "long_repro_cpu" / "runs", tmp_path)
    gere = next(r for r in board["rows"] if r["strategy"] == "gere")
    assert gere["flat_config"]["strategy_versions.gere"] == "2"
    assert gere["vs_baseline"]["against"] is not None and gere["vs_baseline"]["metrics"]["aa"]["n"] == 3
