"""Encoder-decoder models (issue 17, item 3): the prompt goes to the encoder, the answer is the decoder's target;
both evaluation scores, the training loss and the general perplexity agree with transformers' own computations,
MIGU ranks every module on the right tokens, and every strategy YAML runs on `model=tiny-t5`."""
import math
from pathlib import Path

import pytest
import torch

from benchmark.records import predictions
from benchmark.modeling.data import Encoder, lm_split
from benchmark.errors import ClbenchError
from benchmark.config import EvalConfig
from benchmark.modeling.scoring import nll_sum, score_examples
from benchmark.modeling.model import tiny_t5
from benchmark.records.store import load_record
from benchmark.runner.recipe import run
from strategies.base import LoraSettings
from strategies.common.lora import add_lora
from strategies.migu import MIGU, MIGUConfig, _Tracked
from task_streams import DataConfig, load_task
from tests.conftest import CONF, TINY_RUN, compose_cfg

T5_RUN = [o for o in TINY_RUN if not o.startswith("model=")] + ["model=tiny-t5", "eval.max_new_tokens=4",
                                                                   "trainer.max_steps_per_task=2"]


def _decode(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def _setup(seed=3, task="CB", max_prompt=200):
    model, tok = tiny_t5(seed=seed)
    model.eval()
    enc = Encoder(tok, max_prompt, decoder_start=model.config.decoder_start_token_id)
    t = load_task(task, DataConfig(train_per_class=2, test_per_class=2))
    return model, tok, enc, t


def test_the_prompt_ends_with_eos_and_the_answer_is_the_bare_label():
    model, tok, enc, task = _setup()
    ex = enc.encode(task, task.test)[0]
    assert ex.prompt[-1] == tok.eos_token_id
    assert ex.answer == tuple(tok(task.labels[ex.label], add_special_tokens=False)["input_ids"]) + (tok.eos_token_id,)
    batch = enc.collate(enc.encode(task, task.train[:3]))
    # the decoder reads [start] + answer[:-1] and predicts the answer: transformers' own shift gives the same
    # tokens on every position the decoder attends to (after a row's answer the causal decoder never looks)
    real = batch["decoder_attention_mask"].bool()
    assert torch.equal(batch["decoder_input_ids"][real], model._shift_right(batch["labels"])[real])
    assert torch.equal(real, batch["labels"] != -100)


def test_training_cross_entropy_equals_transformers_loss_from_labels_alone():
    model, tok, enc, task = _setup()
    batch = enc.collate(enc.encode(task, task.train))
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                           ignore_index=-100)
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(ce, ref, atol=1e-6)


def _train_a_little(model, enc, task, steps=60):
    batch = enc.collate(enc.encode(task, task.train))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_both_scores_equal_transformers_generate_and_per_pair_likelihood():
    model, tok, enc, task = _setup()
    _train_a_little(model, enc, task)  # so that some answers end at EOS before the limit
    ex = enc.encode(task, task.test + task.train)
    answers = [enc.answer(l) for l in task.labels]
    res = score_examples(model, ex, answers, tok.pad_token_id, tok.eos_token_id,
                         EvalConfig(batch_size=3, max_new_tokens=16), "cpu", _decode(tok))
    ended = 0
    for r, e in zip(res, ex):
        ids = torch.tensor([e.prompt])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                             num_beams=1)[0, 1:].tolist()  # position 0 is the decoder start token
        n = gen.index(tok.eos_token_id) if tok.eos_token_id in gen else len(gen)
        assert (r.generation, r.gen_tokens, r.hit_limit) == (_decode(tok)(gen[:n]), n, tok.eos_token_id not in gen)
        ended += not r.hit_limit
        per_pair = []
        for a in answers:  # transformers' mean answer NLL, times the answer length: the summed log-likelihood
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([a])).loss
            per_pair.append(-float(loss.detach()) * len(a))
        assert r.choice == max(range(len(answers)), key=per_pair.__getitem__)
        assert r.margin == pytest.approx(sorted(per_pair)[-1] - sorted(per_pair)[-2], abs=1e-4)
    assert ended, "no answer ended at EOS: the EOS path went untested"


