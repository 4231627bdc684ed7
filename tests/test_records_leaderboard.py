import json
import threading

import pytest

from benchmark import leaderboard
from benchmark.records import store as records
from benchmark.records.metrics import all_metrics
from tests.conftest import older, write_raw


def _stage(task):
    return {"tasks": [task], "steps": 2, "micro_batches": 2, "epochs": 1, "seconds": 1.0, "answer_tokens": 8,
            "padded_tokens": 16, "answer_tokens_per_s": 8.0, "padded_tokens_per_s": 16.0, "mean_loss": 0.5,
            "examples": 4}


def _rec(strategy="seq_lora", seed=1, aa_last=(50.0, 60.0), chash="abc", run_id=None):
    """A run record that write_record accepts (every key of benchmark/records/schema.py), scored by loglik."""
    R = [[10.0, 20.0], [70.0, 25.0], list(aa_last)]
    metrics = {**all_metrics(R), "ppl_before": 10.0, "ppl_after": 11.0, "ppl_rel_change": 0.1}
    run_id = run_id or f"{strategy}-{seed}-{chash}"
    return {"schema": records.SCHEMA, "run_id": run_id, "created_utc": "20260101T000000", "config": {"seed": seed},
            "config_hash": chash, "seed": seed,
            "stream": {"name": "demo", "tasks": ["a", "b"], "skipped": [], "replaces": {}, "splits": {}},
            "strategy": {"name": strategy, "config": {}},
            "model": {"name": "tiny-llama", "source": "tests", "dtype": "float32", "load_s": 0.1, "parameters": 1000,
                      "chat_template": False},
            "eval_mode": "loglik",
            "matrix": {"rows": ["zero-shot", "a", "b"], "columns": ["a", "b"], "values": R, "unit": "accuracy %"},
            "metrics": metrics,
            "prompt_format": {"chat_template": "auto", "applied": False},
            "generation": {"max_new_tokens": 16, "rows": [None, None, None]},
            "anatomy": {"rows": [None, None, None], "summary": None},
            "resumed": {"after_stages": [], "attempts": 1},
            "cost": {"wall_s": 10.0 + seed, "train_s": 2.0, "answer_tokens_per_s": 100.0, "peak_memory_mb": 500.0,
                     "trainable_params": 1000, "processes": 1, "device": "cpu", "mixed_precision": "no"},
            "stages": [_stage("a"), _stage("b")],
            "setup": {"world_size": 1, "per_device_batch": 2, "grad_accum": 1, "effective_batch": 2,
                      "model_dtype": "float32", "mixed_precision": "no", "deterministic_algorithms": True, "engine": "no"},
            "provenance": {"git": {"commit": None, "dirty": None}, "packages": {},
                           "hardware": {"platform": "tests", "machine": "x86_64", "python": "3.11", "cpu_count": 2,
                                        "torch_threads": 1, "cpu_model": None},
                           "environment": {"lock": "requirements.lock", "locked": True, "differs": []}},
            # the primary mode's scores are the matrix and metrics themselves (the same objects), as build_record
            # makes them: a test that spoils one spoils both
            "scores": {"loglik": {"values": R, "metrics": metrics}}, "primary_mode": "loglik",
            "predictions": {"folder": f"{run_id}.predictions", "files": []},
            "evaluation": {"schedule": "full", "every_k": 2, "cells": 6, "full_cells": 6, "eval_s": 1.0,
                           "estimate_s": None, "unavailable": {},
                           "rows": [{"after": a, "cells": 2, "prompts": 4, "generated_tokens": 0, "seconds": 0.3}
                                    for a in ("zero-shot", "a", "b")]},
            "identity": {}}


def test_the_test_record_matches_the_schema():
    from benchmark.records.schema import problems

    assert problems(_rec()) == []


def test_write_is_atomic_and_never_overwrites(tmp_path):
    p = records.write_record(_rec(), tmp_path)
    assert records.load_record(p)["run_id"] == "seq_lora-1-abc"
    before = p.read_bytes()
    with pytest.raises(records.RecordError, match="already exists; run records are never overwritten"):
        records.write_record(_rec(), tmp_path)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == [p.name]  # no temp file left behind


def test_concurrent_writers_lose_nothing(tmp_path):
    def write(i):
        records.write_record(_rec(seed=i, run_id=f"run-{i}"), tmp_path)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    good, bad = records.load_records(tmp_path)
    assert len(good) == 16 and not bad


