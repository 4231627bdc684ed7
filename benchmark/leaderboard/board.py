"""The leaderboard as data: verified run records grouped into rows, each compared with a baseline strategy.

Runs are grouped by configuration (model x stream x strategy x every setting but the seed): quality as mean,
sample standard deviation and a 95 % Student-t interval over seeds, a paired comparison with a baseline
strategy on the same seeds, and cost beside it. The board is a pure function of the records (no timestamps,
stable order), so the same records give the same pages (columns.py says what the pages show of it).

A record that cannot be trusted (unreadable, non-finite numbers, a metric missing, no cost, prediction files
that are not the ones it names) is listed under "problems" with its reason and changes nothing else; a second
record of the same configuration and seed is listed under "duplicates" and never counts as another seed.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from benchmark.config import DEFAULT_STRATEGY
from benchmark.errors import ClbenchError
from benchmark.leaderboard import claims as claims_mod
from benchmark.records import stats, verify
from benchmark.records.metrics import PAIRED, QUALITY, all_metrics, missing_cells
from benchmark.records.schema import SCORE_MODES
from benchmark.records.store import (BOOKKEEPING, LATER_DEFAULTS, RecordError, canonical_json, load_record,
                                     load_records, nonfinite_path, parent_of, record_identity, upgrade)

MODES = SCORE_MODES
_NONE = object()
DEFAULT_MODE = "generate"
DEFAULT_BASELINE = DEFAULT_STRATEGY
# the anatomy of the final evaluation's errors on the tasks trained before the last stage (generation only):
# keys of the record's anatomy.summary, averaged over seeds like the quality metrics
ANATOMY = ("other_task_label_pct", "no_label_pct")
COST = ("wall_s", "answer_tokens_per_s", "peak_memory_mb", "trainable_params")
# the keys records.config_hash leaves out never change results, so they never set rows apart; a paired
# comparison needs everything equal except the strategy itself and its objective version
NOT_COMPARED = BOOKKEEPING + ("strategy", "strategy_versions")
TASK_IDENTITY = "task identity at test"  # how a row whose evaluation knew each example's task is labelled
VALIDATION = "scored on validation"  # a row of eval.split=val (tuning), a configuration apart from test rows


class LeaderboardError(ClbenchError, ValueError):
    """The leaderboard cannot be written (e.g. no valid record); the message names the folder."""


def other_mode(mode: str) -> str:
    return next(m for m in MODES if m != mode)


# ---------------------------------------------------------------- reading records


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _names_defect(rec: dict) -> str | None:
    for part in ("model", "stream", "strategy"):
        if not isinstance(rec[part], dict) or not isinstance(rec[part].get("name"), str):
            return f"{part}.name is missing"
    skipped = rec["stream"].get("skipped") or []
    if not isinstance(skipped, list) or not all(isinstance(t, str) for t in skipped):
        return "stream.skipped is not a list"
    if not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool):
        return f"seed {rec['seed']!r} is not an integer"
    if not isinstance(rec["config"], dict):
        return "config is not a mapping"
    return None


def _matrix_defect(rec: dict) -> str | None:
    matrix = rec["matrix"]
    R = matrix["values"]
    if not R[0]:
        return "accuracy matrix has no columns"
    if not all(_is_number(v) or v is None for row in R for v in row):
        return "accuracy matrix holds a value that is not a number"
    if missing_cells(R):  # cells the evaluation schedule did not score
        if (rec.get("evaluation") or {}).get("schedule") in (None, "full"):
            return "accuracy matrix has cells that were not evaluated, yet its evaluation schedule is full"
        if any(v is None for v in R[0] + R[-1]):
            return "accuracy matrix lacks a cell of the zero-shot or final row, which every schedule evaluates"
    if len(matrix.get("rows", ())) != len(R) or len(matrix.get("columns", ())) != len(R[0]):
        return "accuracy matrix rows/columns do not match its values"
    return None


def _expected_metrics(rec: dict) -> list[str]:
    """The quality metrics this record must carry: those its matrix defines, the perplexity change when the run
    measured general perplexity (a run with eval.general_passages=0 legitimately has none), and the lm-eval change
    when it ran lm-eval tasks."""
    defined = all_metrics(rec["matrix"]["values"])
    keys = [m.key for m in QUALITY if defined.get(m.key) is not None]
    return (keys + (["ppl_rel_change"] if rec["metrics"].get("ppl_before") is not None else [])
            + (["general_change"] if rec.get("general") else []))


def _metrics_defect(rec: dict) -> str | None:
    if not isinstance(rec["metrics"], dict):
        return "metrics is not a mapping"
    for k in _expected_metrics(rec):
        if rec["metrics"].get(k) is None:
            return f"metric {k} is missing or null"
    for m in QUALITY:
        v = rec["metrics"].get(m.key)
        if v is not None and not _is_number(v):
            return f"metric {m.key} is not a number ({v!r})"
    return None


def _cost_defect(rec: dict) -> str | None:
    cost = rec.get("cost")
    if not isinstance(cost, dict):
        return "no cost"
    for k in COST:
        if cost.get(k) is not None and not _is_number(cost[k]):
            return f"cost.{k} is not a number ({cost[k]!r})"
    return None


def _nonfinite_defect(rec: dict) -> str | None:
    # load_record refuses bare NaN/Infinity tokens; a literal such as 1e999 still parses, to infinity
    where = nonfinite_path(rec)
    return f"non-finite number at {where}" if where else None


def _defect(rec: dict) -> str | None:
    """Why a record that load_record accepts still cannot enter the board, or None: the semantic checks the
    schema cannot make (the metrics its matrix defines, finite numbers, names a row can be grouped by)."""
    for check in (_nonfinite_defect, _names_defect, _matrix_defect, _metrics_defect, _cost_defect):
        reason = check(rec)
        if reason:
            return reason
    return None


def read_record(path: Path) -> dict[str, Any]:
    """One record, strictly, read as the current schema (store.upgrade): raises RecordError naming the file and
    the reason it cannot be used, its prediction files included (they must be the bytes it names)."""
    rec = upgrade(load_record(path))
    reason = _defect(rec)
    derived: dict[str, Any] = {}
    if not reason:
        reason, derived = verify.examine(rec, path)
    if reason:
        raise RecordError(f"{path}: {reason}")
    return {**rec, **derived}  # this board's own copy: what the verification derived rides along in memory


def load_valid(runs_dir: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(records, problems) for every *.json under runs_dir but temp files, sorted by name, read strictly."""
    return load_records(runs_dir, reader=read_record)


