"""eval.schedule: which cells each evaluation scores, the metrics that stay defined, and what a run costs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.config import EvalConfig
from benchmark.records import predictions
from benchmark.records.metrics import all_metrics
from benchmark.runner import schedule
from tests.conftest import TINY_RUN, compose_cfg, write_raw

FIVE = ["stream.tasks=[dbpedia,amazon,agnews,SST-2,CB]", "data.train_per_class=2", "data.test_per_class=2",
        "trainer.batch_size=4"]
SAME_WHEN_SCHEDULED = ("aa", "bwt", "fwt", "learning_accuracy", "zero_shot_aa")


def test_the_papers_schedule_scores_the_cells_its_metrics_read():
    tasks = [f"t{i}" for i in range(14)]
    stages = [[t] for t in tasks]
    full = schedule.plan(stages, tasks, "full")
    papers = schedule.plan(stages, tasks, "papers")
    assert schedule.cells(full) == 15 * 14 == 210
    # zero-shot and final rows whole, and after stage s the task just trained and the next one: 4T - 2
    assert schedule.cells(papers) == 4 * 14 - 2 == 54
    assert papers[0] == papers[-1] == tasks and papers[3] == ["t2", "t3"]
    every = schedule.plan(stages, tasks, "every_k", every_k=5)
    assert every[5] == every[10] == tasks and every[4] == ["t3", "t4"]
    # MTL's one stage: both rows whole under every schedule
    assert schedule.plan([tasks], tasks, "papers") == [tasks, tasks]


def test_auto_is_full_on_short_streams_and_the_papers_schedule_on_long_ones():
    assert schedule.resolve(EvalConfig(), 3) == "full" and schedule.resolve(EvalConfig(), 14) == "papers"
    assert schedule.resolve(EvalConfig(schedule="full"), 14) == "full"


def test_a_metric_that_reads_an_unscored_cell_is_null_not_computed_from_the_others():
    # the papers' cells of 3 tasks: after stage 1 task 3 was not scored, after stage 2 task 1 was not
    R = [[10.0, 20.0, 30.0], [50.0, 25.0, None], [None, 60.0, 40.0], [40.0, 55.0, 70.0]]
    assert [[v is not None for v in row] for row in R] == [
        [t in r for t in ("a", "b", "c")] for r in schedule.plan([["a"], ["b"], ["c"]], ["a", "b", "c"], "papers")]
    m = all_metrics(R)
    full = all_metrics([[10.0, 20.0, 30.0], [50.0, 25.0, 35.0], [45.0, 60.0, 40.0], [40.0, 55.0, 70.0]])
    assert m["forgetting"] is None and m["avg_incremental_accuracy"] is None
    assert {k: m[k] for k in SAME_WHEN_SCHEDULED} == {k: full[k] for k in SAME_WHEN_SCHEDULED}


def _run(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    from benchmark.runner import recipe

    path = recipe.run(compose_cfg(TINY_RUN + FIVE + [f"results_dir={tmp_path}", *extra]))
    return path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def full_and_papers(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("full"), "eval.schedule=full"), \
        _run(tmp_path_factory.mktemp("papers"), "eval.schedule=papers")


def test_the_same_run_under_full_and_papers_gives_the_same_metrics_and_final_predictions(full_and_papers):
    (full_path, full), (papers_path, papers) = full_and_papers
    for mode in full["scores"]:
        a, b = full["scores"][mode]["metrics"], papers["scores"][mode]["metrics"]
        assert {k: a[k] for k in SAME_WHEN_SCHEDULED} == {k: b[k] for k in SAME_WHEN_SCHEDULED}, mode
        assert full["scores"][mode]["values"][-1] == papers["scores"][mode]["values"][-1]
    # evaluation draws nothing from the training random state: the same losses, the same final answers
    assert [s["mean_loss"] for s in full["stages"]] == [s["mean_loss"] for s in papers["stages"]]
    final = lambda rec, path: predictions.load_run(rec, path)[-1]  # noqa: E731
    assert final(full, full_path) == final(papers, papers_path)
    assert full["config_hash"] == papers["config_hash"]  # one configuration: the schedule is not its identity


def test_the_papers_record_nulls_what_it_did_not_score_and_says_why(full_and_papers):
    (_, full), (papers_path, papers) = full_and_papers
    tasks = papers["matrix"]["columns"]
    expected = schedule.plan([[t] for t in tasks], tasks, "papers")
    R = papers["matrix"]["values"]
    assert [[t for t, v in zip(tasks, row) if v is not None] for row in R] == expected
    assert papers["metrics"]["forgetting"] is None and full["metrics"]["forgetting"] is not None
    ev = papers["evaluation"]
    assert ev["schedule"] == "papers" and ev["cells"] == 4 * 5 - 2 and ev["full_cells"] == 30
    assert set(ev["unavailable"]) == {"forgetting", "avg_incremental_accuracy"}
    assert full["evaluation"]["unavailable"] == {} and full["evaluation"]["cells"] == 30
    assert [r["cells"] for r in ev["rows"]] == [len(r) for r in expected]
    assert sum(r["prompts"] for r in ev["rows"]) < sum(r["prompts"] for r in full["evaluation"]["rows"])
    assert ev["eval_s"] > 0 and ev["estimate_s"] > 0 and papers["cost"]["train_s"] > 0
    # the prediction files hold exactly the scored cells and re-score to the record, nulls included
    assert predictions.rescore(papers, papers_path) == {m: s["values"] for m, s in papers["scores"].items()}


def test_rows_that_differ_only_by_schedule_pool_on_the_metrics_both_define(full_and_papers, tmp_path):
    from benchmark import leaderboard

    runs = tmp_path / "runs"
    for (path, rec), seed in zip(full_and_papers, (1, 2)):
        rec = json.loads(json.dumps(rec)) | {"seed": seed, "run_id": f"{rec['run_id']}-{seed}"}
        rec["config"]["seed"] = seed
        folder = runs / f"{rec['run_id']}.predictions"
        shutil.copytree(path.parent / rec["predictions"]["folder"], folder)
        rec["predictions"]["folder"] = folder.name
        write_raw(runs, rec)
    board = leaderboard.build_board(runs, tmp_path)
    assert board["problems"] == [] and len(board["rows"]) == 1
    row = board["rows"][0]
    assert row["aa_n"] == 2 and row["forgetting_n"] == 1
    assert board["unavailable"] == ["avg_incremental_accuracy", "forgetting"]
    leaderboard.regenerate(runs, tmp_path)
    assert "Not computed in some runs: Avg. incremental accuracy, Forgetting. " in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_dry_run_prints_the_plan_without_loading_the_model(tmp_path, monkeypatch, capsys):
    from benchmark.runner import recipe

    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("a dry run loaded the model"))
    cfg = compose_cfg(TINY_RUN + FIVE + [f"results_dir={tmp_path}", "eval.schedule=papers", "dry_run=true"])
    assert recipe.run(cfg) is None
    out = capsys.readouterr().out
    assert "5 stages, eval.schedule papers -> papers" in out
    assert "18 of 30 cells" in out and not (tmp_path / "runs").exists()


def test_token_bounded_batches_cover_every_prompt_within_the_budget():
    from benchmark.modeling.data import token_bounded_batches

    lengths = [5, 40, 12, 12, 3, 90, 7, 30]
    batches = token_bounded_batches(lengths, max_tokens=64, extra=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:  # longest first: each batch's padded size is its first row's length times its rows
        assert lengths[b[0]] == max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * (lengths[b[0]] + 4) <= 64
    assert [5] in batches  # the row longer than the budget runs alone
    assert len(token_bounded_batches([4] * 32, max_tokens=64)) == 2  # short prompts fill a batch by tokens


def test_a_run_with_token_bounded_evaluation_batches_scores_every_prompt(tmp_path):
    from benchmark.runner import recipe

    rec = json.loads(recipe.run(compose_cfg(TINY_RUN + [f"results_dir={tmp_path}", "eval.batch_tokens=256"])).read_text())
    assert all(v is not None for row in rec["matrix"]["values"] for v in row)
    assert rec["config"]["eval"]["batch_tokens"] == 256
