"""Published claims as data (issue 17, item 2): the leaderboard judges each claim from the runs' numbers, with the
verdict computed from intervals and paired tests, never typed."""
import pytest

from benchmark import leaderboard
from benchmark.leaderboard import claims
from tests.conftest import write_raw
from tests.test_leaderboard_stats import BASE, BETTER, NOISE, _record


def _runs(tmp_path):
    runs = tmp_path / "runs"
    for i, s in enumerate(range(1, 6)):
        write_raw(runs, _record("seq_lora", s, BASE[i]))
        write_raw(runs, _record("better", s, BASE[i] + BETTER[i]))
        write_raw(runs, _record("noisy", s, BASE[i] + NOISE[i]))
    write_raw(runs, _record("lonely", 1, 40.0))
    return runs


def _verdicts(md: str) -> dict[str, str]:
    """Each claim's verdict cell in LEADERBOARD.md's claims table."""
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ")[3] for line in md.splitlines()
            if line.startswith("| ") and line.count(" | ") == 3 and not line.startswith("| claim")}


CLAIMS = """
- {claim: better beats the baseline, paper: "+10", metric: aa, strategy: better, than: seq_lora, better: higher}
- {claim: the baseline beats better, paper: "-10", metric: aa, strategy: seq_lora, than: better, better: higher, why: small model}
- {claim: noisy beats the baseline, metric: aa, strategy: noisy, than: seq_lora, better: higher}
- {claim: better stays above 55, metric: aa, strategy: better, above: 55}
- {claim: better stays below 55, metric: aa, strategy: better, below: 55}
- {claim: the baseline stays below 52, metric: aa, strategy: seq_lora, below: 52}
- {claim: one seed is not enough, metric: aa, strategy: lonely, above: 10}
- {claim: a strategy that never ran, metric: bwt, strategy: absent, below: -20}
"""


def test_each_verdict_follows_from_the_intervals_and_the_paired_test(tmp_path):
    runs = _runs(tmp_path)
    (tmp_path / "claims.yaml").write_text(CLAIMS)
    leaderboard.regenerate(runs, tmp_path)  # claims.yaml beside the records folder is read by default
    md = (tmp_path / "LEADERBOARD.md").read_text()
    verdicts = _verdicts(md)
    assert verdicts["better beats the baseline"].startswith("holds: significant in the claimed direction")
    assert verdicts["the baseline beats better"].startswith("does not hold: significant in the opposite direction. small model")
    assert verdicts["noisy beats the baseline"].startswith("inconclusive: the difference is not significant")
    assert verdicts["better stays above 55"].startswith("holds: the interval lies above 55")
    assert verdicts["better stays below 55"].startswith("does not hold: the interval lies above 55")
    assert verdicts["the baseline stays below 52"].startswith("inconclusive: the interval contains 52")
    assert verdicts["one seed is not enough"].startswith("inconclusive: fewer than two seeds")
    assert verdicts["a strategy that never ran"].startswith("not judged: no records of")
    # clbench's number comes with its spread: the mean difference of better over seq_lora is exactly mean(BETTER)
    line = next(l for l in md.splitlines() if l.startswith("| better beats the baseline"))
    assert f"difference +{sum(BETTER) / 5:.2f}, 95 % CI [" in line and "(5 paired seeds)" in line
    assert "at 80 % power with 5 seeds" in line  # what these seeds can detect, and what the difference would need
    assert "Claims" in (tmp_path / "leaderboard.html").read_text()


def test_without_a_claims_file_the_leaderboard_has_no_claims_section(tmp_path):
    leaderboard.regenerate(_runs(tmp_path), tmp_path)
    assert "## Claims" not in (tmp_path / "LEADERBOARD.md").read_text()


