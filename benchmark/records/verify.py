"""Verify, don't trust: what a record says must follow from its files.

A record with prediction files is verified: every matrix is recomputed from the prediction lines, every metric from
its matrix, and every block checked against the schema. A record written before prediction files were kept can
only be checked for consistency (metrics against its matrix, types against the schema): it is *unverified*, and
the leaderboard says so. Prediction folder and file names must be plain names inside the runs folder, so a
record cannot make the leaderboard read, or reveal the existence of, any other file.

Pure Python; each prediction file is read once, for its hash and its lines together.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

from benchmark.errors import ClbenchError
from benchmark.records import predictions, stats
from benchmark.records.metrics import GENERAL_KEYS, all_metrics, general_retention, general_rows, general_scores
from benchmark.records.schema import problems
from benchmark.records.store import config_hash, recorded_content, recorded_task_versions

# keys a record with prediction files may lack: added to the writer after such records were published
LATER_WITH_PREDICTIONS = (re.compile(r"record\.evaluation: missing"), re.compile(r"record\.identity: missing"),
                          re.compile(r"record\.stream\.splits\.[^.]+\.version: missing"))
TOLERANCE = 1e-6  # metrics are stored rounded to 6 decimals


# keys the writer began to write together with prediction files: a record holding any of them must have them
WRITTEN_WITH_PREDICTIONS = ("anatomy", "generation", "prompt_format", "resumed", "setup")


def is_verifiable(rec: dict[str, Any]) -> bool:
    return "predictions" in rec


def problem(rec: dict[str, Any], path: Path) -> str | None:
    """Why the record (read by store.load_record and upgraded) cannot be shown, or None."""
    return examine(rec, path)[0]


def examine(rec: dict[str, Any], path: Path) -> tuple[str | None, dict[str, Any]]:
    """(problem, derived): why the record cannot be shown (or None), and what the verification derived from its
    prediction lines while it read them ({TEST_CI: {mode: interval}} for a verified record). The record itself
    is never changed."""
    derived: dict[str, Any] = {}
    if not is_verifiable(rec) and any(k in rec for k in WRITTEN_WITH_PREDICTIONS):
        return "names no prediction files, though it was written when every run kept them", derived
    try:
        return (_schema(rec) or _identity(rec) or _consistency(rec)
                or (_files(rec, Path(path), derived) if is_verifiable(rec) else None)), derived
    except ClbenchError as e:  # an unreadable prediction file
        return str(e), {}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a shape the checks did not foresee
        return f"malformed record ({type(e).__name__}: {e})", {}


def _schema(rec: dict[str, Any]) -> str | None:
    found = problems(rec)
    if is_verifiable(rec):
        found = [p for p in found if not any(r.fullmatch(p) for r in LATER_WITH_PREDICTIONS)]
    else:  # an older record lacks later keys; what it has must still be well-typed
        found = [p for p in found if not p.endswith(": missing")]
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return f"does not match the record schema: {found[0]}{more}"
    return None


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= TOLERANCE


def _identity(rec: dict[str, Any]) -> str | None:
    """A record that states its content facts (written since the `identity` block) must carry the config hash its
    config and those facts give: an edited setting cannot keep its old row. Older records hashed by earlier rules
    are grouped by the hash they carry."""
    if "identity" not in rec:
        return None
    found = config_hash(rec["config"], recorded_task_versions(rec), recorded_content(rec))
    if found != rec["config_hash"]:
        return f"config_hash {rec['config_hash']!r} is not the {found!r} that its config and identity give"
    return None


def _consistency(rec: dict[str, Any]) -> str | None:
    """Every mode's metrics follow from its matrix; the record's matrix and metrics are its primary mode's."""
    primary = rec["scores"].get(rec["primary_mode"])
    if primary is None:
        return f"primary_mode {rec['primary_mode']!r} has no scores"
    if rec["matrix"]["values"] != primary["values"] or rec["metrics"] != primary["metrics"]:
        return f"matrix or metrics differ from the {rec['primary_mode']} scores they should be"
    n_tasks, n_rows = len(rec["matrix"]["columns"]), len(rec["matrix"]["rows"])
    problem = _general_rows_defect(rec)
    if problem:
        return problem
    general = general_scores(general_rows(rec.get("general") or {}))  # the same for every mode
    for mode, score in rec["scores"].items():
        R, stated = score["values"], score["metrics"]
        if len(R) != n_rows or any(len(row) != n_tasks for row in R):
            return f"{mode} matrix is not {n_rows} x {n_tasks} like the record's matrix"
        for key, value in all_metrics(R).items():
            if not _close(value, stated.get(key)):
                return f"{mode} metric {key} is {stated.get(key)!r} but its matrix gives {value!r}"
        change = general_retention(stated.get("ppl_before"), stated.get("ppl_after"))["ppl_rel_change"]
        if not _close(change, stated.get("ppl_rel_change")):
            return f"{mode} metric ppl_rel_change is {stated.get('ppl_rel_change')!r} but its perplexities give {change!r}"
        for key in GENERAL_KEYS:
            if not _close(general.get(key), stated.get(key)):
                return f"{mode} metric {key} is {stated.get(key)!r} but the record's general rows give {general.get(key)!r}"
    return None


