"""The leaderboard, regenerated from immutable run records: Markdown, CSV and a static sortable HTML page.

Runs are grouped by configuration (model x stream x strategy x every setting but the seed): quality as mean,
sample standard deviation and a 95 % Student-t interval over seeds, a paired comparison with a baseline
strategy on the same seeds, and cost beside it. Output is a pure function of the records (no timestamps,
stable order), so the same records give the same bytes.

A record that cannot be trusted (unreadable, non-finite numbers, a metric missing, no cost, a failed run) is
listed under "Records not included" with its reason and changes nothing else; a second record of the same
configuration and seed is listed under "Duplicates ignored" and never counts as another seed.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmark.config import DEFAULT_STRATEGY
from benchmark.leaderboard import claims as claims_mod
from benchmark.records import predictions, stats
from benchmark.errors import ClbenchError
from benchmark.records.metrics import all_metrics
from benchmark.records.store import (BOOKKEEPING, RecordError, canonical_json, identity_config, load_record, load_records,
                               recorded_task_versions)

QUALITY = [("aa", "AA"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "Forgetting"), ("ppl_rel_change", "Gen. ppl change")]
# the anatomy of the final evaluation's errors on the tasks trained before the last stage (generation only)
ANATOMY = [("other_task_label_pct", "Errors = other task's label %"), ("no_label_pct", "Errors = no label %")]
MODES = ("generate", "loglik")
DEFAULT_MODE = "generate"
COST = [("wall_s", "Wall s"), ("answer_tokens_per_s", "Tok/s"), ("peak_memory_mb", "Peak MB"), ("trainable_params", "Trainable")]
# the continual-learning metrics compared against the baseline; the Markdown and HTML tables show the first
PAIRED = ("aa", "bwt", "fwt", "forgetting")
DEFAULT_BASELINE = DEFAULT_STRATEGY
# the keys records.config_hash leaves out: they never change results, so they never set rows apart
# a paired comparison needs everything equal except the strategy itself
NOT_COMPARED = BOOKKEEPING + ("strategy",)
SUCCESS = (None, "ok", "completed")
# where a record with "status": "failed" may say why; the first present is shown
FAILURE_KEYS = ("failure", "reason", "error")


class LeaderboardError(ClbenchError, ValueError):
    """The leaderboard cannot be written (e.g. no valid record); the message names the folder."""


# ---------------------------------------------------------------- reading records


class _BareConstant:
    """Stands in for a bare NaN/Infinity token, so the record is rejected with the field that held it."""

    def __init__(self, token: str):
        self.token = token


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _non_finite(obj: Any, where: str = "") -> str | None:
    """The first field holding NaN or an infinity (a bare token, or a literal like 1e999 that overflows)."""
    if isinstance(obj, _BareConstant):
        return f"non-finite number {obj.token} at {where or 'top level'}"
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"non-finite number {obj} at {where or 'top level'}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def _parse(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_BareConstant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a readable JSON run record ({e})") from None


def _failure(raw: Any) -> str | None:
    if not isinstance(raw, dict) or raw.get("status") != "failed":
        return None
    reason = next((raw[k] for k in FAILURE_KEYS if isinstance(raw.get(k), str) and raw[k]), "no reason recorded")
    return f"run failed: {reason}"


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


def _matrix_defect(matrix: dict) -> str | None:
    R = matrix["values"]
    if not R[0]:
        return "accuracy matrix has no columns"
    if not all(_is_number(v) for row in R for v in row):
        return "accuracy matrix holds a value that is not a number"
    if len(matrix.get("rows", ())) != len(R) or len(matrix.get("columns", ())) != len(R[0]):
        return "accuracy matrix rows/columns do not match its values"
    return None


def _expected_metrics(rec: dict) -> list[str]:
    """The quality metrics this record must carry: those its matrix defines, and the perplexity change when
    the run measured general perplexity (a run with eval.general_passages=0 legitimately has none)."""
    defined = all_metrics(rec["matrix"]["values"])
    keys = [k for k, _ in QUALITY if defined.get(k) is not None]
    return keys + (["ppl_rel_change"] if rec["metrics"].get("ppl_before") is not None else [])


def _metrics_defect(rec: dict) -> str | None:
    if not isinstance(rec["metrics"], dict):
        return "metrics is not a mapping"
    for k in _expected_metrics(rec):
        if rec["metrics"].get(k) is None:
            return f"metric {k} is missing or null"
    for k, _ in QUALITY:
        v = rec["metrics"].get(k)
        if v is not None and not _is_number(v):
            return f"metric {k} is not a number ({v!r})"
    return None


def _cost_defect(rec: dict) -> str | None:
    cost = rec.get("cost")
    if not isinstance(cost, dict):
        return "no cost"
    for k, _ in COST:
        if cost.get(k) is not None and not _is_number(cost[k]):
            return f"cost.{k} is not a number ({cost[k]!r})"
    return None


def _defect(rec: dict) -> str | None:
    """Why a schema-valid record still cannot enter the board, or None."""
    if rec.get("status") not in SUCCESS:
        return f"unknown status {rec.get('status')!r}"
    for check in (_names_defect, lambda r: _matrix_defect(r["matrix"]), _metrics_defect, _cost_defect):
        reason = check(rec)
        if reason:
            return reason
    return None


def read_record(path: Path) -> dict[str, Any]:
    """One record, strictly: raises RecordError naming the file and the reason it cannot be used."""
    raw = _parse(path)
    # a failed run is named as such before anything else, even though it may hold NaN or lack a matrix
    reason = _failure(raw) or _non_finite(raw)
    if reason:
        raise RecordError(f"{path}: {reason}")
    rec = load_record(path)  # schema, required keys, rectangular matrix
    reason = _defect(rec) or predictions.problem(rec, path)
    if reason:
        raise RecordError(f"{path}: {reason}")
    return rec


def load_valid(runs_dir: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(records, problems) for every *.json under runs_dir but temp files, sorted by name, read strictly."""
    return load_records(runs_dir, reader=read_record)