def modes_of(rec: dict) -> list[str]:
    """The evaluation modes a record (read by read_record, so upgraded) has scores for."""
    return [m for m in MODES if m in rec.get("scores", {})]


def view(rec: dict, mode: str) -> dict | None:
    """The record as seen in one evaluation mode: its matrix, metrics and eval label are that mode's, or None
    when the record has no scores of that mode."""
    if mode not in modes_of(rec):
        return None
    scores = rec["scores"][mode]
    return {**rec, "eval_mode": mode, "matrix": {**rec["matrix"], "values": scores["values"]},
            "metrics": scores["metrics"]}


def _views(valid: list[tuple[Path, dict]], mode: str) -> list[tuple[Path, dict]]:
    return [(p, v) for p, v in ((p, view(r, mode)) for p, r in valid) if v is not None]


def drop_duplicates(recs: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[tuple[Path, Path]]]:
    """Keep one record per (configuration, seed): the earliest by created_utc, then file name.

    Returns the kept records (in their input order) and (duplicate, kept) path pairs.
    """
    def identity(rec: dict) -> tuple:
        return _group_key(rec) + (rec["seed"],)

    first: dict[tuple, Path] = {}
    for path, rec in sorted(recs, key=lambda pr: (str(pr[1].get("created_utc", "")), pr[0].name)):
        first.setdefault(identity(rec), path)
    kept = [(p, r) for p, r in recs if first[identity(r)] == p]
    dups = sorted(((p, first[identity(r)]) for p, r in recs if first[identity(r)] != p), key=lambda d: d[0].name)
    return kept, dups


# ---------------------------------------------------------------- rows


def _stream_label(rec: dict) -> str:
    s = rec["stream"]
    return s["name"] + (f" (without {', '.join(s['skipped'])})" if s.get("skipped") else "")


def _group_key(rec: dict) -> tuple:
    return (rec["model"]["name"], _stream_label(rec), rec["strategy"]["name"], str(rec.get("config_hash", "")),
            str(rec.get("eval_mode", "")))


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else canonical_json(v)
    return out


