"""Issue 12: both scores in one pass, generation as the papers run it, chat templates, per-example predictions that
re-score to the record, the anatomy of errors and split provenance."""
import gzip
import shutil

import pytest
import torch

from benchmark import leaderboard
from benchmark.records import predictions, verify
from benchmark.modeling.data import Encoder, collate_train, use_chat_template
from benchmark.errors import ClbenchError
from benchmark.config import EvalConfig
from benchmark.modeling.scoring import generate_predictions, loglik_scores, score_examples
from benchmark.modeling.model import byte_tokenizer, tiny_model
from task_streams import DataConfig, load_task

CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def _decode(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------ one pass, both scores


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_pass_gives_the_same_answers_as_separate_generation_and_ranking(attn):
    model, tok = tiny_model(seed=3)
    model.set_attn_implementation(attn)
    model.eval()
    enc = Encoder(tok, 400)
    task = load_task("dbpedia", DataConfig(train_per_class=1, test_per_class=1))
    ex = enc.encode(task, task.test)
    answers = [enc.answer(l) for l in task.labels]
    both = score_examples(model, ex, answers, tok.pad_token_id, tok.eos_token_id,
                          EvalConfig(batch_size=4, max_new_tokens=6), "cpu", _decode(tok))
    gen_only = score_examples(model, ex, answers, tok.pad_token_id, tok.eos_token_id,
                              EvalConfig(mode="generate", batch_size=4, max_new_tokens=6), "cpu", _decode(tok))
    ll_only = score_examples(model, ex, answers, tok.pad_token_id, tok.eos_token_id,
                             EvalConfig(mode="loglik", batch_size=4), "cpu", _decode(tok))
    hf = generate_predictions(model, ex, tok.pad_token_id, tok.eos_token_id, 4, "cpu", 6, _decode(tok))
    ranked = loglik_scores(model, ex, answers, tok.pad_token_id, 4, "cpu").argmax(-1).tolist()
    assert [r.generation for r in both] == [r.generation for r in gen_only] == hf
    assert [r.choice for r in both] == [r.choice for r in ll_only] == ranked
    assert all(r.generation is None for r in ll_only) and all(r.choice is None for r in gen_only)
    for r in both:  # the margin is the lead over the runner-up label
        assert r.margin >= 0


def _overfit(task_name="CB", steps=150):
    torch.manual_seed(0)
    model, tok = tiny_model(seed=0)
    enc = Encoder(tok, 320)
    task = load_task(task_name, DataConfig(train_per_class=2, test_per_class=2))
    items = enc.encode(task, task.train)
    batch = collate_train(items, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, enc, task, items


def test_generation_stops_each_row_at_eos_and_counts_rows_that_hit_the_limit():
    model, tok, enc, task, items = _overfit()
    answers = [enc.answer(l) for l in task.labels]
    assert EvalConfig().max_new_tokens == 50  # the papers' limit is the default
    res = score_examples(model, items, answers, tok.pad_token_id, tok.eos_token_id, EvalConfig(batch_size=4), "cpu",
                         _decode(tok))
    for r, it in zip(res, items):  # a learned answer ends with EOS: its length, not the limit
        assert r.generation.strip() == task.labels[it.label] and r.gen_tokens == len(it.answer) - 1 and not r.hit_limit
    fresh, _ = tiny_model(seed=5)
    fresh.eval()
    res = score_examples(fresh, items, answers, tok.pad_token_id, tok.eos_token_id,
                         EvalConfig(batch_size=4, max_new_tokens=9), "cpu", _decode(tok))
    assert any(r.hit_limit and r.gen_tokens == 9 for r in res)


# ------------------------------------------------------------------ chat templates


def test_chat_template_wraps_the_prompt_as_the_user_turn_and_the_answer_as_the_assistant_turn():
    tok = byte_tokenizer()
    assert use_chat_template("auto", tok, "t") is False and use_chat_template("off", tok, "t") is False
    with pytest.raises(ClbenchError, match="data.chat_template=on but the tokenizer of model 't' has no chat template"):
        use_chat_template("on", tok, "t")
    tok.chat_template = CHATML
    assert use_chat_template("auto", tok, "t") is True and use_chat_template("off", tok, "t") is False
    task = load_task("agnews", DataConfig(train_per_class=1, test_per_class=1))
    ex = task.test[0]
    plain, chat = Encoder(tok, 2000), Encoder(tok, 2000, chat=True)
    assert tok.decode(plain.prompt(ex)) == ex.prompt and tok.decode(plain.answer("World")) == " World</s>"
    assert tok.decode(chat.prompt(ex)) == f"<s>user\n{ex.prompt}</s>\n<s>assistant\n"
    assert tok.decode(chat.answer("World")) == "World</s>"  # the turn ends with the tokenizer's eos
    # the template's tokens count in the prompt budget: only the sentence is cut
    short = Encoder(tok, 120, chat=True).prompt(ex)
    assert len(short) <= max(120, len(chat.turn[0]) + len(chat.ids(ex.head)) + len(chat.ids(ex.tail)) + len(chat.turn[1]) + 8)
    assert tok.decode(short).endswith("Answer:</s>\n<s>assistant\n")


# ------------------------------------------------------------------ a tiny run: record, files, re-scoring
# (the two_task_run fixture is in conftest.py, shared with the record-schema tests)


def _copy_run(path, rec, dest):
    """A record and its predictions folder in a runs folder of their own."""
    runs = dest / "runs"
    runs.mkdir()
    shutil.copy(path, runs / path.name)
    shutil.copytree(path.parent / rec["predictions"]["folder"], runs / rec["predictions"]["folder"])
    return runs


def test_record_holds_both_matrices_predictions_anatomy_and_split_hashes(two_task_run):
    path, rec = two_task_run
    assert set(rec["scores"]) == {"generate", "loglik"} and rec["primary_mode"] == "generate"
    assert rec["matrix"]["values"] == rec["scores"]["generate"]["values"]
    assert rec["metrics"] == rec["scores"]["generate"]["metrics"]
    n_rows = len(rec["matrix"]["values"])
    assert [f["row"] for f in rec["predictions"]["files"]] == list(range(n_rows))
    assert verify.problem(rec, path) is None
    assert len(rec["anatomy"]["rows"]) == n_rows == len(rec["generation"]["rows"])
    assert rec["anatomy"]["summary"]["tasks"] == ["dbpedia"]  # trained before the last stage
    assert rec["prompt_format"] == {"chat_template": "auto", "applied": False}
    for task in ("dbpedia", "agnews"):
        for split in ("train", "test"):
            assert len(rec["stream"]["splits"][task][split]["ids_sha256"]) == 64
    lines = predictions.read(path.parent / rec["predictions"]["folder"] / "row-1.jsonl.gz")
    assert {l["task"] for l in lines} == {"dbpedia", "agnews"} and all("#" in l["id"] for l in lines)
    assert all(l["row"] == 1 and l["after"] == "dbpedia" for l in lines)


def test_rescoring_the_predictions_gives_the_record_matrices_exactly(two_task_run):
    path, rec = two_task_run
    assert predictions.rescore(rec, path) == {m: s["values"] for m, s in rec["scores"].items()}
    # the files decide: a changed answer changes the re-scored matrix
    lines = predictions.load_run(rec, path)[0]
    first = lines[0]
    first["generation"] = first["gold"] if first["generation"] != first["gold"] else "zzz"
    row = predictions.accuracies(lines, rec["matrix"]["columns"])["generate"]
    assert row != rec["scores"]["generate"]["values"][0]


def test_the_leaderboard_rejects_a_record_whose_predictions_changed(two_task_run, tmp_path):
    path, rec = two_task_run
    runs = _copy_run(path, rec, tmp_path)
    assert leaderboard.build_board(runs, tmp_path)["n_records"] == 1
    f = runs / rec["predictions"]["folder"] / "row-1.jsonl.gz"
    with gzip.open(f, "at") as g:
        g.write("{}\n")
    board = leaderboard.build_board(runs, tmp_path)
    assert board["n_records"] == 0 and "row-1.jsonl.gz does not match the sha256 in the record" in board["problems"][0]
    f.unlink()
    assert "row-1.jsonl.gz is missing" in leaderboard.build_board(runs, tmp_path)["problems"][0]


def test_prediction_files_are_byte_identical_for_identical_predictions(tmp_path):
    rows = [{"row": 0, "task": "t", "generation": "a", "margin": 0.5}]
    assert predictions.write(tmp_path / "a.jsonl.gz", rows) == predictions.write(tmp_path / "b.jsonl.gz", rows)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert predictions.read(tmp_path / "a.jsonl.gz") == rows


def test_split_hashes_name_the_exact_examples():
    a = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=5)).provenance
    b = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=5)).provenance
    c = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=6)).provenance
    assert a["train"]["ids_sha256"] == b["train"]["ids_sha256"] != c["train"]["ids_sha256"]
    assert a["test"]["ids_sha256"] != c["test"]["ids_sha256"]
    task = load_task("amazon", DataConfig(train_per_class=3, test_per_class=2, seed=5))
    assert len({e.id for e in task.train}) == len(task.train) and task.train[0].id.startswith("SC/amazon/train.json#")