def modes_of(rec: dict) -> list[str]:
    """The evaluation modes a record has scores for (records made before both were kept have one)."""
    if isinstance(rec.get("scores"), dict):
        return [m for m in MODES if m in rec["scores"]]
    return [rec.get("eval_mode", "loglik")]


def view(rec: dict, mode: str) -> dict | None:
    """The record as seen in one evaluation mode: its matrix, metrics and eval label are that mode's, or None
    when the record has no scores of that mode."""
    if mode not in modes_of(rec):
        return None
    if not isinstance(rec.get("scores"), dict):
        return rec
    scores = rec["scores"][mode]
    return {**rec, "eval_mode": mode, "matrix": {**rec["matrix"], "values": scores["values"]},
            "metrics": scores["metrics"]}


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


def _comparison_key(rec: dict) -> str:
    config = _inert_removed(identity_config(rec["config"], recorded_task_versions(rec)), rec["stream"].get("tasks", []))
    return canonical_json([rec["model"]["name"], _stream_label(rec), str(rec.get("eval_mode", "")),
                           _without(config, NOT_COMPARED)])


def _metric_summary(values: list[float]) -> dict[str, Any]:
    mean, sd = stats.mean_sd(values)
    return {"mean": mean, "sd": sd, "ci": stats.t_interval(values), "n": len(values)}


def _row(key: tuple, runs: list[tuple[Path, dict]]) -> dict[str, Any]:
    model, stream, strategy, chash, mode = key
    runs = sorted(runs, key=lambda pr: (pr[1]["seed"], pr[0].name))
    row: dict[str, Any] = {
        "model": model, "stream": stream, "strategy": strategy, "config": chash, "eval": mode,
        "seeds": [r["seed"] for _, r in runs], "n": len(runs),
        "chat": _chat_text(runs[0][1]),
        "runs": [{"file": p.name, "seed": r["seed"], "matrix": r["matrix"], "anatomy": _anatomy_rows(r),
                  "metrics": {k: r["metrics"].get(k) for k, _ in QUALITY}} for p, r in runs],
        "flat_config": _flatten(identity_config(runs[0][1]["config"], recorded_task_versions(runs[0][1]))),
        "match": _comparison_key(runs[0][1]),
    }
    for k, _ in QUALITY:
        s = _metric_summary([r["metrics"][k] for _, r in runs if r["metrics"].get(k) is not None])
        row[k], row[k + "_sd"], row[k + "_ci"], row[k + "_n"] = s["mean"], s["sd"], s["ci"], s["n"]
    for k, _ in ANATOMY:
        values = [v for v in (_anatomy_summary(r).get(k) for _, r in runs) if v is not None]
        row[k], row[k + "_sd"] = stats.mean_sd(values) if values else (None, None)
    for k, _ in COST:
        row[k], _ = stats.mean_sd([r["cost"][k] for _, r in runs if r["cost"].get(k) is not None])
    return row


