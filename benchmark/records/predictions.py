"""Per-example predictions, like lm-evaluation-harness's logged samples: every evaluation of a run (a row of the
accuracy matrix) is kept as a gzip-compressed JSON-lines file beside the record, named in the record with its
sha256. Everything the record says about accuracy, generation length and the anatomy of errors is computed
from these rows by the functions below, so a run can be audited and re-scored from its files alone.

One line per (task, test example):
    row, after          the row index (0 = zero-shot) and what had been trained ("zero-shot", "dbpedia", ...)
    task, id, gold      the task, the example's id in the release ("<file>#<index>") and its gold label
    generation          the greedy generation, special tokens removed, cut at EOS (null when not computed)
    normalized          the generation after SQuAD-style normalisation, as exact match compares it
    correct             generation exact match (null when not computed)
    gen_tokens, hit_limit   new tokens before EOS, and whether EOS never came within eval.max_new_tokens
    choice, margin      the label with the highest log-likelihood and its lead over the runner-up (null when
                        not computed; margin null for a one-label task)
    correct_loglik      choice == gold (null when not computed)
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Optional, TypedDict

from benchmark.errors import ClbenchError
from benchmark.fileio import atomic_write, sha256_file
from benchmark.records.schema import SCORE_MODES as MODES
from benchmark.records.text import normalize_answer


@dataclass
class Scored:
    """One example's evaluation, as the scorer (benchmark/modeling/scoring.py) returns it: what generation
    produced and which label the log-likelihood chose."""

    index: int  # position in the task's test list
    generation: str | None = None  # decoded, special tokens skipped, cut at EOS
    gen_tokens: int | None = None  # new tokens before EOS
    hit_limit: bool | None = None  # no EOS within max_new_tokens
    choice: int | None = None  # the label index with the highest log-likelihood
    margin: float | None = None  # its score minus the runner-up's


class PredictionLine(TypedDict):
    """One line of a prediction file (the module docstring says what each field means)."""

    row: int
    after: str
    task: str
    id: str
    gold: str
    generation: Optional[str]
    normalized: Optional[str]
    correct: Optional[bool]
    gen_tokens: Optional[int]
    hit_limit: Optional[bool]
    choice: Optional[str]
    margin: Optional[float]
    correct_loglik: Optional[bool]


def example_rows(row: int, after: str, task: str, labels: list[str], examples: list,
                 scored: list[Scored]) -> list[PredictionLine]:
    """The prediction lines of one task in one evaluation; `examples` are the task's test Examples, `scored`
    their results in the same order."""
    out: list[PredictionLine] = []
    for ex, s in zip(examples, scored):
        gen = s.generation
        out.append({
            "row": row, "after": after, "task": task, "id": ex.id, "gold": ex.label,
            "generation": gen, "normalized": None if gen is None else normalize_answer(gen),
            "correct": None if gen is None else normalize_answer(gen) == normalize_answer(ex.label),
            "gen_tokens": s.gen_tokens, "hit_limit": s.hit_limit,
            "choice": None if s.choice is None else labels[s.choice],
            "margin": None if s.margin is None or s.margin == float("inf") else round(s.margin, 6),
            "correct_loglik": None if s.choice is None else labels[s.choice] == ex.label,
        })
    return out


# ---------------------------------------------------------------- files


def write(path: Path, rows: Iterable[dict]) -> str:
    """Write rows atomically as gzip JSON lines; returns the file's sha256. The gzip header carries no time or
    name, so identical predictions give identical bytes (and hashes) on every run."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        for r in rows:
            gz.write((json.dumps(r, sort_keys=True, allow_nan=False) + "\n").encode())
    data = buf.getvalue()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return sha256_file(path)


def read(path: Path) -> list[dict]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ClbenchError(f"{path}: not a readable predictions file ({e})") from None
    return parse(data, path)


def parse(data: bytes, path: Path) -> list[dict]:
    """The lines of a prediction file's bytes (gzip JSON lines); `path` names it in the error."""
    try:
        text = gzip.decompress(data).decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, EOFError, ValueError) as e:  # BadGzipFile is an OSError, UnicodeDecodeError a ValueError
        raise ClbenchError(f"{path}: not a readable predictions file ({e})") from None


def file_name(row: int) -> str:
    return f"row-{row}.jsonl.gz"


def remove_stale(runs_dir: Path, run_key: str) -> list[Path]:
    """The staging folders that an earlier, killed attempt of this configuration and seed left in runs_dir
    (publish stages `.tmp-<run_id>.predictions`, and the run id holds the run key): removed, and returned."""
    stale = sorted(Path(runs_dir).glob(f".tmp-*-{run_key}-*.predictions")) if Path(runs_dir).is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def publish(files: list[dict], source: Path, runs_dir: Path, run_id: str, also: list[dict] = ()) -> dict[str, Any]:
    """Copy a run's prediction files (and the files of `also`: the lm-eval per-sample logs) from its checkpoint
    folder to runs_dir/<run_id>.predictions/ (staged in a temp folder and renamed, so the folder appears complete
    or not at all), checking each hash on the way. Returns the record's `predictions` entry: folder relative to
    the record, and every prediction file with its sha256."""
    final = runs_dir / f"{run_id}.predictions"
    tmp = runs_dir / f".tmp-{run_id}.predictions"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in [*files, *also]:
        src = source / f["file"]
        if sha256(src) != f["sha256"]:
            raise ClbenchError(f"{src}: predictions changed since they were written (sha256 mismatch)")
        shutil.copyfile(src, tmp / f["file"])
    os.rename(tmp, final)
    return {"folder": final.name, "files": files}