@pytest.mark.parametrize("text, message", [
    ("- {claim: x, metric: aa, strategy: s}", "'x' needs exactly one of below, above, than"),
    ("- {claim: x, metric: accuracy, strategy: s, below: 1}", "metric must be one of aa, bwt"),
    ("- {claim: x, metric: aa, strategy: s, than: t}", "a comparison needs better: higher or lower"),
    ("- {claim: x, metric: aa, strategy: s, below: high}", "below must be a finite number"),
    ("- {claim: x, metric: aa, below: 1}", "'x' lacks strategy"),
    ("- {claim: x, metric: aa, strategy: s, below: 1, verdict: holds}", "unknown key 'verdict'"),
    ("claim: x", "must hold a list of claims"),
    ("- [unclosed", "could not be read"),
])
def test_a_malformed_claims_file_fails_in_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(claims.ClaimsError, match=message) as e:
        claims.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_per_task_epochs_of_tasks_outside_the_stream_do_not_prevent_pairing(tmp_path):
    """olora_long carries MNLI's 2 epochs; on a stream without MNLI it is compared with seq_lora all the same."""
    runs = tmp_path / "runs"
    for i, s in enumerate(range(1, 4)):
        base = _record("seq_lora", s, BASE[i])
        base["config"]["trainer"] = {"lr": 0.001}
        write_raw(runs, base)
        rec = _record("olora", s, BASE[i] + BETTER[i])
        rec["config"]["trainer"] = {"lr": 0.001, "epochs_per_task": {"MNLI": 2}}
        write_raw(runs, rec)
        inert_and_not = _record("migu", s, BASE[i] + BETTER[i])
        inert_and_not["config"]["trainer"] = {"lr": 0.001, "epochs_per_task": {"MNLI": 2, "a": 3}}  # a: in the stream
        write_raw(runs, inert_and_not)
    out = leaderboard.regenerate(runs, tmp_path)
    verdict = {r["strategy"]: r["vs_baseline"]["metrics"]["aa"]["verdict"] for r in out["rows"]}
    assert verdict["olora"] == "significant"
    assert verdict["migu"] == "no baseline"  # 3 epochs on a task of the stream do change the run


def test_a_comparison_shows_both_means_over_the_paired_seeds_only(tmp_path):
    """A seed only one side ran moves neither mean: the two means shown differ by exactly the paired difference."""
    runs = tmp_path / "runs"
    for i, s in enumerate(range(1, 4)):
        write_raw(runs, _record("seq_lora", s, BASE[i]))
        write_raw(runs, _record("better", s, BASE[i] + BETTER[i]))
    write_raw(runs, _record("better", 4, 0.0))  # unpaired: the baseline has no seed 4
    (tmp_path / "claims.yaml").write_text(CLAIMS.splitlines()[1])
    leaderboard.regenerate(runs, tmp_path)
    line = next(l for l in (tmp_path / "LEADERBOARD.md").read_text().splitlines() if l.startswith("| better beats"))
    mean_a, mean_b = sum(BASE[:3]) / 3 + sum(BETTER[:3]) / 3, sum(BASE[:3]) / 3
    assert f"better {mean_a:.2f} vs seq_lora {mean_b:.2f}: difference +{mean_a - mean_b:.2f}" in line
    assert "(3 paired seeds)" in line


def test_a_claim_is_judged_on_the_pair_alike_in_task_identity(tmp_path):
    """A strategy with a task-agnostic row and a task-identity row (progprompt and progprompt_task_id): the claim
    against a task-agnostic baseline is judged on the task-agnostic row; with only the other, it is not judged."""
    from tests.test_leaderboard_stats import _record as record

    def with_identity(rec):
        return {**rec, "strategy": {**rec["strategy"], "task_identity": True}}

    runs = tmp_path / "runs"
    for i, s in enumerate(range(1, 6)):
        write_raw(runs, record("seq_lora", s, BASE[i]))
        write_raw(runs, record("better", s, BASE[i] + BETTER[i]))
        write_raw(runs, with_identity(record("better", s, BASE[i] - BETTER[i], lora_r=16)))
        write_raw(runs, with_identity(record("oracle", s, BASE[i] + BETTER[i])))
    (tmp_path / "claims.yaml").write_text(
        "- {claim: better beats the baseline, metric: aa, strategy: better, than: seq_lora, better: higher}\n"
        "- {claim: oracle beats the baseline, metric: aa, strategy: oracle, than: seq_lora, better: higher}\n")
    leaderboard.regenerate(runs, tmp_path)
    md = (tmp_path / "LEADERBOARD.md").read_text()
    verdict = _verdicts(md)
    assert verdict["better beats the baseline"].startswith("holds: significant in the claimed direction")
    assert verdict["oracle beats the baseline"].startswith("not judged: one of the two used task identity")


