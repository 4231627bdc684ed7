"""clbench-tune (issue 24, part 2): a seeded Optuna study over a strategy's search space, every trial a run scored
on validation data, never on test; the best values become a config that later runs load."""
import gzip
import json
import uuid

import pytest

from benchmark.runner import tune
from task_streams import DataConfig, load_task

from .conftest import CONF, TINY_RUN, compose_cfg

BASE = TINY_RUN + ["stream.tasks=[CB,WiC]", "data.val_per_class=1", "trainer.max_steps_per_task=2"]


@pytest.fixture
def spaces(tmp_path):
    path = tmp_path / "spaces.yaml"
    path.write_text("all:\n  trainer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "strategies:\n  seq_lora: {strategy.lora.alpha: {choices: [16, 32]}}\n")
    return path


def _study(tmp_path, spaces, name, **kw):
    return tune.tune(BASE, 3, out=tmp_path / "tuning", name=name, spaces_file=spaces, tuned_dir=tmp_path / "tuned", **kw)


def _scored_ids(folder):
    ids = set()
    for path in folder.glob("*.predictions/*.jsonl.gz"):
        ids |= {json.loads(line)["id"] for line in gzip.decompress(path.read_bytes()).splitlines()}
    return ids


def test_a_seeded_study_is_reproducible_and_never_scores_the_test_split(tmp_path, spaces):
    a = _study(tmp_path, spaces, "a")
    b = _study(tmp_path, spaces, "b")
    assert len(a["trials"]) == 3 and all(t["value"] is not None for t in a["trials"])
    assert [(t["params"], t["value"]) for t in a["trials"]] == [(t["params"], t["value"]) for t in b["trials"]]
    assert a["tuning"]["objective"] == "aa on val" and a["tuning"]["trials"] == 3
    assert (tmp_path / "tuning" / "study-a.json").is_file() and (tmp_path / "tuned" / "a.yaml").is_file()
    data = DataConfig(train_per_class=4, test_per_class=2, val_per_class=1)
    val = {e.id for t in ("CB", "WiC") for e in load_task(t, data).val}
    test = {e.id for t in ("CB", "WiC") for e in load_task(t, data).test}
    scored = _scored_ids(tmp_path / "tuning" / "a" / "runs")
    assert scored == val and not scored & test


def test_an_unknown_setting_in_the_space_stops_the_study_before_any_trial(tmp_path):
    bad = tmp_path / "spaces.yaml"
    bad.write_text("all:\n  trainer.learning_rate: {low: 1.0e-4, high: 1.0e-2}\n")
    calls = []
    with pytest.raises(tune.TuneError, match="trainer.learning_rate"):
        tune.tune(BASE, 3, out=tmp_path / "tuning", spaces_file=bad, tuned_dir=tmp_path, run=calls.append)
    assert calls == [] and not (tmp_path / "tuning").exists()


def test_a_tuned_config_loads_and_its_runs_say_so_on_the_leaderboard(tmp_path, spaces, tiny_run):
    from benchmark import leaderboard

    name = f"test-{uuid.uuid4().hex[:8]}"
    try:
        doc = tune.tune(BASE, 2, out=tmp_path / "tuning", name=name, spaces_file=spaces, tuned_dir=CONF / "tuned")
        cfg = compose_cfg(BASE + [f"+tuned={name}"])
        assert cfg.trainer.lr == doc["best"]["params"]["trainer.lr"] and cfg.tuning["trials"] == 2
        rec = tiny_run("stream.tasks=[CB,WiC]", "trainer.max_steps_per_task=2", f"+tuned={name}", results=tmp_path / "final")
    finally:
        (CONF / "tuned" / f"{name}.yaml").unlink(missing_ok=True)
    assert rec["config"]["tuning"]["study"] == f"study-{name}.json" and rec["config"]["eval"]["split"] == "test"
    board = leaderboard.build_board(tmp_path / "final" / "runs", tmp_path / "final")
    assert "tuned: 2 trials on val (aa on val)" in board["rows"][0]["settings"]


def test_strategies_tuned_at_the_same_budget_are_paired_whatever_values_their_studies_chose(tmp_path):
    from benchmark import leaderboard
    from benchmark.records import store
    from tests.conftest import older, write_raw
    from tests.test_records_leaderboard import _rec

    budget = {"trials": 4, "objective": "aa on val", "val_per_class": 8, "seeds": [1], "sampler": "TPE seed 0"}

    def record(strategy, seed, lr, aa, tuning):
        config = {"seed": seed, "trainer": {"lr": lr}, "strategy": {"name": strategy}, "tuning": tuning}
        chash = store.config_hash(config, content={})
        rec = _rec(strategy, seed, aa_last=(aa - 5.0, aa + 5.0), chash=chash, run_id=f"{strategy}-{chash}-s{seed}")
        return older({**rec, "config": config, "strategy": {"name": strategy, "config": config["strategy"]}})

    runs = tmp_path / "runs"
    for seed, gain in zip((1, 2, 3), (10.0, 11.0, 9.5)):
        write_raw(runs, record("seq_lora", seed, 3e-4, 50.0 + seed, {**budget, "space": {"trainer.lr": {}}}))
        write_raw(runs, record("olora", seed, 1e-3, 50.0 + seed + gain,
                               {**budget, "space": {"trainer.lr": {}, "strategy.lambda1": {}}}))
        write_raw(runs, record("replay", seed, 1e-3, 52.0 + seed, {}))  # untuned: another comparison
    board = leaderboard.build_board(runs, tmp_path)
    rows = {r["strategy"]: r for r in board["rows"]}
    assert rows["olora"]["vs_baseline"]["metrics"]["aa"]["n"] == 3  # lr 1e-3 against lr 3e-4, both tuned
    assert rows["olora"]["vs_baseline"]["metrics"]["aa"]["diff"] == pytest.approx(10.166666, rel=1e-5)
    assert rows["replay"]["vs_baseline"]["metrics"]["aa"]["verdict"] == "no baseline"
    assert "tuned: 4 trials on val" in rows["olora"]["settings"]


def test_a_null_key_drops_the_shared_entry_and_every_committed_space_tunes_a_learning_rate(tmp_path):
    path = tmp_path / "spaces.yaml"
    path.write_text("all:\n  trainer.lr: {low: 1.0e-4, high: 1.0e-2}\n"
                    "strategies:\n  progprompt: {trainer.lr: null, strategy.lr: {low: 0.01, high: 1.0}}\n")
    assert set(tune.space_for("progprompt", path)) == {"strategy.lr"}
    assert set(tune.space_for("seq_lora", path)) == {"trainer.lr"}
    # the committed spaces: every strategy YAML tunes the rate its trainable parameters actually train at
    for yaml_file in sorted((CONF / "strategy").glob("*.yaml")):
        keys = set(tune.space_for(yaml_file.stem))
        assert keys & {"trainer.lr", "strategy.lr"}, yaml_file.stem
        if yaml_file.stem in ("progprompt", "l2p"):
            assert "trainer.lr" not in keys and "strategy.lr" in keys


@pytest.mark.slow
def test_trials_side_by_side_in_their_own_processes_give_a_reproducible_study(tmp_path, spaces):
    """jobs=2: a batch of two trials at a time, each a fresh process; the same seeds give the same study, its
    records are the trials' own, and the provenance says how it was batched."""
    a = _study(tmp_path, spaces, "a", jobs=2)
    b = _study(tmp_path, spaces, "b", jobs=2)
    assert [t["number"] for t in a["trials"]] == [0, 1, 2] and a["tuning"]["jobs"] == 2
    assert [(t["params"], t["value"]) for t in a["trials"]] == [(t["params"], t["value"]) for t in b["trials"]]
    assert len({t["params"]["trainer.lr"] for t in a["trials"]}) == 3
    from benchmark.records.store import load_record

    for t in a["trials"]:
        rec = load_record(tmp_path / "tuning" / "a" / "runs" / t["records"][0])
        assert rec["config"]["trainer"]["lr"] == pytest.approx(t["params"]["trainer.lr"])
        assert rec["metrics"]["aa"] == t["value"]
    with pytest.raises(tune.TuneError, match="jobs must be >= 1"):
        _study(tmp_path, spaces, "c", jobs=0)
