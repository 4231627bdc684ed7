"""benchmark.records.stats (t distribution, intervals, paired test, bootstrap) and the leaderboard built on it:
uncertainty, paired comparisons with the baseline, readable rows, and records that must not break the board."""
import csv
import io
import json
import math
import re
import statistics

import pytest

from benchmark import leaderboard
from benchmark.leaderboard import board, svg
from benchmark.leaderboard.columns import COLUMNS
from benchmark.records import stats
from benchmark.records import store as records
from tests.conftest import older, write_raw
from tests.test_records_leaderboard import _rec

# ---------------------------------------------------------------- stats


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (29, 2.045)])
def test_t_quantile_matches_published_tables(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)


def test_t_quantile_tends_to_the_normal_quantile():
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


@pytest.mark.parametrize("t", [-7.0, -1.3, 0.0, 0.4, 2.0, 25.0])
def test_t_cdf_matches_closed_forms(t):
    # df 1 is the Cauchy distribution; df 2 and df 3 have elementary CDFs
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    u = t / math.sqrt(3)
    assert stats.t_cdf(t, 3) == pytest.approx(0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi, abs=1e-12)


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    half = stats.t_quantile(0.975, 4) * statistics.stdev(values) / math.sqrt(5)
    low, high = stats.t_interval(values)
    assert (low, high) == pytest.approx((3.0 - half, 3.0 + half))
    assert high - low == pytest.approx(2 * 2.776 * statistics.stdev(values) / math.sqrt(5), rel=1e-3)
    assert stats.t_interval([4.0]) is None


def test_paired_t_test_p_value_against_the_df3_closed_form():
    a, b = [3.0, 5.0, 4.0, 7.0], [2.0, 3.0, 1.0, 4.0]
    diffs = [x - y for x, y in zip(a, b)]
    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / 2)
    u = t / math.sqrt(3)
    p_exact = 2 * (1 - (0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi))
    res = stats.paired_t_test(a, b)
    assert res["n"] == 4 and res["diff"] == pytest.approx(statistics.fmean(diffs))
    assert res["p"] == pytest.approx(p_exact, rel=1e-9)
    assert res["ci"] == pytest.approx(stats.t_interval(diffs))


def test_paired_t_test_edge_cases():
    assert stats.paired_t_test([5.0, 6.0, 7.0], [4.0, 5.0, 6.0])["p"] == 0.0  # a constant gap: no doubt left
    assert stats.paired_t_test([5.0, 6.0], [5.0, 6.0])["p"] == 1.0
    one = stats.paired_t_test([5.0], [3.0])
    assert one["diff"] == 2.0 and one["p"] is None and one["ci"] is None
    with pytest.raises(ValueError):
        stats.paired_t_test([1.0, 2.0], [1.0])


def test_bootstrap_is_seeded_and_stratified_by_task():
    samples = [[1, 0] * 100, [1, 1, 1, 0] * 25]
    a = stats.bootstrap_ci(stats.macro_accuracy, samples, n_resamples=300, seed=3)
    b = stats.bootstrap_ci(stats.macro_accuracy, samples, n_resamples=300, seed=3)
    c = stats.bootstrap_ci(stats.macro_accuracy, samples, n_resamples=300, seed=4)
    assert a == b and a["ci"] != c["ci"]
    assert a["estimate"] == pytest.approx((0.5 + 0.75) / 2)
    assert a["ci"][0] < a["estimate"] < a["ci"][1]
    sizes = set()
    stats.bootstrap_ci(lambda vs: sizes.add(tuple(map(len, vs))) or 0.0, samples, n_resamples=20)
    assert sizes == {(200, 100)}


def test_bootstrap_width_agrees_with_the_binomial_standard_error():
    samples = [[1, 0] * 200]  # p 0.5, n 400: normal-theory 95 % width 2 * 1.96 * 0.025
    lo, hi = stats.bootstrap_ci(stats.macro_accuracy, samples, n_resamples=1000, seed=0)["ci"]
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 400), rel=0.15)
    assert stats.bootstrap_ci(stats.macro_accuracy, [[1] * 30], n_resamples=50)["ci"] == (1.0, 1.0)


# ---------------------------------------------------------------- records for the leaderboard


