"""What the leaderboard's tables say, stated once: the columns and the sentences around them.

Each Column names its header, its cell text (the Markdown and HTML tables), the value the HTML page sorts it by
and the fields it adds to the CSV. markdown.py, html.py and csv_table.py all iterate COLUMNS, as
lm-evaluation-harness's make_table hands one header list and one value matrix to each of its writers: a column
added, moved or reworded here changes every page alike.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from benchmark.leaderboard.board import ANATOMY, COST
from benchmark.records.metrics import METRICS, PAIRED, QUALITY, Metric
from benchmark.records.stats import MAX_SEEDS
from benchmark.records.store import BOOKKEEPING

Row = dict[str, Any]  # a row of board.group_runs
Fields = Callable[[Row], dict[str, Any]]


def _no_fields(row: Row) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Column:
    header: str  # "{baseline}" stands for the baseline strategy's name
    text: Callable[[Row], str]  # the cell, in Markdown and (escaped) in HTML
    sort_value: Callable[[Row], Any]  # what the HTML page sorts the column by (None: empty)
    # the CSV lists every column's `csv` fields, then every column's `csv_detail` (settings, intervals), then
    # every column's `csv_paired` (the comparisons with the baseline), each pass in column order
    csv: Fields = _no_fields
    csv_detail: Fields = _no_fields
    csv_paired: Fields = _no_fields
    is_text: bool = False  # left-aligned on the HTML page
    html: Callable[[Row, int], Markup] | None = None  # an HTML cell richer than `text`, given the row's index

    def title(self, baseline: str) -> str:
        return self.header.format(baseline=baseline)


# ---------------------------------------------------------------- how a number reads


def _mean_sd(v: float | None, sd: float | None, scale: float = 1.0) -> str:
    if v is None:
        return "–"
    return f"{v * scale:.2f}" + (f" ± {sd * scale:.2f}" if sd is not None else "")


def quality_text(row: Row, m: Metric) -> str:
    """Mean ± sd, then the 95 % interval of the mean: "60.00 ± 7.07 [-3.53, 123.53]" (fractions in %)."""
    k = m.key
    text = _mean_sd(row[k], row[k + "_sd"], m.scale)
    if row[k] is None:
        return text
    ci = row[k + "_ci"]
    if ci is None:
        return f"{text} [n/a ({row[k + '_n']} seed)]"
    return f"{text} [{m.scale * ci[0]:.2f}, {m.scale * ci[1]:.2f}]"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def vs_baseline_text(row: Row, key: str = PAIRED[0]) -> str:
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
    return f"{res['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}], {_p_text(res['p'])}, {res['verdict']} vs {base}"


def power_text(row: Row, key: str = PAIRED[0]) -> str:
    """What the paired comparison can detect: "±6.21 with 3 seeds; +3.12 needs 12 seeds" (80 % power, two-sided
    0.05, at the observed spread of the paired differences)."""
    info = row["vs_baseline"]
    res = info["metrics"][key]
    if res["verdict"] == "baseline":
        return "baseline"
    if res.get("detectable") is None:
        return "n/a (fewer than 2 paired seeds)" if not info["note"] else "n/a"
    need = res.get("seeds_needed")
    needs = (f"{res['diff']:+.2f} needs {need} seeds" if need is not None else
             "no difference to size" if not res["diff"] else f"{res['diff']:+.2f} needs more than {MAX_SEEDS} seeds")
    return f"±{res['detectable']:.2f} with {res['n']} seeds; {needs}"


def _whole(v: float) -> str:
    return f"{round(v):,}"


def _one_decimal(v: float) -> str:
    return f"{v:.1f}"


def config_text(row: Row) -> str:
    return row["config"] + (f" ({row['settings']})" if row["settings"] else "")


def seeds_text(row: Row) -> str:
    unverified = row.get("unverified", 0)
    mark = "" if not unverified else ", unverified" if unverified == row["n"] else f", {unverified} unverified"
    return f"{row['n']} ({', '.join(map(str, row['seeds']))}){mark}"


# ---------------------------------------------------------------- the columns


def _name_column(header: str, key: str) -> Column:
    return Column(header, text=lambda r: str(r[key]), sort_value=lambda r: r[key], csv=lambda r: {key: r[key]},
                  is_text=True)


def _config_html(row: Row, i: int) -> Markup:
    # the hash links to the row's runs below the table; the settings that set the row apart go under it
    settings = Markup("<br><small>{}</small>").format(row["settings"]) if row["settings"] else Markup()
    return Markup('<a href="#runs-{}">{}</a>{}').format(i, row["config"], settings)


CONFIG = Column("Config", text=config_text, sort_value=lambda r: r["config"], csv=lambda r: {"config": r["config"]},
                csv_detail=lambda r: {"settings": r["settings"]}, is_text=True, html=_config_html)
SEEDS = Column("Seeds", text=seeds_text, sort_value=lambda r: r["n"],
               csv=lambda r: {"n": r["n"], "seeds": " ".join(map(str, r["seeds"])), "unverified": r["unverified"]})


def test_ci_text(row: Row) -> str:
    """The mean half-width of the runs' bootstrap intervals of AA over their test examples."""
    if row.get("aa_test_halfwidth") is None:
        return "n/a (unverified)" if row.get("unverified") else "n/a"
    return f"±{row['aa_test_halfwidth']:.2f} ({row['aa_test_n']} seed{'s' if row['aa_test_n'] != 1 else ''})"


