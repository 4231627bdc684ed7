"""Verify, don't trust: a record enters the leaderboard only if its prediction files re-score to its matrices, its
metrics follow from its matrices and every block has the schema's shape; its files are plain names inside the runs
folder. Each case below was accepted (or stopped the leaderboard with a traceback) before the verification."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from benchmark import leaderboard

Spoil = "callable(record, predictions folder) -> None"


def _copy(two_task_run, runs: Path) -> tuple[Path, dict]:
    path, rec = two_task_run
    runs.mkdir(parents=True)
    shutil.copytree(path.parent / rec["predictions"]["folder"], runs / rec["predictions"]["folder"])
    return runs / path.name, json.loads(json.dumps(rec))


def _board(two_task_run, tmp_path: Path, spoil) -> dict:
    runs = tmp_path / "runs"
    path, rec = _copy(two_task_run, runs)
    spoil(rec, runs / rec["predictions"]["folder"])
    path.write_text(json.dumps(rec), encoding="utf-8")
    return leaderboard.build_board(runs, tmp_path)


def _rewrite(folder: Path, rec: dict, row: int, edit) -> None:
    """Edit the lines of one prediction file and put its new sha256 in the record, as a careful forger would."""
    entry = next(f for f in rec["predictions"]["files"] if f["row"] == row)
    lines = [json.loads(x) for x in gzip.decompress((folder / entry["file"]).read_bytes()).decode().splitlines()]
    edit(lines)
    data = gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode(), mtime=0)
    (folder / entry["file"]).write_bytes(data)
    entry["sha256"] = hashlib.sha256(data).hexdigest()


def test_an_untouched_record_is_verified(two_task_run, tmp_path):
    board = _board(two_task_run, tmp_path, lambda rec, folder: None)
    assert board["problems"] == [] and board["n_records"] == 1 and board["rows"][0]["unverified"] == 0


def _flip_answer(rec, folder):
    def edit(lines):
        line = lines[0]
        line["generation"] = line["gold"] if line["generation"] != line["gold"] else line["gold"] + " not"
    _rewrite(folder, rec, len(rec["matrix"]["values"]) - 1, edit)


def _drop_files_list(rec, folder):
    del rec["predictions"]["files"]


def _drop_predictions(rec, folder):
    shutil.rmtree(folder)
    del rec["predictions"]


def _one_file_for_every_row(rec, folder):
    rec["predictions"]["files"] = rec["predictions"]["files"][:1]


def _aa(rec, folder):
    rec["metrics"]["aa"] = 99.0
    rec["scores"][rec["primary_mode"]]["metrics"]["aa"] = 99.0


def _empty_metrics(rec, folder):
    rec["scores"]["loglik"]["metrics"] = {}


def _string_values(rec, folder):
    rec["scores"]["loglik"]["values"][0][0] = "100"


def _unknown_mode(rec, folder):
    rec["eval_mode"] = "foo"
    del rec["scores"]


def _malformed(key_path: str, value):
    def spoil(rec, folder):
        *parents, last = key_path.split(".")
        node = rec
        for k in parents:
            node = node[k]
        node[last] = value
    spoil.__name__ = f"{key_path}={value!r}"
    return spoil


def _ragged(rec, folder):
    rec["scores"]["loglik"]["values"][1] = rec["scores"]["loglik"]["values"][1][:1]


def _loglik_matrix(rec, folder):
    rec["scores"]["loglik"]["values"][0][0] += 12.5


def _edited_setting(rec, folder):
    rec["config"]["trainer"]["lr"] = 0.5  # another configuration under the old row's hash


def _dropped_identity_fact(rec, folder):
    rec["identity"] = {"strategy_versions": {"seq_lora": 2}}


@pytest.mark.parametrize("spoil, reason", [
    (_flip_answer, "is not what its predictions score"),
    (_edited_setting, "that its config and identity give"),
    (_dropped_identity_fact, "that its config and identity give"),
    (_aa, "metric aa is 99.0 but its matrix gives"),
    (_drop_files_list, "record.predictions.files: missing"),
    (_drop_predictions, "names no prediction files, though it was written when every run kept them"),
    (_one_file_for_every_row, "not one file for each of the matrix's 3 rows"),
    (_empty_metrics, "record.scores.loglik.metrics.aa: missing"),
    (_string_values, "record.scores.loglik.values[0][0]: expected float, got str"),
    (_unknown_mode, "does not match the record schema: record.scores: missing"),
    (_malformed("predictions", "row-0.jsonl.gz"), "record.predictions: expected a mapping"),
    (_malformed("predictions.files", {"row": 0}), "record.predictions.files: expected a list"),
    (_malformed("predictions.folder", 7), "record.predictions.folder: expected str"),
    (_malformed("anatomy.rows", "none"), "record.anatomy.rows: expected a list"),
    (_malformed("scores.generate", [1, 2]), "record.scores.generate: expected a mapping"),
    (_malformed("matrix.rows", [0, 1, 2]), "record.matrix.rows[0]: expected str"),
    (_ragged, "loglik matrix is not 3 x 2"),
    (_loglik_matrix, "loglik"),
], ids=lambda v: getattr(v, "__name__", None) or "")
def test_a_record_that_does_not_follow_from_its_files_is_listed_with_the_reason(two_task_run, tmp_path, spoil, reason):
    board = _board(two_task_run, tmp_path / "out", spoil)
    assert board["n_records"] == 0 and len(board["problems"]) == 1, board["problems"]
    assert reason in board["problems"][0]


# ---------------------------------------------------------------- nothing outside the runs folder


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("not a prediction file")
    return secret


@pytest.mark.parametrize("folder, file", [
    ("../outside", "secret.txt"),  # the folder climbs out
    ("{abs}", "secret.txt"),  # an absolute folder
    ("{run}.predictions", "../../secret.txt"),  # the file climbs out
    ("{run}.predictions", "{abs}/secret.txt"),  # an absolute file
    ("{run}.predictions/../..", "secret.txt"),
])
def test_prediction_names_must_be_plain_names_inside_the_runs_folder(two_task_run, tmp_path, folder, file):
    secret = _outside(tmp_path)
    (tmp_path / "outside").mkdir()
    shutil.copy(secret, tmp_path / "outside" / "secret.txt")
    sha = hashlib.sha256(secret.read_bytes()).hexdigest()

    def spoil(rec, pred_folder):
        rec["predictions"]["folder"] = folder.format(abs=tmp_path, run=rec["run_id"])
        rec["predictions"]["files"][0].update(file=file.format(abs=tmp_path), sha256=sha)
    board = _board(two_task_run, tmp_path / "out", spoil)
    assert board["n_records"] == 0
    assert "is not a plain name" in board["problems"][0], board["problems"]
    assert "secret" not in board["problems"][0] or "not a plain name" in board["problems"][0]


def test_a_link_inside_a_predictions_folder_is_not_followed(two_task_run, tmp_path):
    secret = _outside(tmp_path)

    def spoil(rec, folder):
        entry = rec["predictions"]["files"][0]
        real = folder / entry["file"]
        shutil.move(real, tmp_path / "moved.jsonl.gz")
        os.symlink(tmp_path / "moved.jsonl.gz", real)
    board = _board(two_task_run, tmp_path / "out", spoil)
    assert board["n_records"] == 0 and "(or a link)" in board["problems"][0]
    assert secret.read_text() == "not a prediction file"


def test_a_linked_predictions_folder_is_not_followed(two_task_run, tmp_path):
    def spoil(rec, folder):
        shutil.move(folder, tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", folder)
    board = _board(two_task_run, tmp_path / "out", spoil)
    assert board["n_records"] == 0 and "is missing (or a link)" in board["problems"][0]


def test_an_older_record_is_shown_unverified_and_still_checked(tmp_path):
    from tests.conftest import older, write_raw
    from tests.test_records_leaderboard import _rec

    runs = tmp_path / "runs"
    write_raw(runs, older(_rec()))
    spoiled = older(_rec(seed=2, run_id="spoiled"))
    spoiled["metrics"]["bwt"] = 5.0  # not what its matrix gives
    write_raw(runs, spoiled)
    board = leaderboard.build_board(runs, tmp_path)
    assert board["n_records"] == 1 and board["rows"][0]["unverified"] == 1
    assert "metric bwt is 5.0 but its matrix gives" in board["problems"][0]
    leaderboard.regenerate(runs, tmp_path)
    assert "1 (1), unverified" in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_verified_run_has_a_bootstrap_interval_of_its_final_aa_over_its_test_examples(two_task_run, tmp_path):
    """Issue 24, part 3: per-run intervals over test examples beside the seed intervals."""
    from benchmark.records import predictions, stats

    board = _board(two_task_run, tmp_path, lambda rec, folder: None)
    row = board["rows"][0]
    path, rec = two_task_run
    last = max(rec["predictions"]["files"], key=lambda f: f["row"])
    lines = predictions.parse((path.parent / rec["predictions"]["folder"] / last["file"]).read_bytes(), last["file"])
    mode = row["eval"]
    samples = [[float(c) for c in predictions.correct(lines, t, mode)] for t in rec["matrix"]["columns"]]
    lo, hi = stats.bootstrap_ci(stats.macro_accuracy, samples, n_resamples=1000)["ci"]
    assert row["aa_test_halfwidth"] == pytest.approx(100 * (hi - lo) / 2) and row["aa_test_n"] == 1
    assert row["runs"][0]["aa_test_ci"][0] <= rec["scores"][mode]["metrics"]["aa"] <= row["runs"][0]["aa_test_ci"][1]