def _record(strategy="seq_lora", seed=1, aa=50.0, train_per_class=16, created="20260101T000000", lora_r=8):
    """tests.test_records_leaderboard._rec with a config whose hash depends on the settings given."""
    config = {"seed": seed, "results_dir": f"/tmp/{strategy}-{seed}", "leaderboard": False,
              "data": {"train_per_class": train_per_class, "test_per_class": 8},
              "eval": {"mode": "loglik"}, "model": {"name": "tiny-llama"}, "stream": {"name": "demo"},
              "strategy": {"name": strategy, "lora": {"r": lora_r}}}
    chash = records.config_hash(config)
    rec = _rec(strategy, seed, aa_last=(aa - 5.0, aa + 5.0), chash=chash,  # AA = aa exactly
               run_id=f"{created}-{strategy}-{chash}-s{seed}")
    return older({**rec, "created_utc": created, "config": config, "strategy": {"name": strategy, "config": config["strategy"]}})


BASE = [50.0, 53.0, 48.0, 55.0, 51.0]  # seq_lora's AA on seeds 1..5
BETTER = [10.2, 9.9, 10.1, 9.8, 10.3]  # consistent gain with small noise
NOISE = [2.0, -2.0, 2.0, -2.0, 2.0]  # alternating sign


def _board(tmp_path, baseline="seq_lora"):
    runs = tmp_path / "runs"
    for i, s in enumerate(range(1, 6)):
        write_raw(runs, _record("seq_lora", s, BASE[i]))
        write_raw(runs, _record("better", s, BASE[i] + BETTER[i]))
        write_raw(runs, _record("noisy", s, BASE[i] + NOISE[i]))
    return runs, leaderboard.regenerate(runs, tmp_path, baseline=baseline)


def _row(out, strategy):
    return next(r for r in out["rows"] if r["strategy"] == strategy)


def _md_line(tmp_path, strategy):
    return next(l for l in (tmp_path / "LEADERBOARD.md").read_text().splitlines() if f"| {strategy} |" in l)


def _csv_rows(tmp_path):
    return {r["strategy"]: r for r in csv.DictReader(io.StringIO((tmp_path / "leaderboard.csv").read_text()))}


def test_a_real_gain_is_significant_and_noise_is_not(tmp_path):
    _, out = _board(tmp_path)
    better, noisy = _row(out, "better")["vs_baseline"]["metrics"]["aa"], _row(out, "noisy")["vs_baseline"]["metrics"]["aa"]
    assert better["n"] == 5 and better["diff"] == pytest.approx(statistics.fmean(BETTER))
    assert better["p"] < 0.05 and better["verdict"] == "significant"
    assert noisy["diff"] == pytest.approx(statistics.fmean(NOISE))
    assert noisy["p"] > 0.05 and noisy["verdict"] == "not significant"
    assert noisy["ci"][0] < 0 < noisy["ci"][1] and better["ci"][0] > 0
    md_better, md_noisy = _md_line(tmp_path, "better"), _md_line(tmp_path, "noisy")
    assert "significant vs seq_lora" in md_better and "not significant" not in md_better
    assert "not significant vs seq_lora" in md_noisy
    assert f"{statistics.fmean(BETTER):+.2f}" in md_better
    assert "| baseline |" in _md_line(tmp_path, "seq_lora")
    table = _csv_rows(tmp_path)
    assert table["better"]["aa_vs_baseline_verdict"] == "significant"
    assert table["noisy"]["aa_vs_baseline_verdict"] == "not significant"
    assert table["seq_lora"]["aa_vs_baseline_verdict"] == "baseline"
    assert float(table["better"]["aa_vs_baseline_p"]) == pytest.approx(better["p"])
    assert table["better"]["baseline_config"] == _row(out, "seq_lora")["config"]
    page = (tmp_path / "leaderboard.html").read_text()
    assert "significant vs seq_lora" in page and "not significant vs seq_lora" in page


def test_baseline_is_configurable(tmp_path):
    _, out = _board(tmp_path, baseline="better")
    seq = _row(out, "seq_lora")["vs_baseline"]["metrics"]["aa"]
    assert seq["diff"] == pytest.approx(-statistics.fmean(BETTER)) and seq["verdict"] == "significant"
    assert "| baseline |" in _md_line(tmp_path, "better")
    assert "AA vs better" in (tmp_path / "LEADERBOARD.md").read_text()