TEST_CI = Column("AA ± test examples", text=test_ci_text, sort_value=lambda r: r.get("aa_test_halfwidth"),
                 csv=lambda r: {"aa_test_ci_halfwidth": r.get("aa_test_halfwidth")})


def _quality_column(m: Metric) -> Column:
    k = m.key
    return Column(m.label, text=lambda r: quality_text(r, m), sort_value=lambda r: r[k],
                  csv=lambda r: {k: r[k], k + "_sd": r[k + "_sd"]},
                  csv_detail=lambda r: dict(zip((k + "_ci_low", k + "_ci_high"), r[k + "_ci"] or (None, None))))


def _paired_fields(row: Row) -> dict[str, Any]:
    """The comparison of every PAIRED metric, though the tables show the first only."""
    info = row["vs_baseline"]
    fields = {"baseline": info["baseline"], "baseline_config": info["against"]}
    for k in PAIRED:
        res, col = info["metrics"][k], f"{k}_vs_baseline"
        fields.update({col: res["diff"], col + "_n": res["n"], col + "_p": res["p"]})
        fields.update(zip((col + "_ci_low", col + "_ci_high"), res["ci"] or (None, None)))
        fields[col + "_verdict"] = res["verdict"]
        fields[col + "_detectable"] = res.get("detectable")  # at 80 % power with the paired seeds
        fields[col + "_seeds_needed"] = res.get("seeds_needed")  # for the observed difference at 80 % power
    return fields


def _vs_baseline_column(m: Metric) -> Column:
    return Column(f"{m.label} vs {{baseline}}", text=lambda r: vs_baseline_text(r, m.key),
                  sort_value=lambda r: r["vs_baseline"]["metrics"][m.key]["diff"], csv_paired=_paired_fields)


def _quality_columns() -> list[Column]:
    """Each quality metric; the comparison with the baseline right after the metric it compares."""
    out = []
    for m in QUALITY:
        out.append(_quality_column(m))
        if m.key == PAIRED[0]:
            out.append(TEST_CI)
            out.append(_vs_baseline_column(m))
            out.append(Column(f"{m.label} vs {{baseline}}: power", text=lambda r, k=m.key: power_text(r, k),
                              sort_value=lambda r, k=m.key: r["vs_baseline"]["metrics"][k].get("detectable")))
    return out


ANATOMY_LABELS = {"other_task_label_pct": "Errors = other task's label %", "no_label_pct": "Errors = no label %"}


def _anatomy_column(k: str) -> Column:
    return Column(ANATOMY_LABELS[k], text=lambda r: _mean_sd(r[k], r[k + "_sd"]), sort_value=lambda r: r[k],
                  csv=lambda r: {k: r[k], k + "_sd": r[k + "_sd"]})


# counts read as whole numbers with thousands separators, rates with one decimal
COST_FORMATS: dict[str, tuple[str, Callable[[float], str]]] = {
    "wall_s": ("Wall s", _whole), "answer_tokens_per_s": ("Tok/s", _one_decimal),
    "peak_memory_mb": ("Peak MB", _whole), "trainable_params": ("Trainable", _whole)}


def _cost_column(k: str) -> Column:
    label, fmt = COST_FORMATS[k]
    return Column(label, text=lambda r: "–" if r[k] is None else fmt(r[k]), sort_value=lambda r: r[k],
                  csv=lambda r: {k: r[k]})