def _chat_text(rec: dict) -> str:
    applied = (rec.get("prompt_format") or {}).get("applied")
    return "n/a" if applied is None else ("on" if applied else "off")


def _anatomy_rows(rec: dict) -> list | None:
    return (rec.get("anatomy") or {}).get("rows") if rec.get("eval_mode") == "generate" else None


def _anatomy_summary(rec: dict) -> dict:
    return ((rec.get("anatomy") or {}).get("summary") or {}) if rec.get("eval_mode") == "generate" else {}


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
            r["settings"] = ", ".join(dict.fromkeys(_setting(r["flat_config"], k) for k in leaves))


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
    return f"{top}={flat.get(top, '(absent)')}"


# ---------------------------------------------------------------- paired comparison with the baseline


def _verdict(result: dict) -> str:
    if result["p"] is None:
        return "n/a"
    return "significant" if result["p"] < stats.ALPHA else "not significant"


def _paired(row: dict, base: dict, key: str) -> dict[str, Any]:
    result = stats.paired_by_seed(stats.metric_by_seed(row["runs"], key), stats.metric_by_seed(base["runs"], key))
    return {**result, "verdict": _verdict(result)}


def _no_pairing(verdict: str) -> dict[str, Any]:
    return {"n": 0, "diff": None, "ci": None, "p": None, "seeds": [], "verdict": verdict}


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
        elif len(found) == 1:
            info["against"] = found[0]["config"]
            info["metrics"] = {k: _paired(r, found[0], k) for k in PAIRED}
        else:
            info["note"] = (f"no {baseline} run with these settings" if not found else
                            f"{len(found)} {baseline} configs share these settings ({', '.join(b['config'] for b in found)})")
            info["metrics"] = {k: _no_pairing("no baseline" if not found else "n/a") for k in PAIRED}
        r["vs_baseline"] = info


# ---------------------------------------------------------------- formatting