def test_every_quality_number_has_a_seed_interval(tmp_path):
    _, out = _board(tmp_path)
    seq = _row(out, "seq_lora")
    assert seq["aa_ci"] == pytest.approx(stats.t_interval(BASE))
    for key in ("bwt", "fwt", "forgetting"):
        assert seq[key + "_ci"] is not None
    lo, hi = seq["aa_ci"]
    assert f"{statistics.fmean(BASE):.2f} ± {statistics.stdev(BASE):.2f} [{lo:.2f}, {hi:.2f}]" in _md_line(tmp_path, "seq_lora")
    assert float(_csv_rows(tmp_path)["seq_lora"]["aa_ci_low"]) == pytest.approx(lo)
    page = (tmp_path / "LEADERBOARD.md").read_text()
    assert "t(0.975, n−1)" in page and "paired t-test" in page


def test_one_seed_gives_no_interval_and_no_test(tmp_path):
    runs = tmp_path / "runs"
    write_raw(runs, _record("seq_lora", 1, 50.0))
    write_raw(runs, _record("replay", 1, 70.0))
    out = leaderboard.regenerate(runs, tmp_path)
    assert _row(out, "replay")["aa_ci"] is None and _row(out, "replay")["vs_baseline"]["metrics"]["aa"]["verdict"] == "n/a"
    line = _md_line(tmp_path, "replay")
    assert "70.00 [n/a (1 seed)]" in line and "+20.00, n/a (1 paired seed): not significant vs seq_lora" in line
    assert _csv_rows(tmp_path)["replay"]["aa_vs_baseline_verdict"] == "n/a"


def test_pairing_needs_identical_settings_and_uses_common_seeds(tmp_path):
    runs = tmp_path / "runs"
    for s in (1, 2, 3):
        write_raw(runs, _record("seq_lora", s, 50.0 + s))
    for s in (1, 2, 3, 4, 5):
        write_raw(runs, _record("replay", s, 60.0 + s, lora_r=16))  # differs only inside `strategy`: still paired
    write_raw(runs, _record("olora", 1, 60.0, train_per_class=4))  # different data: nothing to pair with
    out = leaderboard.regenerate(runs, tmp_path)
    replay = _row(out, "replay")["vs_baseline"]["metrics"]["aa"]
    assert replay["seeds"] == [1, 2, 3] and replay["diff"] == pytest.approx(10.0)
    assert _row(out, "olora")["vs_baseline"]["metrics"]["aa"]["verdict"] == "no baseline"
    assert "no seq_lora run with these settings" in _md_line(tmp_path, "olora")


def test_rows_name_the_settings_that_set_them_apart(tmp_path):
    runs = tmp_path / "runs"
    write_raw(runs, _record("seq_lora", 1, 50.0, train_per_class=16))
    write_raw(runs, _record("seq_lora", 1, 40.0, train_per_class=4))
    write_raw(runs, _record("replay", 1, 60.0, train_per_class=4))
    out = leaderboard.regenerate(runs, tmp_path)
    settings = sorted(r["settings"] for r in out["rows"] if r["strategy"] == "seq_lora")
    assert settings == ["data.train_per_class=16", "data.train_per_class=4"]
    assert _row(out, "replay")["settings"] == ""  # alone in its stream/model/strategy: nothing to tell apart
    md = (tmp_path / "LEADERBOARD.md").read_text()
    for r in out["rows"]:
        if r["strategy"] == "seq_lora":
            assert f"| {r['config']} ({r['settings']}) |" in md
    page = (tmp_path / "leaderboard.html").read_text()
    for i, r in enumerate(out["rows"]):
        assert f'<a href="#runs-{i}">{r["config"]}</a>' in page and f'<h3 id="runs-{i}">' in page
    assert 'href="runs/' in page  # each run links to its record file



def test_an_empty_mapping_is_one_setting_not_one_absent_entry_per_key(tmp_path):
    """olora with the default lambdas beside olora_long's per-task ones: the default row reads `...={}` once."""
    runs = tmp_path / "runs"
    per_task = {"agnews": 5.0, "dbpedia": 5.0, "yelp": 0.0}
    for i, (lambdas, epochs) in enumerate((({}, None), (per_task, {"MNLI": 2}))):
        rec = _record("olora", 1, 50.0 + i)
        rec["config"]["strategy"]["lambda1_per_task"] = lambdas
        if epochs is not None:
            rec["config"]["trainer"] = {"epochs_per_task": epochs}
        rec["config_hash"] = records.config_hash(rec["config"])
        write_raw(runs, rec, name=f"olora-{i}.json")
    out = leaderboard.regenerate(runs, tmp_path)
    settings = sorted(r["settings"] for r in out["rows"])
    assert settings == [
        "strategy.lambda1_per_task.agnews=5.0, strategy.lambda1_per_task.dbpedia=5.0, "
        "strategy.lambda1_per_task.yelp=0.0, trainer.epochs_per_task.MNLI=2",
        "strategy.lambda1_per_task={}, trainer=(absent)"]