def load_run(record: dict, record_path: Path) -> list[list[dict]]:
    """Every evaluation's prediction lines of a run, in row order."""
    entry = record["predictions"]
    folder = Path(record_path).parent / entry["folder"]
    return [read(folder / f["file"]) for f in sorted(entry["files"], key=lambda f: f["row"])]


# ---------------------------------------------------------------- scores from predictions


def _key(mode: str) -> str:
    return "correct" if mode == "generate" else "correct_loglik"


def accuracies(lines: list[dict], tasks: list[str]) -> dict[str, list[float | None]]:
    """{mode: accuracy % per task} for the modes present in one evaluation's lines; None for a task the
    evaluation did not score (eval.schedule). Correctness is recomputed from the raw generation and choice, not
    read from the stored flags."""
    by_task: dict[str, list[dict]] = {t: [] for t in tasks}
    for line in lines:
        by_task.setdefault(line["task"], []).append(line)
    out: dict[str, list[float | None]] = {}
    for mode in MODES:
        judged = [[_judge(line, mode) for line in by_task[t]] for t in tasks]
        if any(v is None for row in judged for v in row) or not any(judged):
            continue
        out[mode] = [round(100.0 * sum(map(bool, row)) / len(row), 4) if row else None for row in judged]
    return out


def correct(lines: list[dict], task: str, mode: str) -> list[bool]:
    """Per example of `task` in one evaluation's lines, whether `mode` scored it right (recomputed, as in
    accuracies); examples the mode did not score are left out."""
    judged = (_judge(line, mode) for line in lines if line["task"] == task)
    return [bool(v) for v in judged if v is not None]


def _judge(line: dict, mode: str) -> bool | None:
    if mode == "generate":
        g = line.get("generation")
        return None if g is None else normalize_answer(g) == normalize_answer(line["gold"])
    c = line.get("choice")
    return None if c is None else c == line["gold"]


def generation_stats(lines: list[dict], tasks: list[str]) -> dict[str, dict[str, float]] | None:
    """Per task: mean new tokens before EOS and the share of rows that reached the limit without EOS."""
    if any(l.get("generation") is None for l in lines):
        return None
    out = {}
    for t in tasks:
        mine = [l for l in lines if l["task"] == t]
        if mine:
            out[t] = {"mean_tokens": round(sum(l["gen_tokens"] for l in mine) / len(mine), 3),
                      "at_limit": round(sum(bool(l["hit_limit"]) for l in mine) / len(mine), 4)}
    return out


def anatomy(lines: list[dict], labels: dict[str, list[str]], just_trained: list[str]) -> dict[str, dict] | None:
    """What the wrong generations of one evaluation are, per task:
        same_task_label   another label of the task itself (the task is confused, its format kept)
        other_task_label  a label of another task of the stream (`other_tasks`: which; `just_trained`: a label
                          of the task(s) trained in the stage just finished), i.e. the answer format was
                          overwritten
        no_label          no label at all: `empty`, `over_long` (reached the token limit) or `malformed`
    Null when generation was not computed. A string that is a label of several other tasks counts for the
    just-trained task when it is one of them, else for the first in stream order."""
    if any(l.get("generation") is None for l in lines):
        return None
    owners: dict[str, list[str]] = {}
    for t, labs in labels.items():
        for lab in labs:
            owners.setdefault(normalize_answer(lab), []).append(t)
    out = {}
    scored = {line["task"] for line in lines}
    for t in (t for t in labels if t in scored):  # the tasks this evaluation scored (eval.schedule)
        c = {"examples": 0, "wrong": 0, "same_task_label": 0, "other_task_label": 0, "just_trained": 0,
             "no_label": 0, "empty": 0, "over_long": 0, "malformed": 0, "other_tasks": {}}
        own = {normalize_answer(x) for x in labels[t]}
        for l in (x for x in lines if x["task"] == t):
            c["examples"] += 1
            pred = normalize_answer(l["generation"])
            if pred == normalize_answer(l["gold"]):
                continue
            c["wrong"] += 1
            others = [o for o in owners.get(pred, []) if o != t]
            if pred in own:
                c["same_task_label"] += 1
            elif others:
                c["other_task_label"] += 1
                hit = next((o for o in others if o in just_trained), others[0])
                c["other_tasks"][hit] = c["other_tasks"].get(hit, 0) + 1
                c["just_trained"] += hit in just_trained
            else:
                c["no_label"] += 1
                kind = "empty" if not pred else "over_long" if l.get("hit_limit") else "malformed"
                c[kind] += 1
        out[t] = c
    return out


def summarize_anatomy(rows: list[dict | None], seen_before_last: list[str]) -> dict[str, float | None] | None:
    """The leaderboard's view of the final evaluation: among wrong answers on the tasks trained before the last
    stage (where forgetting shows), the % that are another task's label, another label of the task, or none."""
    final = rows[-1] if rows else None
    if final is None:
        return None
    tasks = [t for t in seen_before_last if t in final]
    wrong = sum(final[t]["wrong"] for t in tasks)
    share = lambda k: round(100.0 * sum(final[t][k] for t in tasks) / wrong, 2) if wrong else None  # noqa: E731
    return {"tasks": tasks, "wrong": wrong, "other_task_label_pct": share("other_task_label"),
            "same_task_label_pct": share("same_task_label"), "no_label_pct": share("no_label"),
            "just_trained_pct": share("just_trained")}


def rescore(record: dict, record_path: Path) -> dict[str, list[list[float]]]:
    """{mode: accuracy matrix} recomputed from the run's prediction files; equal to the record's matrices."""
    tasks = record["matrix"]["columns"]
    per_row = [accuracies(lines, tasks) for lines in load_run(record, record_path)]
    return {m: [r[m] for r in per_row] for m in MODES if all(m in r for r in per_row)}