def _fmt(v: float | None, sd: float | None = None, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        v, sd = 100 * v, (None if sd is None else 100 * sd)
    return f"{v:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def _fmt_quality(row: dict, key: str) -> str:
    """Mean ± sd, then the 95 % interval of the mean: "60.00 ± 7.07 [-3.53, 123.53]"."""
    pct = key == "ppl_rel_change"
    text = _fmt(row[key], row[key + "_sd"], pct)
    if row[key] is None:
        return text
    ci = row[key + "_ci"]
    if ci is None:
        return f"{text} [n/a ({row[key + '_n']} seed)]"
    scale = 100 if pct else 1
    return f"{text} [{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]"


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_vs_baseline(row: dict, key: str = "aa") -> str:
    """The paired comparison as one cell: "+10.02 [+9.10, +10.94], p < 0.001, significant vs seq_lora"."""
    info = row["vs_baseline"]
    res, base = info["metrics"][key], info["baseline"]
    if res["verdict"] == "baseline":
        return "baseline"
    if info["note"]:
        return f"n/a: {info['note']}"
    if res["diff"] is None:
        return f"n/a (no paired seeds): not significant vs {base}"
    if res["p"] is None:
        return f"{res['diff']:+.2f}, n/a ({res['n']} paired seed): not significant vs {base}"
    lo, hi = res["ci"]
    return f"{res['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}], {_fmt_p(res['p'])}, {res['verdict']} vs {base}"


def _fmt_cost(key: str, v: float | None) -> str:
    if v is None:
        return "–"
    return f"{int(round(v)):,}" if key in ("trainable_params", "wall_s", "peak_memory_mb") else f"{v:.1f}"


def _config_text(row: dict) -> str:
    return row["config"] + (f" ({row['settings']})" if row["settings"] else "")


def _seeds_text(row: dict) -> str:
    return f"{row['n']} ({', '.join(map(str, row['seeds']))})"


def _headers(baseline: str) -> list[str]:
    quality = [h for _, h in QUALITY]
    return (["Stream", "Model", "Strategy", "Config", "Eval", "Chat template", "Seeds", quality[0], f"AA vs {baseline}"]
            + quality[1:] + [h for _, h in ANATOMY] + [h for _, h in COST])


def _explanation(baseline: str) -> list[str]:
    """How every number on the page is computed; shared by the Markdown and HTML pages."""
    return [
        "Quality cells: mean ± sample standard deviation over seeds, then in brackets the 95 % confidence interval "
        "of the mean, mean ± t(0.975, n−1) · sd / √n (Student t over the n seeds; \"n/a (1 seed)\" with one seed). "
        "Accuracy in %, macro over tasks; BWT, FWT and forgetting in points; general perplexity change in %. "
        "FWT is against the zero-shot row.",
        f"AA vs {baseline}: the row's AA minus the AA of the {baseline} row with the same stream, model, eval mode and "
        f"configuration except `strategy` and the bookkeeping keys ({', '.join(BOOKKEEPING)}), paired by seed over "
        "the seeds both ran: mean difference, its 95 % t-interval, two-sided paired t-test p. \"significant\" means "
        "p < 0.05 (per comparison, not corrected for the number of rows); with fewer than 2 paired seeds the test is "
        "n/a. The CSV carries the same comparison for BWT, FWT and forgetting.",
        "Config: the configuration hash, followed by the settings that set the row apart from the other rows of its "
        "stream, model and strategy. Chat template: whether prompts were wrapped in the tokenizer's chat template "
        "(data.chat_template). Cost: means over seeds.",
        "Errors = other task's label / no label: of the wrong generations after the last stage on the tasks trained "
        "before it, the % that are a label of another task of the stream (the answer format was overwritten) or no "
        "label at all (empty, malformed, over-long); the rest are another label of the task itself. Mean ± sd over "
        "seeds; generation-scored rows only.",
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_row(row: dict) -> list[str]:
    quality = [_fmt_quality(row, k) for k, _ in QUALITY]
    return ([row["stream"], row["model"], row["strategy"], _config_text(row), row["eval"], row["chat"], _seeds_text(row),
             quality[0], fmt_vs_baseline(row)] + quality[1:] + [_fmt(row[k], row[k + "_sd"]) for k, _ in ANATOMY]
            + [_fmt_cost(k, row[k]) for k, _ in COST])


def _duplicate_lines(duplicates: list[tuple[str, str]]) -> list[str]:
    return [f"{dup} (same configuration and seed as {kept}, which is kept)" for dup, kept in duplicates]


def markdown(board: dict[str, Any]) -> str:
    out = ["# Leaderboard", "", f"Generated by `clbench-leaderboard` from the run records in `{board['source']}/`.", ""]
    out += [f"- {line}" for line in _explanation(board["baseline"])] + [""]
    other = next(m for m in MODES if m != board["mode"])
    out += [f"{_mode_title(board)}. `clbench-leaderboard --mode {other}` shows the {other} scores; leaderboard.html "
            "shows both.", ""]
    head = _headers(board["baseline"])
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_md_cell(c) for c in _md_row(r)) + " |" for r in board["rows"]]
    if board.get("claims"):
        out += [""] + claims_mod.markdown_lines(board["claims"])
    if board["duplicates"]:
        out += ["", "## Duplicates ignored", ""] + [f"- {d}" for d in _duplicate_lines(board["duplicates"])]
    if board["problems"]:
        out += ["", "## Records not included", ""] + [f"- {p}" for p in board["problems"]]
    return "\n".join(out) + "\n"