def test_two_seq_lora_configs_with_the_same_settings_are_ambiguous(tmp_path):
    runs = tmp_path / "runs"
    write_raw(runs, _record("seq_lora", 1, 50.0, lora_r=8))
    write_raw(runs, _record("seq_lora", 1, 52.0, lora_r=16))
    write_raw(runs, _record("replay", 1, 60.0))
    out = leaderboard.regenerate(runs, tmp_path)
    assert "2 seq_lora configs share these settings" in _row(out, "replay")["vs_baseline"]["note"]
    assert "n/a: 2 seq_lora configs" in _md_line(tmp_path, "replay")


def test_browser_test_columns_keep_their_places(tmp_path):
    # tests/test_integration.py clicks th 8 (AA) and reads td 3 (strategy)
    _board(tmp_path)
    page = (tmp_path / "leaderboard.html").read_text()
    heads = re.findall(r"<th>([^<]*)</th>", page)
    assert heads[2] == "Strategy" and heads[7] == "AA"
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", page, re.S).group(1)
    cells = re.findall(r'<td[^>]*data-v="([^"]*)"', first_row)
    assert cells[2] == "better" and float(cells[7]) == pytest.approx(statistics.fmean(BASE) + statistics.fmean(BETTER))


# ---------------------------------------------------------------- records that must not break the board


def _table(tmp_path):
    return [l for l in (tmp_path / "LEADERBOARD.md").read_text().splitlines() if l.startswith("|")]


def _good_pair(runs):
    for s in (1, 2):
        write_raw(runs, _record("seq_lora", s, 50.0 + 5 * s))


def _not_included(tmp_path):
    md = (tmp_path / "LEADERBOARD.md").read_text()
    return md.split("## Records not included", 1)[1].strip().splitlines() if "## Records not included" in md else []


def _nan_aa(rec):
    rec["metrics"]["aa"] = float("nan")


def _null_bwt(rec):
    rec["metrics"]["bwt"] = None


def _missing_forgetting(rec):
    del rec["metrics"]["forgetting"]


def _overflow(rec):
    rec["matrix"]["values"][1][0] = 1e999  # json.dumps writes Infinity


def _no_cost(rec):
    del rec["cost"]


def _string_seed(rec):
    rec["seed"] = "3"


# a reason that the record reader (benchmark/records/store.py load_record) gives may say more after it
@pytest.mark.parametrize("spoil, reason", [
    (_nan_aa, "not a readable JSON run record (NaN is not a JSON number"),
    (_null_bwt, "metric bwt is missing or null"),
    (_missing_forgetting, "metric forgetting is missing or null"),
    (_overflow, "not a readable JSON run record (Infinity is not a JSON number"),
    (_no_cost, "record lacks cost"),
    (_string_seed, "seed '3' is not an integer"),
])
def test_a_bad_record_is_listed_with_its_reason_and_changes_nothing_else(tmp_path, spoil, reason):
    clean, spoilt = tmp_path / "clean", tmp_path / "spoilt"
    _good_pair(clean / "runs")
    _good_pair(spoilt / "runs")
    bad = _record("seq_lora", 3, 90.0)  # same group: had it counted, mean and seed count would move
    spoil(bad)
    write_raw(spoilt / "runs", bad, "bad.json")
    leaderboard.regenerate(clean / "runs", clean)
    out = leaderboard.regenerate(spoilt / "runs", spoilt)
    assert len(out["problems"]) == 1 and out["problems"][0].startswith(f"runs/bad.json: {reason}")
    assert _not_included(spoilt) == [f"- {out['problems'][0]}"]
    assert _table(spoilt) == _table(clean)
    assert (spoilt / "leaderboard.csv").read_bytes() == (clean / "leaderboard.csv").read_bytes()


def test_a_number_too_large_for_a_float_is_refused_naming_its_place(tmp_path):
    """1e999 is valid JSON that parses to infinity (no bare token for the strict reader to refuse)."""
    runs = tmp_path / "runs"
    _good_pair(runs)
    bad = _record("seq_lora", 3, 90.0)
    bad["matrix"]["values"][1][0] = 12345.5
    (runs / "big.json").write_text(json.dumps(bad, sort_keys=True).replace("12345.5", "1e999"), encoding="utf-8")
    out = leaderboard.regenerate(runs, tmp_path)
    assert out["problems"] == ["runs/big.json: non-finite number at matrix.values[1][0]"]
    assert out["rows"][0]["seeds"] == [1, 2]