# ------------------------------------------------------------------ anatomy


def _line(task, gold, gen, hit=False):
    return {"task": task, "gold": gold, "generation": gen, "hit_limit": hit}


def test_anatomy_sorts_every_wrong_answer_into_one_kind():
    labels = {"a": ["yes", "no"], "b": ["World", "Sports"], "c": ["positive", "negative"]}
    lines = [_line("a", "yes", "Yes."),  # correct after normalisation
             _line("a", "yes", "no"),  # another label of the task
             _line("a", "no", "World"),  # the label of the task just trained
             _line("a", "no", "positive"),  # another task's label
             _line("a", "yes", ""),  # empty
             _line("a", "yes", "yes yes yes yes", hit=True),  # over-long
             _line("a", "no", "maybe"),  # malformed
             _line("b", "World", "Sports")]
    an = predictions.anatomy(lines, labels, just_trained=["b"])
    a = an["a"]
    assert (a["examples"], a["wrong"]) == (7, 6)
    assert (a["same_task_label"], a["other_task_label"], a["just_trained"], a["no_label"]) == (1, 2, 1, 3)
    assert (a["empty"], a["over_long"], a["malformed"]) == (1, 1, 1)
    assert a["other_tasks"] == {"b": 1, "c": 1}
    assert an["b"]["same_task_label"] == 1 and "c" not in an  # c was not scored in this evaluation
    s = predictions.summarize_anatomy([an], seen_before_last=["a"])
    assert s["wrong"] == 6 and s["other_task_label_pct"] == pytest.approx(100 * 2 / 6, abs=0.01)
    assert s["no_label_pct"] == 50.0 and s["same_task_label_pct"] == pytest.approx(16.67, abs=0.01)
    # no generation, no anatomy
    assert predictions.anatomy([{**lines[0], "generation": None}], labels, []) is None