def _without(config: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in config.items() if k not in keys}


def _inert_removed(config: dict, tasks: list[str]) -> dict:
    """The config without settings that cannot act on the run's stream: per-task epochs of tasks it lacks
    (O-LoRA's long.sh trains MNLI 2 epochs; on a stream without MNLI, olora_long pairs with seq_lora)."""
    trainer = config.get("trainer")
    per_task = trainer.get("epochs_per_task") if isinstance(trainer, dict) else None
    if not isinstance(per_task, dict):
        return config
    trainer = {k: v for k, v in trainer.items() if k != "epochs_per_task"}
    kept = {t: e for t, e in per_task.items() if t in tasks}
    if kept:
        trainer["epochs_per_task"] = kept
    return {**config, "trainer": trainer}


def _without_tuned(config: dict, tuning: Any) -> dict:
    """A tuned run's config without the settings its study chose, plus the study's budget: two strategies tuned
    at the same budget on the same validation data are compared whatever values each study found."""
    if not isinstance(tuning, dict) or not isinstance(tuning.get("space"), dict):
        return config
    config = json.loads(canonical_json(config))
    for key in tuning["space"]:
        node, last = parent_of(config, str(key).split("."))
        if node is not None:
            node.pop(last, None)
    config["tuning_budget"] = {k: tuning.get(k) for k in ("trials", "objective", "val_per_class", "seeds", "sampler")}
    return config


def _comparison_key(rec: dict) -> str:
    config = _inert_removed(record_identity(rec), rec["stream"].get("tasks", []))
    config = _without_tuned(config, rec["config"].get("tuning"))
    return canonical_json([rec["model"]["name"], _stream_label(rec), str(rec.get("eval_mode", "")),
                           _without(config, NOT_COMPARED)])


def _tuned_text(rec: dict) -> str | None:
    """'tuned: 8 trials on val' for a run whose values came from a clbench-tune study."""
    tuning = rec["config"].get("tuning")
    if not isinstance(tuning, dict) or not tuning:
        return None
    objective = str(tuning.get("objective", ""))
    return f"tuned: {tuning.get('trials', '?')} trials on val" + (f" ({objective})" if objective else "")


def _chat_text(rec: dict) -> str:
    applied = (rec.get("prompt_format") or {}).get("applied")
    return "n/a" if applied is None else ("on" if applied else "off")


def _anatomy_rows(rec: dict) -> list | None:
    return (rec.get("anatomy") or {}).get("rows") if rec.get("eval_mode") == "generate" else None


def _anatomy_summary(rec: dict) -> dict:
    return ((rec.get("anatomy") or {}).get("summary") or {}) if rec.get("eval_mode") == "generate" else {}


def _run(path: Path, rec: dict) -> dict[str, Any]:
    return {"file": path.name, "seed": rec["seed"], "matrix": rec["matrix"], "anatomy": _anatomy_rows(rec),
            "metrics": {m.key: rec["metrics"].get(m.key) for m in QUALITY},
            # the final AA's 95 % bootstrap interval over this run's test examples (verified records only)
            "aa_test_ci": (rec.get(verify.TEST_CI) or {}).get(rec.get("eval_mode"))}


def _summaries(runs: list[tuple[Path, dict]]) -> dict[str, Any]:
    """Per quality metric mean, sd, 95 % interval and count over seeds; per anatomy key mean and sd; per cost
    key the mean (row[k], row[k + "_sd"], row[k + "_ci"], row[k + "_n"])."""
    out: dict[str, Any] = {}
    for m in QUALITY:
        values = [r["metrics"][m.key] for _, r in runs if r["metrics"].get(m.key) is not None]
        out[m.key], out[m.key + "_sd"] = stats.mean_sd(values)
        out[m.key + "_ci"], out[m.key + "_n"] = stats.t_interval(values), len(values)
    cis = [(r.get(verify.TEST_CI) or {}).get(r.get("eval_mode")) for _, r in runs]
    widths = [(ci[1] - ci[0]) / 2 for ci in cis if ci is not None]
    out["aa_test_halfwidth"] = statistics.fmean(widths) if widths else None
    out["aa_test_n"] = len(widths)
    for k in ANATOMY:
        values = [v for v in (_anatomy_summary(r).get(k) for _, r in runs) if v is not None]
        out[k], out[k + "_sd"] = stats.mean_sd(values) if values else (None, None)
    for k in COST:
        out[k], _ = stats.mean_sd([r["cost"][k] for _, r in runs if r["cost"].get(k) is not None])
    return out