def test_general_perplexity_is_the_continuation_of_each_passages_first_half():
    model, tok, enc, _ = _setup()
    seqs = enc.encode_texts(["The whale swam past the ship at dawn.", "Call me Ishmael, some years ago."], 64)
    total, count = nll_sum(model, seqs, tok.pad_token_id, 2, "cpu", tok.eos_token_id)
    ref_total, ref_count = 0.0, 0
    for s in seqs:
        src, tgt = lm_split(s, tok.eos_token_id)
        assert src[-1] == tok.eos_token_id and src[:-1] + tgt == s
        loss = model(input_ids=torch.tensor([src]), labels=torch.tensor([tgt])).loss
        ref_total, ref_count = ref_total + float(loss) * len(tgt), ref_count + len(tgt)
    assert count == ref_count and total == pytest.approx(ref_total, rel=1e-5)


def test_migu_ranks_encoder_decoder_and_cross_attention_units_on_their_own_real_tokens():
    model, tok, enc, task = _setup(max_prompt=2000)  # untruncated: prompts of different lengths
    model = add_lora(model, LoraSettings(), "default")
    migu = MIGU(MIGUConfig())
    migu.collecting = True
    migu._watch_mask(model)
    migu.tracked = [_Tracked(w, m, migu) for w, m in migu._targets(model)]
    batch = enc.collate(enc.encode(task, task.train))  # rows of different lengths: pads on both sides
    n_enc, n_dec = int(batch["attention_mask"].sum()), int(batch["decoder_attention_mask"].sum())
    assert n_enc < batch["attention_mask"].numel() and n_dec < batch["decoder_attention_mask"].numel()
    model.train()
    model(**batch)
    seen = {"encoder": 0, "decoder self/query": 0, "cross key/value": 0}
    for t in migu.tracked:
        name = _module_name(model, t)
        if ".encoder." in name:
            want, key = n_enc, "encoder"
        elif "EncDecAttention.v" in name:  # the cross-attention's values read the encoder's states
            want, key = n_enc, "cross key/value"
        else:
            want, key = n_dec, "decoder self/query"
        assert int(t.count) == want, name
        seen[key] += 1
    assert all(seen.values()), seen


def _module_name(model, tracked) -> str:
    for n, m in model.named_modules():
        if tracked.weight is getattr(m, "weight", None):
            return n
    raise AssertionError("tracked weight not found")


def test_gere_kl_is_refused_on_an_encoder_decoder_model(tmp_path):
    cfg = compose_cfg(T5_RUN + ["strategy=gere", "strategy.loss=kl", f"results_dir={tmp_path}"])
    with pytest.raises(ClbenchError, match="gere.loss=kl needs a decoder-only model"):
        run(cfg)


STRATEGY_YAMLS = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("yaml_name", STRATEGY_YAMLS)
def test_every_strategy_runs_on_tiny_t5(yaml_name, tmp_path):
    rec_path = run(compose_cfg(T5_RUN + [f"strategy={yaml_name}", f"results_dir={tmp_path}"]))
    rec = load_record(rec_path)
    R = rec["matrix"]["values"]
    assert len(R[0]) == 3 and len(R) == (2 if yaml_name == "mtl" else 4)
    assert rec["model"]["architecture"] == "encoder-decoder"
    assert rec["model"].get("lora_targets", ["q", "v"]) == ["q", "v"]  # T5's names, resolved by [auto]
    assert all(math.isfinite(s["mean_loss"]) for s in rec["stages"])
    assert rec["metrics"]["ppl_before"] is not None and rec["metrics"]["ppl_after"] is not None
    # the prediction files hold every example of every row and re-score to the record
    assert predictions.rescore(rec, Path(rec_path)) == {m: s["values"] for m, s in rec["scores"].items()}
    rows = predictions.load_run(rec, Path(rec_path))
    assert len(rows) == len(R) and all(l["generation"] is not None and l["choice"] is not None for r in rows for l in r)


def test_a_t5_folder_loads_as_an_encoder_decoder_model(tmp_path):
    """model.name=<local folder> (how a user with T5-large's weights runs it) picks AutoModelForSeq2SeqLM."""
    from benchmark.config import ModelConfig
    from benchmark.modeling.model import decoder_start, load_model

    model, tok = tiny_t5(seed=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2, info = load_model(ModelConfig(name=str(tmp_path)))
    assert type(loaded).__name__ == "T5ForConditionalGeneration" and info["architecture"] == "encoder-decoder"
    assert decoder_start(loaded) == tok2.pad_token_id
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