def test_temp_files_of_the_atomic_writer_are_ignored(tmp_path):
    runs = tmp_path / "runs"
    _good_pair(runs)
    write_raw(runs, _record("seq_lora", 3, 90.0), ".tmp-k2j4x9.json")  # records.write_record's temp name
    write_raw(runs, _record("seq_lora", 4, 90.0), ".tmp-half")  # an older writer's
    (runs / "x.json.tmp").write_text("{", encoding="utf-8")
    out = leaderboard.regenerate(runs, tmp_path)
    assert out["rows"][0]["seeds"] == [1, 2] and out["problems"] == []
    assert ".tmp" not in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_duplicate_config_and_seed_counts_once_and_is_reported(tmp_path):
    runs = tmp_path / "runs"
    _good_pair(runs)
    first = write_raw(runs, _record("seq_lora", 3, 60.0, created="20260102T000000"), "b-first.json")
    later = write_raw(runs, _record("seq_lora", 3, 99.0, created="20260103T000000"), "a-later.json")
    tie = write_raw(runs, _record("seq_lora", 3, 98.0, created="20260102T000000"), "c-tie.json")  # same time: name decides
    out = leaderboard.regenerate(runs, tmp_path)
    row = out["rows"][0]
    assert row["seeds"] == [1, 2, 3] and row["n"] == 3
    assert row["aa"] == pytest.approx(statistics.fmean([55.0, 60.0, 60.0]))
    assert out["duplicates"] == [(f"runs/{later.name}", f"runs/{first.name}"), (f"runs/{tie.name}", f"runs/{first.name}")]
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## Duplicates ignored" in md
    assert f"- runs/{later.name} (same configuration and seed as runs/{first.name}, which is kept)" in md
    assert "duplicate record(s) ignored" in out["summary"]
    assert "Duplicates ignored" in (tmp_path / "leaderboard.html").read_text()