def test_settings_pick_the_rows_a_claim_is_judged_on(tmp_path):
    """Two tuning budgets of the same two strategies on one board: without `settings` a claim cannot tell which
    rows it means (inconclusive); with them, each budget's claim is judged on its own rows, in opposite ways."""
    from benchmark.records import store
    from tests.conftest import older
    from tests.test_records_leaderboard import _rec

    def record(strategy, seed, aa, trials):
        tuning = {"trials": trials, "objective": "aa on val", "val_per_class": 8, "seeds": [1], "sampler": "TPE seed 0",
                  "space": {"trainer.lr": {}}}
        lr = 1e-4 * trials * (2 if strategy == "seq_lora" else 1)  # each study found its own value
        config = {"seed": seed, "trainer": {"lr": lr}, "strategy": {"name": strategy}, "tuning": tuning}
        chash = store.config_hash(config, content={})
        rec = _rec(strategy, seed, aa_last=(aa - 5.0, aa + 5.0), chash=chash, run_id=f"{strategy}-{chash}-s{seed}")
        return older({**rec, "config": config, "strategy": {"name": strategy, "config": config["strategy"]}})

    runs = tmp_path / "runs"
    for i, s in enumerate(range(1, 6)):
        write_raw(runs, record("seq_lora", s, BASE[i], 3))
        write_raw(runs, record("better", s, BASE[i] + BETTER[i], 3))  # 3 trials: better wins
        write_raw(runs, record("seq_lora", s, BASE[i] + BETTER[i], 20))
        write_raw(runs, record("better", s, BASE[i], 20))  # 20 trials: the baseline wins
    (tmp_path / "claims.yaml").write_text(
        "- {claim: any budget, metric: aa, strategy: better, than: seq_lora, better: higher}\n"
        "- {claim: any budget above 55, metric: aa, strategy: better, above: 55}\n"
        "- {claim: at 3 trials, metric: aa, strategy: better, than: seq_lora, better: higher,"
        " settings: 'tuned: 3 trials on val (aa on val)'}\n"
        "- {claim: at 20 trials, metric: aa, strategy: better, than: seq_lora, better: higher,"
        " settings: ['tuned: 20 trials on val (aa on val)']}\n"
        "- {claim: above 55 at 3 trials, metric: aa, strategy: better, above: 55,"
        " settings: 'tuned: 3 trials on val (aa on val)'}\n"
        "- {claim: at 7 trials, metric: aa, strategy: better, above: 55, settings: 'tuned: 7 trials on val'}\n"
        # a setting of the claimed strategy's row alone: its partner is the baseline's row of the same budget
        "- {claim: at lr 0.002, metric: aa, strategy: better, than: seq_lora, better: higher,"
        " settings: 'trainer.lr=0.002'}\n")
    leaderboard.regenerate(runs, tmp_path)
    md = (tmp_path / "LEADERBOARD.md").read_text()
    verdict = _verdicts(md)
    assert verdict["any budget"].startswith("inconclusive: several pairs of configurations")
    assert verdict["any budget above 55"].startswith("inconclusive: several configurations of the strategy")
    assert verdict["at 3 trials"].startswith("holds: significant in the claimed direction")
    assert verdict["at 20 trials"].startswith("does not hold: significant in the opposite direction")
    assert verdict["above 55 at 3 trials"].startswith("holds: the interval lies above 55")
    assert verdict["at 7 trials"].startswith("not judged: no row of better has the settings 'tuned: 7 trials on val'")
    assert '"tuned: 20 trials on val (aa on val)"; "trainer.lr=0.002"' in verdict["at 7 trials"]  # what it has
    assert verdict["at lr 0.002"].startswith("does not hold: significant in the opposite direction")


def test_settings_of_a_claim_must_be_text_and_any_unknown_key_is_named(tmp_path):
    path = tmp_path / "claims.yaml"
    for bad in ("[3]", "''", "['']", "[]", "{a: b}", "null"):
        path.write_text(f"- {{claim: x, metric: aa, strategy: s, below: 1, settings: {bad}}}")
        with pytest.raises(claims.ClaimsError, match="'x': settings must be a non-empty text or a list of them"):
            claims.load(path)
    path.write_text("- {claim: x, metric: aa, strategy: s, below: 1, 3: y, foo: z}")  # keys of mixed types
    with pytest.raises(claims.ClaimsError, match="unknown key"):
        claims.load(path)