COLUMNS: list[Column] = (
    [_name_column("Stream", "stream"), _name_column("Model", "model"), _name_column("Strategy", "strategy"), CONFIG,
     _name_column("Eval", "eval"), _name_column("Chat template", "chat"), SEEDS]
    + _quality_columns() + [_anatomy_column(k) for k in ANATOMY] + [_cost_column(k) for k in COST])


# ---------------------------------------------------------------- the words around the tables


UNVERIFIED = ("Unverified: seeds whose records were written before runs kept their per-example predictions. Their "
              "metrics are checked against their matrices and their types against the record schema, but their "
              "matrices cannot be re-scored from prediction files as every other record's are.")


def explanation(baseline: str, unavailable: list[str] | None = None, unverified: int = 0) -> list[str]:
    """How every number on the page is computed; shared by the Markdown and HTML pages. `unavailable`: the
    metrics some records leave null because their evaluation schedule did not score the cells they read."""
    return [
        "Quality cells: mean ± sample standard deviation over seeds, then in brackets the 95 % confidence interval "
        "of the mean, mean ± t(0.975, n−1) · sd / √n (Student t over the n seeds; \"n/a (1 seed)\" with one seed). "
        "Accuracy in %, macro over tasks; BWT, FWT and forgetting in points; general perplexity change in %; "
        "general (lm-eval) change in points: the mean over the run's lm-eval tasks (MMLU) of its score after the last "
        "stage minus its score before training, on the same questions, re-scored from its per-sample logs. "
        "FWT is against the zero-shot row.",
        f"AA vs {baseline}: the row's AA minus the AA of the {baseline} row with the same stream, model, eval mode and "
        f"configuration except `strategy` and the bookkeeping keys ({', '.join(BOOKKEEPING)}), paired by seed over "
        "the seeds both ran: mean difference, its 95 % t-interval, two-sided paired t-test p. \"significant\" means "
        "p < 0.05 (per comparison, not corrected for the number of rows); with fewer than 2 paired seeds the test is "
        "n/a. The CSV carries the same comparison for BWT, FWT and forgetting.",
        "AA ± test examples: per run, the 95 % percentile bootstrap interval of its final AA over its own test "
        "examples (1000 resamples, stratified by task, seeded), its half-width averaged over the seeds: how much of "
        "the seed spread the size of the test sets alone explains. Records without prediction files have none.",
        f"Power: the smallest difference the paired t-test over the row's paired seeds detects with 80 % power "
        f"(two-sided 0.05) at the observed sd of the paired differences, then how many seeds the observed difference "
        f"would need for 80 % power (noncentral t, benchmark/records/stats.py). A small test set shows up here as a "
        f"wide detectable difference. The seeds needed follow from the observed difference and spread, themselves "
        f"rough with few seeds: a guide to the next run, not a forecast.",
        "Config: the configuration hash, followed by the settings that set the row apart from the other rows of its "
        "stream, model and strategy. Chat template: whether prompts were wrapped in the tokenizer's chat template "
        "(data.chat_template). Cost: means over seeds.",
        "Errors = other task's label / no label: of the wrong generations after the last stage on the tasks trained "
        "before it, the % that are a label of another task of the stream (the answer format was overwritten) or no "
        "label at all (empty, malformed, over-long); the rest are another label of the task itself. Mean ± sd over "
        "seeds; generation-scored rows only.",
    ] + ([UNVERIFIED] if unverified else []) + ([f"Not computed in some runs: {', '.join(METRICS[k].label for k in unavailable)}. Those runs scored only "
          "the cells their evaluation schedule needs (eval.schedule papers or every_k: each task after its stage, "
          "the cell before it, the zero-shot and final rows), and these metrics read other cells; a cell shows the "
          "mean over the seeds that define it, \"–\" where none does."] if unavailable else [])


MODE_NAMES = {"generate": "generation (greedy, exact match: the papers' mode)",
              "loglik": "label log-likelihood (the most probable label)"}


def mode_title(board: dict[str, Any]) -> str:
    return f"Scored by {MODE_NAMES[board['mode']]}" + (f" ({board['mode_note']})" if board.get("mode_note") else "")


def duplicate_lines(duplicates: list[tuple[str, str]]) -> list[str]:
    return [f"{dup} (same configuration and seed as {kept}, which is kept)" for dup, kept in duplicates]

