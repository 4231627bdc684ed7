import json
import shutil

import pytest

from task_streams import DataConfig, TaskDataError, available_streams, load_stream, load_task, resolve_data_dir

ORDERS = {
    "standard_order1": ["dbpedia", "amazon", "yahoo", "agnews"],
    "standard_order2": ["dbpedia", "amazon", "agnews", "yahoo"],
    "standard_order3": ["yahoo", "amazon", "agnews", "dbpedia"],
    "long_order4": ["MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon", "SST-2", "dbpedia", "agnews", "MultiRC", "yahoo"],
    "long_order5": ["MultiRC", "BoolQA", "WiC", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews", "yelp", "amazon", "yahoo"],
    "long_order6": ["yelp", "amazon", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews", "yahoo", "MultiRC", "BoolQA", "WiC"],
}
LABEL_COUNTS = {"agnews": 4, "dbpedia": 14, "amazon": 5, "yelp": 5, "MNLI": 3, "CB": 3, "RTE": 2, "QQP": 2, "SST-2": 2,
                "IMDB": 2, "WiC": 2, "COPA": 2, "BoolQA": 2, "MultiRC": 2}


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_published_orders_load_in_order_with_yahoo_skipped_and_recorded(name, data_cfg):
    with pytest.warns(UserWarning, match="yahoo"):
        stream = load_stream(name, data_cfg)
    assert stream.task_names == [t for t in ORDERS[name] if t != "yahoo"]
    assert stream.skipped == ["yahoo"]
    assert stream.describe()["skipped"] == ["yahoo"]
    for task in stream.tasks:
        assert len(task.labels) == LABEL_COUNTS[task.name]
        # per-class subsampling: 2 per label (CB's train split has every label)
        assert len(task.train) == 2 * len(task.labels)
        assert {ex.label for ex in task.test} <= set(task.labels)
        assert all(ex.prompt.endswith("\nAnswer:") for ex in task.train + task.test)


def test_yelp_variant_states_its_replacement_and_runs_whole(data_cfg):
    stream = load_stream("standard_order1_yelp", data_cfg)
    assert stream.task_names == ["dbpedia", "amazon", "yelp", "agnews"]
    assert stream.replaces == {"yelp": "yahoo"} and stream.skipped == []


def test_all_registered_streams_resolve(data_cfg):
    assert set(ORDERS) | {"demo"} <= set(available_streams())


def test_yahoo_alone_fails_with_a_clear_error(data_cfg):
    with pytest.raises(TaskDataError, match=r"'yahoo' has no data in this release .*TC/yahoo"):
        load_task("yahoo", data_cfg)
    with pytest.raises(TaskDataError, match="yahoo"):
        load_stream("x", data_cfg, tasks=["agnews", "yahoo"])


def test_prompt_matches_olora_format(data_cfg):
    ag = load_task("agnews", data_cfg)
    ex = ag.test[0]
    assert ex.prompt.startswith("Task:TC\nDataset:agnews\nWhat is the topic of the following paragraph? Choose one from the option.\n"
                                "Option: World, Sports, Business, Science or Technology \n")
    assert ex.prompt == ex.head + ex.sentence + "\nAnswer:"
    copa = load_task("COPA", data_cfg)
    assert copa.test[0].head == "Task:COPA\nDataset:COPA\n"  # COPA has no instruction and no option line
    bare = load_task("agnews", DataConfig(train_per_class=1, test_per_class=1, task_prefix=False))
    assert bare.test[0].head.startswith("What is the topic")


def test_derived_splits_are_disjoint_deterministic_and_recorded():
    full = DataConfig()
    yelp = load_task("yelp", full)
    assert len(yelp.test) == 1000 and len(yelp.train) == 4000
    assert "held out of train with seed 1234" in yelp.provenance["test"]["derived"]
    assert not {e.sentence for e in yelp.test} & {e.sentence for e in yelp.train}
    db = load_task("dbpedia", full)
    assert len(db.train) == 3800 and len(db.test) == 3800
    assert load_task("yelp", full).test == yelp.test


def test_subsampling_is_deterministic_and_seeded():
    a = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=5))
    b = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=5))
    c = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=6))
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    assert sorted(e.label for e in a.train) == sorted(a.labels * 3)


@pytest.fixture
def fake_release(tmp_path):
    root = tmp_path / "release"
    src = resolve_data_dir()
    root.mkdir()
    shutil.copy(src / "instruction_config.json", root)
    shutil.copytree(src / "NLI" / "CB", root / "NLI" / "CB")
    return root


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")


def test_malformed_json_names_the_file(fake_release):
    (fake_release / "NLI/CB/train.json").write_text("[{", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"CB/train.json: malformed JSON at line 1"):
        load_task("CB", DataConfig(data_dir=str(fake_release)))


def test_unknown_label_names_file_and_record(fake_release):
    recs = json.loads((fake_release / "NLI/CB/test.json").read_text())
    recs[3]["label"] = "maybe"
    _write(fake_release / "NLI/CB/test.json", recs)
    with pytest.raises(TaskDataError, match=r"CB/test.json: record 3 has unknown label 'maybe'"):
        load_task("CB", DataConfig(data_dir=str(fake_release)))


def test_malformed_record_names_file_and_record(fake_release):
    recs = json.loads((fake_release / "NLI/CB/train.json").read_text())
    recs[7] = {"text": "no sentence field", "label": "neutral"}
    _write(fake_release / "NLI/CB/train.json", recs)
    with pytest.raises(TaskDataError, match=r"CB/train.json: record 7 is malformed"):
        load_task("CB", DataConfig(data_dir=str(fake_release)))


def test_empty_split_and_missing_file(fake_release):
    _write(fake_release / "NLI/CB/test.json", [])
    with pytest.raises(TaskDataError, match=r"CB/test.json: the split is empty"):
        load_task("CB", DataConfig(data_dir=str(fake_release)))
    (fake_release / "NLI/CB/test.json").unlink()
    with pytest.raises(TaskDataError, match=r"split file .*CB/test.json is missing"):
        load_task("CB", DataConfig(data_dir=str(fake_release)))


def test_missing_data_folder_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CLBENCH_DATA", raising=False)
    monkeypatch.setattr("task_streams.registry.REPO_ROOT", tmp_path / "nowhere" / "repo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskDataError, match=r"benchmark data folder not found at .*CLBENCH_DATA=/path"):
        load_task("agnews", DataConfig(data_dir=str(tmp_path / "absent")))


def test_unknown_task_and_stream():
    with pytest.raises(TaskDataError, match="unknown task 'agnewz'"):
        load_task("agnewz")
    with pytest.raises(TaskDataError, match="unknown stream 'order9'"):
        load_stream("order9")


def test_avalanche_stream_adapter(data_cfg):
    from task_streams.avalanche_adapter import to_avalanche

    stream = load_stream("demo", data_cfg)
    bench = to_avalanche(stream)
    exps = list(bench.train_stream)
    assert len(exps) == 3
    assert [e.current_experience for e in exps] == [0, 1, 2]
    first = exps[0].dataset[0]
    assert first[0] == stream.tasks[0].train[0].prompt
    assert stream.tasks[0].labels[first[1]] == stream.tasks[0].train[0].label
    assert len(list(bench.test_stream)[2].dataset) == len(stream.tasks[2].test)


def test_mnli_unlabelled_records_are_dropped_by_a_declared_rule_and_counted():
    mnli = load_task("MNLI", DataConfig(test_per_class=1, train_per_class=1))
    assert mnli.provenance["test"]["dropped"] == "131 records with label(s) ['-']"
    assert mnli.provenance["test"]["records"] == 7600 - 131
