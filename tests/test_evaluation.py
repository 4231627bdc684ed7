import pytest
import torch

from benchmark.modeling.data import Encoded, Encoder, collate_train
from benchmark.errors import ClbenchError
from benchmark.config import EvalConfig
from benchmark.modeling.scoring import (accuracy, generate_predictions, loglik_scores, loglik_scores_cached,
                                  loglik_scores_pairs, normalize_answer, nll_sum)
from benchmark.modeling.model import tiny_model
from task_streams import DataConfig, load_task


def test_normalize_answer_like_the_olora_scorer():
    assert normalize_answer("  Science or  Technology. ") == "science or technology"
    assert normalize_answer("The World!") == "the world"  # articles are kept


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_cached_loglik_equal_one_forward_per_pair(attn):
    model, tok = tiny_model(seed=3)
    model.set_attn_implementation(attn)
    model.eval()
    enc = Encoder(tok, 400)  # long enough for prompts of different lengths
    task = load_task("dbpedia", DataConfig(train_per_class=1, test_per_class=1))
    ex = enc.encode(task, task.test)
    answers = [enc.answer(l) for l in task.labels]  # 14 labels of different token lengths
    assert len({len(a) for a in answers}) > 1 and len({len(e.prompt) for e in ex}) > 1  # ragged on both sides
    slow = loglik_scores_pairs(model, ex, answers, tok.pad_token_id, 4, "cpu")
    packed = loglik_scores(model, ex, answers, tok.pad_token_id, 4, "cpu")
    cached = loglik_scores_cached(model, ex, answers, tok.pad_token_id, 4, "cpu")
    assert torch.allclose(packed, slow, atol=1e-4)
    assert torch.allclose(cached, slow, atol=1e-4)
    norm = loglik_scores(model, ex, answers, tok.pad_token_id, 4, "cpu", normalize=True)
    lens = torch.tensor([len(a) for a in answers], dtype=torch.float)
    assert torch.allclose(norm, packed / lens, atol=1e-5)


def test_generation_is_greedy_and_matches_a_manual_argmax_loop():
    model, tok = tiny_model(seed=1)
    model.eval()
    prompt = tuple(tok("Answer:", add_special_tokens=False)["input_ids"])
    ex = [Encoded(prompt, (tok.eos_token_id,), 0, "t")]
    got = generate_predictions(model, ex, tok.pad_token_id, tok.eos_token_id, 1, "cpu", 5, lambda ids: ids)
    ids = list(prompt)
    for _ in range(5):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        ids.append(nxt)
    assert got[0] == ids[len(prompt):]


def test_both_modes_score_a_learned_task_and_agree():
    """Overfit the tiny model on 6 CB examples; both evaluation modes must then find every gold label."""
    torch.manual_seed(0)
    model, tok = tiny_model(seed=0)
    enc = Encoder(tok, 320)  # byte-level tokens: room for the instruction and the start of each sentence
    task = load_task("CB", DataConfig(train_per_class=2, test_per_class=2))
    items = enc.encode(task, task.train)
    batch = collate_train(items, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], )
        logits = out.logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for mode in ("loglik", "generate"):
        correct, total = accuracy(model, items, task.labels, enc, EvalConfig(mode=mode, batch_size=4), "cpu")
        assert (correct, total) == (len(items), len(items)), mode
    # and an untrained model does not
    fresh, _ = tiny_model(seed=5)
    fresh.eval()
    assert accuracy(fresh, items, task.labels, enc, EvalConfig(mode="generate"), "cpu")[0] < len(items)


def test_unknown_mode_is_rejected():
    model, tok = tiny_model()
    with pytest.raises(ClbenchError, match="eval.mode"):
        accuracy(model, [Encoded((1,), (2,), 0, "t")], ["a"], Encoder(tok), EvalConfig(mode="beam"), "cpu")


def test_perplexity_counts_real_tokens_only():
    model, tok = tiny_model()
    model.eval()
    seqs = [(5, 6, 7, 8), (9, 10)]
    total, count = nll_sum(model, seqs, tok.pad_token_id, 2, "cpu")
    assert count == 3 + 1
    t1, c1 = nll_sum(model, seqs[:1], tok.pad_token_id, 1, "cpu")
    t2, c2 = nll_sum(model, seqs[1:], tok.pad_token_id, 1, "cpu")
    assert total == pytest.approx(t1 + t2, rel=1e-5) and count == c1 + c2
