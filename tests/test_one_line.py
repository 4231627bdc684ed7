"""Bad input gets one line naming the culprit, never a traceback, and never loses a finished result (issue 26, 4)."""
from __future__ import annotations

import os
import stat

import pytest

from benchmark import leaderboard
from benchmark.errors import ClbenchError
from tests.conftest import TINY_RUN, compose_cfg, older, write_raw
from tests.test_records_leaderboard import _rec


@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be in [0, 2^32), got -1"),
    ("eval.max_new_tokens=1000000000000", "eval.max_new_tokens must be <= 65536 (the papers use 50), got 1000000000000"),
    ("stream.tasks=[dbpedia,agnews,dbpedia]", "stream.tasks names dbpedia twice; a stream's tasks are distinct"),
])
def test_a_bad_value_fails_when_the_config_is_composed(override, message):
    with pytest.raises(ClbenchError) as e:
        compose_cfg(TINY_RUN + [override])
    assert str(e.value) == message


def test_a_results_dir_that_cannot_be_created_is_one_line(tmp_path):
    from benchmark.runner import preflight

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ClbenchError, match=r"^results_dir=.*file/results is not a writable folder"):
        preflight.check(compose_cfg(TINY_RUN + [f"results_dir={tmp_path / 'file' / 'results'}"]))


@pytest.mark.parametrize("out", ["a file", "an unwritable folder"])
def test_clbench_leaderboard_out_that_cannot_be_written_is_one_line(tmp_path, capsys, out):
    from benchmark.cli import leaderboard_main

    runs = tmp_path / "runs"
    write_raw(runs, older(_rec()))
    target = tmp_path / "out"
    if out == "a file":
        target.write_text("x")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):  # root writes anywhere: the file case covers this machine
            pytest.skip("running as a user who can write into a read-only folder")
    assert leaderboard_main([str(runs), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clbench-leaderboard: error: cannot write the leaderboard into {target}") and err.count("\n") == 1


def test_when_every_record_is_refused_the_error_says_why(tmp_path):
    runs = tmp_path / "runs"
    bad = older(_rec())
    bad["metrics"]["aa"] = 1.0
    write_raw(runs, bad)
    with pytest.raises(leaderboard.LeaderboardError, match=r"\(1 not included; the first: .*metric aa is 1.0 but its"):
        leaderboard.regenerate(runs, tmp_path)


@pytest.mark.parametrize("body, message", [
    ("- {claim: 7, metric: aa, strategy: s, below: 1}", "claim must be text, got 7"),
    ("- {claim: x, paper: 41.3, metric: aa, strategy: s, below: 1}", "paper must be text, got 41.3"),
    ("- {claim: x, metric: aa, strategy: s, above: -1.0e+999}", "above must be a finite number, got -inf"),
    ("- {claim: x, metric: aa, strategy: s, below: .nan}", "below must be a finite number, got nan"),
])
def test_a_malformed_claim_is_one_line(tmp_path, body, message):
    from benchmark.leaderboard import claims

    path = tmp_path / "claims.yaml"
    path.write_text(body)
    with pytest.raises(claims.ClaimsError, match=message):
        claims.load(path)


def test_a_claims_file_that_is_not_utf8_is_one_line(tmp_path):
    from benchmark.leaderboard import claims

    path = tmp_path / "claims.yaml"
    path.write_bytes(b"- {claim: \xff\xfe}")
    with pytest.raises(claims.ClaimsError, match="could not be read"):
        claims.load(path)


def test_record_text_cannot_inject_markup_or_formulas(tmp_path):
    runs = tmp_path / "runs"
    write_raw(runs, older(_rec(strategy="<script>alert(1)</script>", run_id="a")))
    write_raw(runs, older(_rec(strategy="=HYPERLINK(\"http://x\")", chash="def", run_id="b")))
    leaderboard.regenerate(runs, tmp_path)
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    csv = (tmp_path / "leaderboard.csv").read_text()
    assert "'=HYPERLINK" in csv and ",=HYPERLINK" not in csv


def test_files_follow_the_umask(tmp_path):
    from benchmark.fileio import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        os.umask(0o077)
        atomic_write(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_a_killed_runs_staging_folders_are_removed_by_its_next_run(tmp_path):
    from benchmark.records.predictions import remove_stale

    runs = tmp_path / "runs"
    (runs / ".tmp-20260101T000000-seq_lora-demo-abc123-s1-0a0b0c.predictions").mkdir(parents=True)
    (runs / ".tmp-20260101T000000-seq_lora-demo-zzz999-s1-0a0b0c.predictions").mkdir()
    assert [p.name for p in remove_stale(runs, "abc123-s1")] == [
        ".tmp-20260101T000000-seq_lora-demo-abc123-s1-0a0b0c.predictions"]
    assert [p.name for p in runs.iterdir()] == [".tmp-20260101T000000-seq_lora-demo-zzz999-s1-0a0b0c.predictions"]