def _row(key: tuple, runs: list[tuple[Path, dict]]) -> dict[str, Any]:
    model, stream, strategy, chash, mode = key
    runs = sorted(runs, key=lambda pr: (pr[1]["seed"], pr[0].name))
    first = runs[0][1]
    return {"model": model, "stream": stream, "strategy": strategy, "config": chash, "eval": mode,
            "seeds": [r["seed"] for _, r in runs], "n": len(runs), "chat": _chat_text(first),
            "task_identity": bool(first["strategy"].get("task_identity")),
            "tuned": _tuned_text(first),
            # seeds whose records carry no prediction files: checked for consistency, not re-scored
            "unverified": sum(not verify.is_verifiable(r) for _, r in runs),
            "runs": [_run(p, r) for p, r in runs],
            "flat_config": _flatten(record_identity(first)),
            "match": _comparison_key(first), **_summaries(runs)}


def group_runs(recs: list[tuple[Path, dict]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for path, rec in recs:
        groups.setdefault(_group_key(rec), []).append((path, rec))
    rows = [_row(key, runs) for key, runs in groups.items()]
    rows.sort(key=lambda r: (r["stream"], r["model"], -(r["aa"] if r["aa"] is not None else -1e9), r["strategy"], r["config"]))
    add_settings(rows)
    return rows


def add_settings(rows: list[dict]) -> None:
    """Name, per row, the flattened config keys on which the rows of its stream, model and strategy differ."""
    buckets: dict[tuple, list[dict]] = {}
    for r in rows:
        buckets.setdefault((r["stream"], r["model"], r["strategy"]), []).append(r)
    for bucket in buckets.values():
        keys = sorted({k for r in bucket for k in r["flat_config"]})
        varying = [k for k in keys if len({r["flat_config"].get(k, "(absent)") for r in bucket}) > 1]
        # a mapping that is empty in one row and filled in another differs by its entries, named one by one
        leaves = [k for k in varying if not any(v.startswith(k + ".") for v in varying)]
        for r in bucket:
            settings = [TASK_IDENTITY] if r["task_identity"] else []
            if r["flat_config"].get("eval.split") == "val":  # never pooled with test rows: another configuration
                settings.append(VALIDATION)
            if r["tuned"]:
                settings.append(r["tuned"])
            if any(k.startswith("general.") for k in leaves):
                settings.append(_general_label(r["flat_config"]))
            settings += dict.fromkeys(_setting(r["flat_config"], k) for k in leaves if not k.startswith("general"))
            r["setting_items"] = settings  # one by one: a claim picks its rows by them (claims.py)
            r["settings"] = ", ".join(settings)


def _general_label(flat: dict[str, str]) -> str:
    """The row's lm-eval tasks in a few words ('general: none' without them)."""
    tasks = json.loads(flat.get("general.tasks", "[]"))
    if not tasks:
        return "general: none"
    per = flat.get("general.per_subject", "?")
    return (f"general: {', '.join(tasks)} ({'all' if per == '0' else per + '/subject'} questions, "
            f"rows {flat.get('general.rows', '?')}, {flat.get('general.num_fewshot', '?')}-shot)")


def _setting(flat: dict[str, str], key: str) -> str:
    """`key=value`; for a key the row lacks, its outermost ancestor under which the row has nothing (with the
    row's own value there, `{}` or absent), so that an empty mapping reads as one setting, not one per entry."""
    if key in flat:
        return f"{key}={flat[key]}"
    top = key
    while "." in top:
        up = top.rsplit(".", 1)[0]
        if any(k.startswith(up + ".") for k in flat):
            break
        top = up
    if top in flat:
        return f"{top}={flat[top]}"
    # a key added to the configuration later is left out of the identity at its default: show that default
    later = LATER_DEFAULTS.get(tuple(top.split(".")), _NONE)
    if later is _NONE:
        return f"{top}=(absent)"
    return f"{top}={later if isinstance(later, str) else canonical_json(later)}"  # as _flatten writes values


# ---------------------------------------------------------------- paired comparison with the baseline


def _verdict(result: dict) -> str:
    if result["p"] is None:
        return "n/a"
    return "significant" if result["p"] < stats.ALPHA else "not significant"


def _paired(row: dict, base: dict, key: str) -> dict[str, Any]:
    result = stats.paired_by_seed(stats.metric_by_seed(row["runs"], key), stats.metric_by_seed(base["runs"], key))
    return {**result, "verdict": _verdict(result)}


def _no_pairing(verdict: str) -> dict[str, Any]:
    return {"n": 0, "diff": None, "ci": None, "p": None, "sd": None, "detectable": None, "seeds_needed": None,
            "seeds": [], "verdict": verdict}


def compare_with_baseline(rows: list[dict], baseline: str = DEFAULT_BASELINE) -> None:
    """Set row["vs_baseline"]: per PAIRED metric, row minus the `baseline` strategy's row of identical settings,
    over the seeds both ran (mean difference, 95 % t-interval, two-sided paired t-test p, verdict)."""
    bases: dict[str, list[dict]] = {}
    for r in rows:
        if r["strategy"] == baseline:
            bases.setdefault(r["match"], []).append(r)
    for r in rows:
        found = bases.get(r["match"], [])
        info: dict[str, Any] = {"baseline": baseline, "against": None, "note": ""}
        if r["strategy"] == baseline:
            info["metrics"] = {k: _no_pairing("baseline") for k in PAIRED}
        elif len(found) == 1 and found[0]["task_identity"] != r["task_identity"]:
            # a method told each example's task at test is not compared with one that is not, silently or at all
            info["note"] = f"{TASK_IDENTITY} in one of the two rows: not paired with {baseline}"
            info["metrics"] = {k: _no_pairing("not comparable") for k in PAIRED}
        elif len(found) == 1:
            info["against"] = found[0]["config"]
            info["metrics"] = {k: _paired(r, found[0], k) for k in PAIRED}
        else:
            info["note"] = (f"no {baseline} run with these settings" if not found else
                            f"{len(found)} {baseline} configs share these settings ({', '.join(b['config'] for b in found)})")
            info["metrics"] = {k: _no_pairing("no baseline" if not found else "n/a") for k in PAIRED}
        r["vs_baseline"] = info


# ---------------------------------------------------------------- the board


def _records_href(runs_dir: Path, out_dir: Path) -> str:
    try:
        rel = os.path.relpath(runs_dir.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows: no relative link exists
        rel = runs_dir.resolve().as_posix()
    return Path(rel).as_posix().rstrip("/") + "/"


def build_board(runs_dir: Path, out_dir: Path, baseline: str = DEFAULT_BASELINE, mode: str = DEFAULT_MODE,
                fallback: bool = True, claims: list[dict] | None = None,
                loaded: tuple[list[tuple[Path, dict]], list[str]] | None = None) -> dict[str, Any]:
    """Everything the three pages show, as plain data: rows (scored in `mode`), problems, duplicates, baseline,
    source, and the verdicts on `claims` (claims.py). With `fallback`, a folder whose records hold no score of
    `mode` is shown in the other mode, and the board says so. `loaded` is load_valid(runs_dir) when the caller
    has read it already (one reading serves both modes' boards)."""
    if mode not in MODES:
        raise LeaderboardError(f"mode must be one of {'|'.join(MODES)}, got {mode!r}")
    valid, problems = load_valid(runs_dir) if loaded is None else loaded
    short = lambda text: text.replace(str(runs_dir.parent) + os.sep, "")  # noqa: E731
    recs, note = _views(valid, mode), ""
    if not recs and valid and fallback:
        recs, note, mode = _views(valid, other_mode(mode)), f"no record holds {mode} scores", other_mode(mode)
    kept, dups = drop_duplicates(recs)
    rows = group_runs(kept)
    compare_with_baseline(rows, baseline)
    return {"rows": rows, "problems": [short(p) for p in problems], "baseline": baseline, "n_records": len(kept),
            "mode": mode, "mode_note": note, "claims": claims_mod.judge(claims, rows) if claims else [],
            "duplicates": [(short(str(d)), short(str(k))) for d, k in dups],
            "source": runs_dir.name if runs_dir.parent == out_dir else str(runs_dir),
            "records_href": _records_href(runs_dir, out_dir),
            "unverified": sum(r["unverified"] for r in rows),
            "unavailable": sorted({k for _, r in kept for k in ((r.get("evaluation") or {}).get("unavailable") or {})})}