def _csv_fields(row: dict) -> dict[str, Any]:
    fields: dict[str, Any] = {c: row[c] for c in ("stream", "model", "strategy", "config", "eval", "chat", "n")}
    fields["seeds"] = " ".join(map(str, row["seeds"]))
    for k, _ in QUALITY:
        fields[k], fields[k + "_sd"] = row[k], row[k + "_sd"]
    for k, _ in ANATOMY:
        fields[k], fields[k + "_sd"] = row[k], row[k + "_sd"]
    fields.update({k: row[k] for k, _ in COST})
    fields["settings"] = row["settings"]
    for k, _ in QUALITY:
        fields[k + "_ci_low"], fields[k + "_ci_high"] = row[k + "_ci"] or (None, None)
    info = row["vs_baseline"]
    fields["baseline"], fields["baseline_config"] = info["baseline"], info["against"]
    for k in PAIRED:
        res, col = info["metrics"][k], f"{k}_vs_baseline"
        fields[col], fields[col + "_n"], fields[col + "_p"] = res["diff"], res["n"], res["p"]
        fields[col + "_ci_low"], fields[col + "_ci_high"] = res["ci"] or (None, None)
        fields[col + "_verdict"] = res["verdict"]
    return fields


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    records = [_csv_fields(r) for r in rows]
    if records:
        w.writerow(list(records[0]))
    for fields in records:
        w.writerow(["" if v is None else v for v in fields.values()])
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _color(v: Any) -> str:
    # white (0 %) to blue (100 %); a missing or non-finite cell is grey, never a colour on that scale
    if not _finite(v):
        return "#bbb"
    t = max(0.0, min(1.0, v / 100))
    return f"rgb({int(255 - 200 * t)},{int(255 - 140 * t)},255)"


def _cell_label(v: Any) -> str:
    return f"{v:.0f}" if _finite(v) else "n/a"


def heatmap_svg(matrix: dict) -> str:
    """The accuracy matrix as an SVG heatmap: rows = after each stage, columns = tasks."""
    vals, rows, cols = matrix["values"], matrix["rows"], matrix["columns"]
    cw, ch, left, top = 54, 20, 150, 60
    w, h = left + cw * len(cols) + 5, top + ch * len(rows) + 5
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="10" font-family="sans-serif">']
    for j, c in enumerate(cols):
        x = left + j * cw + cw / 2
        parts.append(f'<text x="{x}" y="{top - 6}" text-anchor="start" transform="rotate(-35 {x} {top - 6})">{html.escape(c)}</text>')
    for i, (name, row) in enumerate(zip(rows, vals)):
        y = top + i * ch
        parts.append(f'<text x="{left - 4}" y="{y + 14}" text-anchor="end">{html.escape(name[:24])}</text>')
        for j, v in enumerate(row):
            parts.append(f'<rect x="{left + j * cw}" y="{y}" width="{cw}" height="{ch}" fill="{_color(v)}" stroke="#fff"/>'
                         f'<text x="{left + j * cw + cw / 2}" y="{y + 14}" text-anchor="middle">{_cell_label(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(matrix: dict) -> str:
    """Per-task accuracy across stages, one polyline per task; the x axis names each stage (matrix rows)."""
    vals, cols, stages = matrix["values"], matrix["columns"], matrix["rows"]
    w, plot_h, pad, label_h = 360, 160, 30, 60
    h, n = plot_h + label_h, len(vals)
    xs = [pad + (w - 2 * pad) * (i / max(n - 1, 1)) for i in range(n)]
    y0 = plot_h - pad
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 120}" height="{h}" font-size="10" font-family="sans-serif">',
             f'<line x1="{pad}" y1="{y0}" x2="{w - pad}" y2="{y0}" stroke="#888"/>',
             f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{y0}" stroke="#888"/>',
             f'<text x="{pad - 4}" y="{pad / 2 + 4}" text-anchor="end">100</text><text x="{pad - 4}" y="{y0}" text-anchor="end">0</text>']
    for x, name in zip(xs, stages):
        # slanted down-right from each stage's tick, so long task names neither overlap nor leave the picture
        parts.append(f'<text x="{x:.1f}" y="{y0 + 12}" text-anchor="start" transform="rotate(30 {x:.1f} {y0 + 12})">'
                     f'{html.escape(str(name)[:20])}</text>')
    for j, c in enumerate(cols):
        color = palette[j % len(palette)]
        # a non-finite value has no place on the axis: the line skips it rather than drawing it at 0 or 100
        pts = " ".join(f"{xs[i]:.1f},{y0 - (plot_h - 1.5 * pad) * vals[i][j] / 100:.1f}"
                       for i in range(n) if _finite(vals[i][j]))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{w - pad + 8}" y="{pad / 2 + 12 * j + 4}" fill="{color}">{html.escape(c)}</text>')
    parts.append("</svg>")
    return "".join(parts)


