"""Prompt encoding 2: the prompt tokenised as one string (the papers' collators, lm-evaluation-harness), where
encoding 1 tokenised its pieces apart, so that a boundary such as the options line's trailing " \\n" could become
another token. The encoding is part of the identity; encoding 1 is what every earlier record used."""
from __future__ import annotations

import pytest

from benchmark.errors import ClbenchError
from benchmark.modeling.data import MIN_SENTENCE_TOKENS, Encoder
from benchmark.modeling.model import byte_tokenizer
from benchmark.records import store
from task_streams import DataConfig, Example


def merging_tokenizer():
    """A byte-level tokenizer whose one merge joins a space and a newline (GPT-2's and SmolLM2's tokenizers have
    such merges): the pieces of a prompt then tokenise differently from the whole."""
    return byte_tokenizer(merges=(("Ġ", "Ċ"),))


EX = Example(head="Task: topic\nOption: World, Sports \n", sentence="Rain fell on the city all night long.",
             tail="\nAnswer:", label="World")


def test_encoding_2_is_the_whole_prompt_tokenised_as_one_string():
    tok = merging_tokenizer()
    whole = tuple(tok(EX.prompt, add_special_tokens=False)["input_ids"])
    pieces = tuple(tok(EX.head, add_special_tokens=False)["input_ids"] + tok(EX.sentence, add_special_tokens=False)[
        "input_ids"] + tok(EX.tail, add_special_tokens=False)["input_ids"])
    assert whole != pieces, "the example must cross a boundary that tokenises differently"
    assert Encoder(tok, 400, encoding=2).prompt(EX) == whole
    assert Encoder(tok, 400, encoding=1).prompt(EX) == pieces
    assert tok.decode(Encoder(tok, 400).prompt(EX)) == EX.prompt  # encoding 2 is the default


@pytest.mark.parametrize("limit", [56, 62, 70])
def test_a_long_sentence_is_cut_at_a_token_boundary_and_the_whole_string_tokenised_again(limit):
    tok = merging_tokenizer()
    ids = Encoder(tok, limit, encoding=2).prompt(EX)
    assert len(ids) <= limit
    text = tok.decode(ids)
    assert text.startswith(EX.head) and text.endswith(EX.tail)
    kept = text[len(EX.head):-len(EX.tail)]
    assert EX.sentence.startswith(kept) and len(kept) < len(EX.sentence)
    assert ids == tuple(tok(text, add_special_tokens=False)["input_ids"])  # one string, no seams


def test_the_sentence_keeps_its_minimum_however_long_the_head():
    tok = merging_tokenizer()
    ids = Encoder(tok, 10, encoding=2).prompt(EX)
    kept = tok.decode(ids)[len(EX.head):-len(EX.tail)]
    assert len(tok(kept, add_special_tokens=False)["input_ids"]) == MIN_SENTENCE_TOKENS


def test_an_encoder_input_still_ends_with_eos():
    tok = merging_tokenizer()
    ids = Encoder(tok, 60, decoder_start=tok.pad_token_id, encoding=2).prompt(EX)
    assert ids[-1] == tok.eos_token_id and len(ids) <= 60


def test_the_encoding_is_part_of_the_identity_and_encoding_1_is_every_earlier_record():
    from benchmark.config import compose, config_dict

    now, before = (config_dict(compose(o)) for o in ([], ["data.prompt_encoding=1"]))
    assert now["data"]["prompt_encoding"] == 2
    assert store.config_hash(now) != store.config_hash(before)
    without = {**before, "data": {k: v for k, v in before["data"].items() if k != "prompt_encoding"}}
    assert store.config_hash(before) == store.config_hash(without)  # records made before the key keep their hash


def test_an_unknown_encoding_is_refused_with_its_key():
    with pytest.raises(ClbenchError, match="data.prompt_encoding must be one of 1|2, got 3"):
        DataConfig(prompt_encoding=3)


@pytest.mark.slow
def test_an_lm_eval_task_over_clbenchs_prompts_reproduces_its_label_choices(tmp_path):
    """SmolLM2-135M-Instruct on two of the demo stream's tasks: lm-eval's loglikelihood over clbench's prompt text (its
    chat turn included) and label text (with the end-of-answer token) chooses what clbench's packed scorer chooses,
    on every example. Under encoding 1 this agreed on 138 of 144 agnews and amazon examples."""
    from benchmark.runner import general
    from benchmark.runner.evaluate import evaluate_all
    from benchmark.runner.recipe import build_context
    from tests.conftest import compose_cfg

    cfg = compose_cfg([f"results_dir={tmp_path}", "eval=loglik", "stream.tasks=[amazon,agnews]",
                       "data.test_per_class=6"])
    ctx, strategy, _ = build_context(cfg)
    tok = ctx.tokenizer
    docs, clbench = [], []
    for task in ctx.stream.tasks:
        tests = {task.name: ctx.encoder.encode(task, task.test)}
        lines = evaluate_all(ctx, strategy, tests, 0, "zero-shot", [task.name])
        for enc, line in zip(tests[task.name], lines):
            choices = [tok.decode(ctx.encoder.answer(label)) for label in task.labels]
            docs.append({"prompt": tok.decode(enc.prompt), "choices": choices, "answer": enc.label})
            clbench.append(task.labels.index(line["choice"]))

    def dataset(**_):
        import datasets

        return {"test": datasets.Dataset.from_list(docs)}

    config = {"task": "clbench_prompts", "output_type": "multiple_choice", "test_split": "test",
              "doc_to_text": "{{prompt}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
              "target_delimiter": "", "metric_list": [{"metric": "acc"}], "custom_dataset": dataset}
    task = general.Prepared("clbench_prompts", config, "", "local:test")
    samples = general.run_lm_eval(ctx, strategy, [task], cfg.general)["clbench_prompts"]["samples"]
    theirs = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0])
              for s in sorted(samples, key=lambda s: s["doc_id"])]
    agree = sum(a == b for a, b in zip(theirs, clbench))
    assert agree == len(docs), f"lm-eval chose as clbench on {agree} of {len(docs)} examples"