def test_loader_rejects_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "corrupt.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "foreign.json").write_text(json.dumps({"schema": "other/9"}), encoding="utf-8")
    ragged = _rec()
    ragged["matrix"]["values"][1] = [1.0]
    (tmp_path / "ragged.json").write_text(json.dumps(ragged), encoding="utf-8")
    with pytest.raises(records.RecordError, match="corrupt.json: not a readable JSON run record"):
        records.load_record(tmp_path / "corrupt.json")
    with pytest.raises(records.RecordError, match="foreign.json: schema 'other/9' is not 'clbench.run/1'"):
        records.load_record(tmp_path / "foreign.json")
    with pytest.raises(records.RecordError, match="ragged"):
        records.load_record(tmp_path / "ragged.json")
    good, bad = records.load_records(tmp_path)
    assert good == [] and len(bad) == 3


def test_leaderboard_groups_seeds_with_spread_and_reports_bad_records(tmp_path):
    runs = tmp_path / "runs"
    # synthetic records have no prediction files: written as older records, which the board shows unverified
    write_raw(runs, older(_rec(seed=1, aa_last=(50.0, 60.0))))
    write_raw(runs, older(_rec(seed=2, aa_last=(60.0, 70.0))))
    write_raw(runs, older(_rec("replay", seed=1, aa_last=(80.0, 90.0), chash="def")))
    (runs / "broken.json").write_text("[", encoding="utf-8")
    out = leaderboard.regenerate(runs, tmp_path)
    rows = out["rows"]
    assert [r["strategy"] for r in rows] == ["replay", "seq_lora"]  # sorted by AA
    seq = rows[1]
    assert seq["n"] == 2 and seq["seeds"] == [1, 2]
    assert seq["aa"] == pytest.approx(60.0)  # mean of 55 and 65
    assert seq["aa_sd"] == pytest.approx(7.0710678)  # sample sd
    assert rows[0]["aa_sd"] is None
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "60.00 ± 7.07" in md and "2 (1, 2), unverified" in md and "- Unverified: " in md
    assert "broken.json" in md and "Records not included" in md
    csv = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("stream,model,strategy,config,eval,chat,n,seeds,unverified,aa,aa_sd") and len(csv) == 3
    html = (tmp_path / "leaderboard.html").read_text()
    assert html.count("<svg") == 2 * 3  # heatmap + curves per run
    assert "broken.json" in html


def test_leaderboard_cli(tmp_path):
    from benchmark.cli import leaderboard_main

    runs = tmp_path / "runs"
    write_raw(runs, older(_rec()))
    assert leaderboard_main([str(runs)]) == 0
    assert (tmp_path / "LEADERBOARD.md").is_file()
    assert leaderboard_main([str(tmp_path / "nothing")]) == 2


def test_leaderboard_cli_refuses_a_folder_without_valid_records(tmp_path, capsys):
    from benchmark.cli import leaderboard_main

    runs = tmp_path / "runs"
    write_raw(runs, older(_rec()))
    assert leaderboard_main([str(runs)]) == 0
    before = (tmp_path / "LEADERBOARD.md").read_bytes()
    for p in runs.iterdir():
        p.unlink()
    (runs / "broken.json").write_text("[", encoding="utf-8")
    assert leaderboard_main([str(runs)]) == 2
    assert f"no valid run records in {runs}" in capsys.readouterr().err
    assert (tmp_path / "LEADERBOARD.md").read_bytes() == before


def test_a_setting_added_later_at_its_default_keeps_the_config_identity():
    from benchmark.records.store import config_hash, identity_config

    old = {"seed": 1, "trainer": {"lr": 0.001}, "strategy": {"name": "seq_lora"}}
    new = {"seed": 2, "trainer": {"lr": 0.001, "epochs_per_task": {}}, "strategy": {"name": "seq_lora"}}
    assert config_hash(old) == config_hash(new) and identity_config(new) == {k: v for k, v in old.items() if k != "seed"}
    changed = {**new, "trainer": {"lr": 0.001, "epochs_per_task": {"MNLI": 2}}}
    assert config_hash(changed) != config_hash(old)
    assert new["trainer"] == {"lr": 0.001, "epochs_per_task": {}}  # the record's own config is not modified