ANATOMY_PARTS = [("correct", "correct", "#4c9a2a"), ("same_task_label", "another label of the task", "#f2c14e"),
                 ("just_trained", "label of the task just trained", "#d62728"),
                 ("other_earlier", "label of another task", "#ff9f40"), ("no_label", "no label", "#999")]


def _anatomy_shares(row: dict) -> dict[str, float]:
    """One evaluation's examples over all tasks, split by ANATOMY_PARTS, as fractions."""
    total = sum(c["examples"] for c in row.values())
    if not total:
        return {}
    part = lambda k: sum(c[k] for c in row.values())  # noqa: E731
    counts = {"correct": total - part("wrong"), "same_task_label": part("same_task_label"),
              "just_trained": part("just_trained"), "other_earlier": part("other_task_label") - part("just_trained"),
              "no_label": part("no_label")}
    return {k: v / total for k, v in counts.items()}


def anatomy_svg(anatomy_rows: list, stage_names: list[str]) -> str:
    """A stacked bar per evaluation: the share of all test examples answered correctly, and of those answered
    wrongly whether the answer was another label of the task, a label of the task just trained, a label of
    another task, or no label (generation scoring)."""
    w_bar, gap, plot_h, left, top = 34, 14, 150, 34, 10
    n = len(anatomy_rows)
    width, height = left + n * (w_bar + gap) + 200, top + plot_h + 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="anatomy" width="{width}" height="{height}" '
             'font-size="10" font-family="sans-serif">',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">100%</text>'
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>']
    for i, (row, name) in enumerate(zip(anatomy_rows, stage_names)):
        x = left + i * (w_bar + gap)
        y = top + plot_h
        for key, label, color in ANATOMY_PARTS:
            h = plot_h * _anatomy_shares(row or {}).get(key, 0.0)
            if h > 0:
                y -= h
                parts.append(f'<rect class="part-{key}" x="{x}" y="{y:.2f}" width="{w_bar}" height="{h:.2f}" '
                             f'fill="{color}"><title>{html.escape(str(name))}: {html.escape(label)}</title></rect>')
        lx, ly = x + w_bar / 2, top + plot_h + 10
        parts.append(f'<text x="{lx}" y="{ly}" text-anchor="start" transform="rotate(30 {lx} {ly})">'
                     f'{html.escape(str(name)[:18])}</text>')
    for j, (_, label, color) in enumerate(ANATOMY_PARTS):
        ly = top + 12 + 14 * j
        lx = left + n * (w_bar + gap) + 10
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_SORT_JS = """
document.querySelectorAll('table.board th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _td(sort_value: Any, inner_html: str, text_cell: bool = False) -> str:
    v = "" if sort_value is None else sort_value
    return f'<td{" class=t" if text_cell else ""} data-v="{html.escape(str(v))}">{inner_html}</td>'


def _html_row(i: int, row: dict) -> str:
    esc = html.escape
    config = f'<a href="#runs-{i}">{esc(row["config"])}</a>'
    config += f'<br><small>{esc(row["settings"])}</small>' if row["settings"] else ""
    cells = [_td(row[k], esc(str(row[k])), True) for k in ("stream", "model", "strategy")]
    cells += [_td(row["config"], config, True), _td(row["eval"], esc(row["eval"]), True),
              _td(row["chat"], esc(row["chat"]), True), _td(row["n"], esc(_seeds_text(row)))]
    quality = [_td(row[k], esc(_fmt_quality(row, k))) for k, _ in QUALITY]
    vs = _td(row["vs_baseline"]["metrics"]["aa"]["diff"], esc(fmt_vs_baseline(row)))
    cells += [quality[0], vs] + quality[1:] + [_td(row[k], esc(_fmt(row[k], row[k + "_sd"]))) for k, _ in ANATOMY]
    cells += [_td(row[k], esc(_fmt_cost(k, row[k]))) for k, _ in COST]
    return f"<tr>{''.join(cells)}</tr>"


def _html_runs(i: int, row: dict, records_href: str) -> list[str]:
    esc = html.escape
    title = " · ".join(esc(row[k]) for k in ("strategy", "stream", "model", "config"))
    out = [f'<h3 id="runs-{i}">{title}</h3>']
    for run in row["runs"]:
        link = f'<a href="{esc(records_href + run["file"])}">{esc(run["file"])}</a>'
        anatomy = ""
        if run.get("anatomy") and all(run["anatomy"]):
            anatomy = ("<p>What the answers were, per evaluation (all tasks of the stream):</p>"
                       + anatomy_svg(run["anatomy"], run["matrix"]["rows"]))
        out.append(f"<details><summary>{esc(row['strategy'])} · {esc(row['stream'])} · seed {run['seed']} · {link}</summary>"
                   f"{heatmap_svg(run['matrix'])}{curves_svg(run['matrix'])}{anatomy}</details>")
    return out


def _html_list(title: str, items: list[str]) -> str:
    return f"<h2>{html.escape(title)}</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _html_table(table_id: str, board: dict[str, Any]) -> list[str]:
    esc = html.escape
    out = [f'<table id="{table_id}" class="board"><thead><tr>'
           + "".join(f"<th>{esc(h)}</th>" for h in _headers(board["baseline"])) + "</tr></thead><tbody>"]
    out += [_html_row(i, r) for i, r in enumerate(board["rows"])]
    out.append("</tbody></table>")
    return out


def html_page(board: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """The board's table (its mode), the runs with their heatmaps, curves and anatomy plots, and, when records
    hold the other mode's scores too, that mode's table."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>clbench leaderboard</title>',
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
           "padding:4px 8px;text-align:right}th{cursor:pointer;background:#f3f3f3}th[data-dir=asc]::after{content:' ▲'}"
           "th[data-dir=desc]::after{content:' ▼'}td.t{text-align:left}details{margin:1em 0}</style></head><body>",
           "<h1>clbench leaderboard</h1>", "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _explanation(board["baseline"]))
           + "<li>Click a column to sort.</li></ul>", f"<h2>{esc(_mode_title(board))}</h2>"]
    out += _html_table("board", board)
    if board.get("claims"):
        out += ["<h2>Claims</h2>", "<table><tr><th>claim</th><th>paper</th><th>clbench</th><th>verdict</th></tr>"]
        out += ["<tr>" + "".join(f'<td class="t">{esc(x)}</td>' for x in (
            j["claim"], j["paper"], j["clbench"], claims_mod.verdict_text(j))) + "</tr>" for j in board["claims"]]
        out.append("</table>")
    if other is not None and other["rows"]:
        out += [f"<h2>{esc(_mode_title(other))}</h2>"] + _html_table("board-" + other["mode"], other)
    out.append("<h2>Runs</h2>")
    for i, r in enumerate(board["rows"]):
        out += _html_runs(i, r, board["records_href"])
    if board["duplicates"]:
        out.append(_html_list("Duplicates ignored", _duplicate_lines(board["duplicates"])))
    if board["problems"]:
        out.append(_html_list("Records not included", board["problems"]))
    out.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(out) + "\n"