def test_the_html_page_draws_an_anatomy_bar_per_evaluation(two_task_run, tmp_path):
    path, rec = two_task_run
    runs = _copy_run(path, rec, tmp_path)
    leaderboard.regenerate(runs, tmp_path)
    page = (tmp_path / "leaderboard.html").read_text()
    assert page.count('class="anatomy"') == 1 and 'id="board-loglik"' in page
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "Errors = other task's label %" in md and "Scored by generation" in md
    leaderboard.regenerate(runs, tmp_path, mode="loglik")
    assert "Scored by label log-likelihood" in (tmp_path / "LEADERBOARD.md").read_text()


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-t5"])
def test_scoring_builds_no_autograd_graph(model_name):
    """score_examples runs under inference mode: a misplaced decorator once left evaluation recording every
    activation for backward (peak memory 2.8 -> 5 GB on SmolLM2, same scores)."""
    from benchmark.modeling.model import TINY_BUILDERS

    model, tok = TINY_BUILDERS[model_name][0]({}, 0)
    model.eval()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(torch.is_grad_enabled()))
    enc = Encoder(tok, 64, decoder_start=model.config.decoder_start_token_id if model_name == "tiny-t5" else None)
    task = load_task("CB", DataConfig(train_per_class=1, test_per_class=1))
    ex = enc.encode(task, task.test)
    answers = [enc.answer(label) for label in task.labels]
    score_examples(model, ex, answers, tok.pad_token_id, tok.eos_token_id, EvalConfig(batch_size=4, max_new_tokens=2),
                   "cpu", lambda ids: tok.decode(ids))
    assert seen and not any(seen)