def test_a_folder_without_valid_records_is_refused_and_the_board_kept(tmp_path):
    runs = tmp_path / "runs"
    _good_pair(runs)
    leaderboard.regenerate(runs, tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.html")}
    for p in runs.iterdir():
        p.unlink()
    bad = _record()
    _nan_aa(bad)
    write_raw(runs, bad, "nan.json")
    with pytest.raises(leaderboard.LeaderboardError, match=f"no valid run records in {re.escape(str(runs))}"):
        leaderboard.regenerate(runs, tmp_path)
    (runs / "nan.json").unlink()
    with pytest.raises(ValueError):  # the CLI can catch it as a ValueError too
        leaderboard.regenerate(runs, tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_a_nan_cell_is_never_painted_as_full_accuracy():
    full = svg.heatmap_svg({"rows": ["r"], "columns": ["a"], "values": [[100.0]]})
    full_fill = re.search(r'fill="([^"]+)"', full).group(1)
    for bad in (float("nan"), float("inf"), None):
        picture = svg.heatmap_svg({"rows": ["r"], "columns": ["a"], "values": [[bad]]})
        assert re.search(r'fill="([^"]+)"', picture).group(1) != full_fill
        assert ">n/a</text>" in picture and ">100</text>" not in picture


def test_curves_label_stages_with_task_names():
    matrix = {"rows": ["zero-shot", "dbpedia", "amazon+agnews"], "columns": ["dbpedia", "amazon"],
              "values": [[10.0, 20.0], [80.0, float("nan")], [60.0, 70.0]]}
    picture = svg.curves_svg(matrix)
    for stage in matrix["rows"]:
        assert f">{stage}</text>" in picture
    assert "nan" not in picture.lower()  # the non-finite point is skipped, not drawn


def test_regeneration_with_problems_and_duplicates_is_byte_identical(tmp_path):
    runs = tmp_path / "runs"
    _good_pair(runs)
    write_raw(runs, _record("seq_lora", 2, 70.0, created="20270101T000000"), "dup.json")
    bad = _record("replay", 1, 70.0)
    _nan_aa(bad)
    write_raw(runs, bad, "nan.json")
    leaderboard.regenerate(runs, tmp_path / "a")
    leaderboard.regenerate(runs, tmp_path / "b")
    for name in ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.html"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ---------------------------------------------------------------- the pages


def test_every_record_is_read_once_per_regeneration(tmp_path, monkeypatch):
    """Both modes' boards are views of one reading (each read checks the record's prediction files' hashes)."""
    runs = tmp_path / "runs"
    _good_pair(runs)
    read, real = [], board.read_record
    monkeypatch.setattr(board, "read_record", lambda path: read.append(path.name) or real(path))
    leaderboard.regenerate(runs, tmp_path)
    assert sorted(read) == sorted(p.name for p in runs.glob("*.json"))


def test_markdown_html_and_csv_show_the_same_columns(tmp_path):
    _, out = _board(tmp_path)
    headers = [c.title("seq_lora") for c in COLUMNS]
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "| " + " | ".join(headers) + " |" in md.splitlines()
    page = (tmp_path / "leaderboard.html").read_text()
    board_table = page.split('<table id="board" class="board">', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<th>([^<]*)</th>", board_table.replace("&#39;", "'")) == headers
    assert board_table.count("<tr>") == 1 + len(out["rows"]) and md.count("| demo |") == len(out["rows"])
    fields = [f for c in COLUMNS for f in c.csv(out["rows"][0])]
    assert (tmp_path / "leaderboard.csv").read_text().splitlines()[0].startswith(",".join(fields) + ",")


def test_record_text_is_escaped_and_the_page_is_self_contained(tmp_path):
    runs = tmp_path / "runs"
    write_raw(runs, _record("seq_lora", 1, 50.0))
    write_raw(runs, _record('<img src=x onerror="alert(1)">', 1, 60.0))
    leaderboard.regenerate(runs, tmp_path)
    page = (tmp_path / "leaderboard.html").read_text()
    assert "<img" not in page and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
    assert "src=" not in page.replace("&lt;img src=", "") and "<link" not in page  # nothing loaded from beside it
    assert "border-collapse" in page.split("<style>", 1)[1] and "addEventListener" in page.split("<script>", 1)[1]


# ---------------------------------------------------------------- power (issue 24, part 3)
# computed once with statsmodels 0.14 (TTestPower, two-sided alpha 0.05), whose noncentral t comes from scipy:
#   solve_power(effect_size=None, nobs=n, power=0.8) and solve_power(effect_size=d, nobs=None, power=0.8)
STATSMODELS_DETECTABLE = {3: 3.264043552819638, 5: 1.6819970833232674, 10: 0.9960019107624178}
STATSMODELS_NOBS = {0.5: 33.36713118431779, 1.0: 9.93785094105438, 2.0: 4.22071858501904}


@pytest.mark.parametrize("n", sorted(STATSMODELS_DETECTABLE))
def test_detectable_difference_matches_statsmodels(n):
    assert stats.detectable_difference(2.0, n) == pytest.approx(2.0 * STATSMODELS_DETECTABLE[n], rel=1e-6)


@pytest.mark.parametrize("d", sorted(STATSMODELS_NOBS))
def test_seeds_needed_is_statsmodels_sample_size_rounded_up(d):
    assert stats.seeds_needed(-3.0 * d, 3.0) == math.ceil(STATSMODELS_NOBS[d])


def test_paired_power_matches_statsmodels():
    # TTestPower().power(effect_size=1.0, nobs=5, alpha=0.05, alternative="two-sided")
    assert stats.paired_power(1.0, 5) == pytest.approx(0.4013899173717948, rel=1e-6)


def test_power_edge_cases():
    assert stats.detectable_difference(1.0, 1) is None and stats.seeds_needed(0.0, 1.0) is None
    assert stats.detectable_difference(0.0, 3) == 0.0 and stats.seeds_needed(1.0, 0.0) == 2
    assert stats.seeds_needed(0.01, 100.0) is None  # more than MAX_SEEDS


def test_every_paired_comparison_states_its_power(tmp_path):
    _, out = _board(tmp_path)
    noisy = _row(out, "noisy")["vs_baseline"]["metrics"]["aa"]
    sd = statistics.stdev(NOISE)
    assert noisy["detectable"] == pytest.approx(stats.detectable_difference(sd, len(NOISE)))
    assert noisy["seeds_needed"] == stats.seeds_needed(statistics.fmean(NOISE), sd)
    line = _md_line(tmp_path, "noisy")
    assert f"±{noisy['detectable']:.2f} with {len(NOISE)} seeds" in line
    table = _csv_rows(tmp_path)
    assert float(table["noisy"]["aa_vs_baseline_detectable"]) == pytest.approx(noisy["detectable"])
    assert "power" in (tmp_path / "leaderboard.html").read_text()