def _mode_title(board: dict[str, Any]) -> str:
    name = {"generate": "generation (greedy, exact match: the papers' mode)",
            "loglik": "label log-likelihood (the most probable label)"}[board["mode"]]
    return f"Scored by {name}" + (f" ({board['mode_note']})" if board.get("mode_note") else "")


# ---------------------------------------------------------------- regeneration


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)  # concurrent regenerations never leave a half-written file


def _records_href(runs_dir: Path, out_dir: Path) -> str:
    try:
        rel = os.path.relpath(runs_dir.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows: no relative link exists
        rel = runs_dir.resolve().as_posix()
    return Path(rel).as_posix().rstrip("/") + "/"


def build_board(runs_dir: Path, out_dir: Path, baseline: str = DEFAULT_BASELINE, mode: str = DEFAULT_MODE,
                fallback: bool = True, claims: list[dict] | None = None) -> dict[str, Any]:
    """Everything the three pages show, as plain data: rows (scored in `mode`), problems, duplicates, baseline,
    source, and the verdicts on `claims` (benchmark/claims.py). With `fallback`, a folder whose records hold no
    score of `mode` is shown in the other mode, and the board says so."""
    if mode not in MODES:
        raise LeaderboardError(f"mode must be one of {'|'.join(MODES)}, got {mode!r}")
    short = lambda text: text.replace(str(runs_dir.parent) + os.sep, "")  # noqa: E731
    valid, problems = load_valid(runs_dir)
    note = ""
    recs = [(p, v) for p, v in ((p, view(r, mode)) for p, r in valid) if v is not None]
    if not recs and valid and fallback:
        other = next(m for m in MODES if m != mode)
        recs = [(p, v) for p, v in ((p, view(r, other)) for p, r in valid) if v is not None]
        note, mode = f"no record holds {mode} scores", other
    kept, dups = drop_duplicates(recs)
    rows = group_runs(kept)
    compare_with_baseline(rows, baseline)
    return {"rows": rows, "problems": [short(p) for p in problems], "baseline": baseline, "n_records": len(kept),
            "mode": mode, "mode_note": note, "claims": claims_mod.judge(claims, rows) if claims else [],
            "duplicates": [(short(str(d)), short(str(k))) for d, k in dups],
            "source": runs_dir.name if runs_dir.parent == out_dir else str(runs_dir),
            "records_href": _records_href(runs_dir, out_dir)}


def _summary(board: dict, out_dir: Path) -> str:
    text = (f"leaderboard: {len(board['rows'])} rows from {board['n_records']} records -> {out_dir / 'LEADERBOARD.md'}, "
            "leaderboard.csv, leaderboard.html")
    if board["duplicates"]:
        text += f"\n{len(board['duplicates'])} duplicate record(s) ignored:\n" + "\n".join(
            f"  {d}" for d in _duplicate_lines(board["duplicates"]))
    if board["problems"]:
        text += f"\n{len(board['problems'])} record(s) not included:\n" + "\n".join(f"  {p}" for p in board["problems"])
    return text


def _row_line(board: dict, out_dir: Path, highlight: Path) -> str | None:
    for r in board["rows"]:
        if any(run["file"] == highlight.name for run in r["runs"]):
            return (f"leaderboard row: {r['strategy']} | {r['stream']} | {r['model']} | AA {_fmt_quality(r, 'aa')} | "
                    f"BWT {_fmt_quality(r, 'bwt')} | AA vs {board['baseline']} {fmt_vs_baseline(r)} | {r['n']} seed(s) "
                    f"-> {out_dir / 'LEADERBOARD.md'}")
    return None


def regenerate(runs_dir: Path, out_dir: Path, highlight: Path | None = None,
               baseline: str = DEFAULT_BASELINE, mode: str = DEFAULT_MODE, claims: Path | None = None) -> dict[str, Any]:
    """Rewrite the three leaderboard files; `highlight` (a record path) picks the row echoed in `row_line`,
    `baseline` the strategy every row is compared with, `claims` a claims file (default: claims.yaml beside the
    records folder, when there is one). Raises LeaderboardError, writing nothing, when no record under runs_dir
    is valid, so an existing leaderboard is never replaced by an empty one."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    beside = runs_dir.parent / claims_mod.FILE_NAME
    claim_list = claims_mod.load(claims) if claims else claims_mod.load(beside) if beside.is_file() else None
    board = build_board(runs_dir, out_dir, baseline, mode, claims=claim_list)
    if not board["rows"]:
        raise LeaderboardError(f"no valid run records in {runs_dir} ({len(board['problems'])} not included); "
                               "leaderboard left unchanged")
    _atomic_write(out_dir / "LEADERBOARD.md", markdown(board))
    _atomic_write(out_dir / "leaderboard.csv", csv_text(board["rows"]))
    other = build_board(runs_dir, out_dir, baseline, next(m for m in MODES if m != board["mode"]), fallback=False,
                        claims=claim_list)
    _atomic_write(out_dir / "leaderboard.html", html_page(board, other))
    summary = _summary(board, out_dir)
    row_line = (_row_line(board, out_dir, highlight) if highlight is not None else None) or summary
    return {"rows": board["rows"], "problems": board["problems"], "duplicates": board["duplicates"],
            "summary": summary, "row_line": row_line}