def _general_rows_defect(rec: dict[str, Any]) -> str | None:
    """Every lm-eval task was scored before training and after the last stage, on rows the matrix has."""
    rows = rec["matrix"]["rows"]
    for task, block in (rec.get("general") or {}).items():
        found = sorted(r["row"] for r in block["rows"])
        if not found or found[0] != 0 or found[-1] != len(rows) - 1 or len(set(found)) != len(found):
            return f"general task {task} has rows {found}; it needs the zero-shot row 0 and the last row {len(rows) - 1}"
        wrong = next((r for r in block["rows"] if r["after"] != rows[r["row"]]), None)
        if wrong is not None:
            return f"general task {task} row {wrong['row']} says after {wrong['after']!r}, the matrix {rows[wrong['row']]!r}"
    return None


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and os.sep not in name
            and (os.altsep is None or os.altsep not in name) and "\0" not in name)


def _inside(path: Path, folder: Path) -> bool:
    return not path.is_symlink() and path.resolve().parent == folder.resolve()


def _files(rec: dict[str, Any], path: Path, derived: dict[str, Any]) -> str | None:
    """The prediction files: plain names inside the runs folder, one per matrix row, the bytes the record names,
    and lines that re-score to every matrix of the record."""
    entry, runs = rec["predictions"], path.parent
    if not _plain_name(entry["folder"]):
        return f"predictions folder {entry['folder']!r} is not a plain name beside the record"
    folder = runs / entry["folder"]
    if not (_inside(folder, runs) and folder.is_dir()):
        return f"predictions folder {entry['folder']} is missing (or a link)"
    rows = sorted(f["row"] for f in entry["files"])
    if rows != list(range(len(rec["matrix"]["values"]))):
        return f"predictions name rows {rows}, not one file for each of the matrix's {len(rec['matrix']['values'])} rows"
    lines = {}
    for f in entry["files"]:
        found, problem = _named_file(folder, f["file"], f["sha256"], "predictions")
        if problem:
            return problem
        lines[f["row"]] = found
    tasks = rec["matrix"]["columns"]
    per_row = [predictions.accuracies(lines[r], tasks) for r in sorted(lines)]
    for mode, score in rec["scores"].items():
        rescored = [r.get(mode) for r in per_row]
        if rescored != score["values"]:
            row = next(i for i, (a, b) in enumerate(zip(rescored, score["values"])) if a != b)
            return f"{mode} matrix row {row} ({rec['matrix']['rows'][row]}) is not what its predictions score: " \
                   f"{score['values'][row]} recorded, {rescored[row]} rescored"
    problem = _general_files(rec, folder)
    if problem:
        return problem
    # derived here, where the lines are read once: how wide the final AA is from the test examples alone
    derived[TEST_CI] = {mode: final_aa_interval(lines[max(lines)], tasks, mode) for mode in rec["scores"]}
    return None


def _named_file(folder: Path, name: Any, sha256: str, kind: str) -> tuple[list[dict], str | None]:
    """(the lines, None) of a file that the record names in its predictions folder, or ([], why it cannot be
    read): a plain name, inside the folder and no link, holding the bytes of the record's sha256."""
    if not _plain_name(name):
        return [], f"{kind} file {name!r} is not a plain name"
    p = folder / name
    if not (_inside(p, folder) and p.is_file()):
        return [], f"{kind} file {name} is missing from {folder.name} (or a link)"
    data = p.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        return [], f"{kind} file {folder.name}/{p.name} does not match the sha256 in the record"
    return predictions.parse(data, p), None


def _general_files(rec: dict[str, Any], folder: Path) -> str | None:
    """Each lm-eval row's per-sample log: a plain name in the predictions folder, the bytes the record names, one
    line per document, and the score its lines give."""
    for task, block in (rec.get("general") or {}).items():
        for r in block["rows"]:
            lines, problem = _named_file(folder, r["file"], r["sha256"], "general")
            if problem:
                return problem
            values = [line.get(block["metric"]) for line in lines if line.get("task") == task]
            if len(values) != len(lines) or len(values) != r["n"] or not all(isinstance(v, (int, float)) for v in values):
                return f"general file {r['file']} holds {len(lines)} lines of task {task}, the record says {r['n']}"
            score = round(100.0 * sum(values) / len(values), 6) if values else None
            if not _close(score, r["score"]):
                return f"general task {task} row {r['row']} is {r['score']} in the record but its samples give {score}"
            stderr = round(100.0 * stats.mean_stderr(values), 6) if len(values) > 1 else None
            if stderr is not None and abs(stderr - r["stderr"]) > 1e-4:
                return f"general task {task} row {r['row']} has stderr {r['stderr']} but its samples give {stderr}"
    return None


TEST_CI = "derived_test_ci"  # what examine derives; the leaderboard keeps it beside the record, never stored
BOOTSTRAP_RESAMPLES = 1000


def final_aa_interval(lines: list[dict], tasks: list[str], mode: str) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of the final row's AA over its test examples (stratified by task,
    seeded), in %; None when a task of the row has no scored example."""
    samples = [[float(c) for c in predictions.correct(lines, task, mode)] for task in tasks]
    if any(not s for s in samples):
        return None
    ci = stats.bootstrap_ci(stats.macro_accuracy, samples, n_resamples=BOOTSTRAP_RESAMPLES)["ci"]
    return (100.0 * ci[0], 100.0 * ci[1])
