"""Soft prompts (strategies/common/soft_prompt.py, progprompt, l2p): the hooks' prefixed forwards agree with plain
forwards over explicitly concatenated embeddings (no hooks, no padding, no cache), for the packed label scoring, the
cached greedy generation, the training loss and T5; and the two strategies' own math on tiny tensors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.config import EvalConfig
from benchmark.errors import ClbenchError
from benchmark.modeling.data import MODEL_INPUTS, Encoded, Encoder
from benchmark.modeling.model import decoder_start, enable_activation_checkpointing, tiny_model, tiny_t5
from benchmark.modeling.scoring import score_examples
from strategies.common.soft_prompt import SoftPrefix, extend_mask
from strategies.l2p import L2PConfig, PromptPool, head_mask, select
from strategies.progprompt import ProgPromptConfig, Prompts, ResidualMLP
from task_streams import DataConfig, load_task


# weights large enough for sharp attention: at the default init (std 0.02) attention is near uniform and the
# scores barely depend on positions, so a wrong position shift would go unseen
SHARP = {"initializer_range": 0.5}


class Fixed:
    """A prefix source with fixed rows, optionally different per row of the batch (as L2P's)."""

    def __init__(self, rows: torch.Tensor, per_row: bool = False):
        self.rows, self.per_row = rows, per_row

    def length(self) -> int:
        return self.rows.shape[-2]

    def prefix(self, input_ids, real):
        if not self.per_row:
            return self.rows[None]
        # a row's prefix depends on its first real token: a stand-in for an input-dependent choice
        first = input_ids.gather(1, real.long().argmax(-1, keepdim=True))[:, 0]
        return self.rows[first % self.rows.shape[0]]


def _examples(tok, n_test: int = 2):
    enc = Encoder(tok, 400)  # byte-level: long enough for prompts of different lengths
    task = load_task("COPA", DataConfig(train_per_class=2, test_per_class=n_test))
    ex = enc.encode(task, task.test)
    assert len({len(e.prompt) for e in ex}) > 1  # ragged: left padding is exercised
    return enc, task, ex


def _embeds(model, prefix: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return torch.cat([prefix, model.get_input_embeddings()(torch.tensor([ids]))[0]], 0)[None]


def _reference_decoder(model, prefix_of, ex: Encoded, answers, max_new: int, eos: int):
    """Label scores and greedy tokens from full forwards of [prefix; prompt (+ label or generated so far)]."""
    prefix = prefix_of(ex)
    scores = []
    for a in answers:
        logits = model(inputs_embeds=_embeds(model, prefix, list(ex.prompt + a))).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        n = len(ex.prompt) + prefix.shape[0]
        scores.append(sum(float(lp[n - 1 + j, t]) for j, t in enumerate(a)))
    ids, out = list(ex.prompt), []
    for _ in range(max_new):
        nxt = int(model(inputs_embeds=_embeds(model, prefix, ids)).logits[0, -1].argmax())
        out.append(nxt)
        if nxt == eos:
            break
        ids.append(nxt)
    return torch.tensor(scores), out


def _scored(model, tok, ex, answers, max_new=5, batch_size=4):
    cfg = EvalConfig(mode="both", batch_size=batch_size, max_new_tokens=max_new)
    return score_examples(model, ex, answers, tok.pad_token_id, tok.eos_token_id, cfg, "cpu", lambda ids: ids)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_scores_and_cached_generation_equal_explicit_prefixed_forwards(attn, per_row):
    model, tok = tiny_model(SHARP, seed=4)
    model.set_attn_implementation(attn)
    model.eval()
    enc, task, ex = _examples(tok)
    answers = [enc.answer(l) for l in task.labels]
    torch.manual_seed(0)
    rows = torch.randn(3, 4, model.config.hidden_size) * 0.5 if per_row else torch.randn(4, model.config.hidden_size)
    source = Fixed(rows, per_row)
    hooks = SoftPrefix(model, source)
    got = _scored(model, tok, ex, answers)
    hooks.remove()
    plain = _scored(model, tok, ex, answers)
    prefix_of = lambda e: source.prefix(torch.tensor([e.prompt]), torch.ones(1, len(e.prompt), dtype=torch.bool))[0]
    with torch.no_grad():
        for r, e, p in zip(got, ex, plain):
            scores, tokens = _reference_decoder(model, prefix_of, e, answers, 5, tok.eos_token_id)
            top = scores.topk(2)
            assert r.choice == int(top.indices[0]) and r.margin == pytest.approx(float(top.values[0] - top.values[1]),
                                                                               abs=1e-4)
            n = tokens.index(tok.eos_token_id) if tok.eos_token_id in tokens else len(tokens)
            assert r.generation == tokens[:n]
        # the prefix changes what the model says (else the agreement above would prove nothing)
        assert [(r.choice, r.margin, r.generation) for r in got] != [(r.choice, r.margin, r.generation) for r in plain]


def test_training_forward_with_kept_logits_equals_the_explicit_one_and_checkpointing_keeps_the_gradient():
    model, tok = tiny_model(SHARP, seed=2)
    enc, task, _ = _examples(tok)
    items = enc.encode(task, task.train)
    batch = enc.collate(items)
    rows = torch.nn.Parameter(torch.randn(3, model.config.hidden_size))
    SoftPrefix(model, Fixed(rows))
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    keep = torch.arange(5, batch["input_ids"].shape[1] - 1)

    def grads(checkpointed: bool):
        m, _ = tiny_model(SHARP, seed=2)
        m.train()
        SoftPrefix(m, Fixed(rows))
        if checkpointed:
            enable_activation_checkpointing(m)
        rows.grad = None
        m(**inputs, logits_to_keep=keep).logits.float().pow(2).mean().backward()
        return rows.grad.clone()

    model.eval()
    got = model(**inputs, logits_to_keep=keep).logits
    full = model(**inputs).logits
    assert full.shape[1] == batch["input_ids"].shape[1]  # the prefix's positions are cropped
    # lm-eval calls model(input_ids) positionally, without a mask: the same logits for a row without padding
    row = batch["input_ids"][:1, : int(batch["attention_mask"][0].sum())]
    assert torch.allclose(model(row).logits, model(input_ids=row, attention_mask=torch.ones_like(row)).logits, atol=1e-5)
    assert torch.allclose(got, full[:, keep], atol=1e-5)
    with torch.no_grad():
        for b, ex in enumerate(items):
            real = batch["attention_mask"][b].bool()
            ids = batch["input_ids"][b][real].tolist()
            ref = model.model  # the explicit forward must not pass through the hooks (registered on `model`)
            h = ref(inputs_embeds=_embeds(model, rows.detach(), ids)).last_hidden_state
            logits = model.lm_head(h)[0, 3:]
            assert torch.allclose(full[b][real], logits, atol=1e-4)
    assert torch.allclose(grads(False), grads(True), atol=1e-6)


def test_t5_scores_and_generation_equal_explicit_prefixed_encoder_inputs():
    model, tok = tiny_t5(SHARP, seed=1)
    model.eval()
    enc, task, ex = _examples(tok)
    enc = Encoder(tok, 400, decoder_start=decoder_start(model))
    ex = enc.encode(task, task.test)
    answers = [enc.answer(l) for l in task.labels]
    rows = torch.randn(4, model.config.d_model)
    hooks = SoftPrefix(model, Fixed(rows))
    got = _scored(model, tok, ex, answers)
    hooks.remove()
    start = decoder_start(model)
    with torch.no_grad():
        for r, e in zip(got, ex):
            embeds = _embeds(model, rows, list(e.prompt))
            scores = []
            for a in answers:
                out = model(inputs_embeds=embeds, decoder_input_ids=torch.tensor([(start,) + a[:-1]])).logits[0]
                lp = torch.log_softmax(out.float(), -1)
                scores.append(sum(float(lp[j, t]) for j, t in enumerate(a)))
            top = torch.tensor(scores).topk(2)
            assert r.choice == int(top.indices[0])
            assert r.margin == pytest.approx(float(top.values[0] - top.values[1]), abs=1e-4)
            dec, out_tokens = [start], []
            for _ in range(5):
                nxt = int(model(inputs_embeds=embeds, decoder_input_ids=torch.tensor([dec])).logits[0, -1].argmax())
                out_tokens.append(nxt)
                if nxt == tok.eos_token_id:
                    break
                dec.append(nxt)
            n = out_tokens.index(tok.eos_token_id) if tok.eos_token_id in out_tokens else len(out_tokens)
            assert r.generation == out_tokens[:n]


def test_a_four_dimensional_mask_gains_the_prefix_rows_and_columns():
    allowed = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)[None, None]  # column 0: a pad
    additive = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    for mask in (allowed, additive):
        out = extend_mask(mask, 2)
        ok = out if out.dtype == torch.bool else out == 0
        assert ok.shape == (1, 1, 5, 5)
        assert ok[0, 0, :2, :2].tolist() == [[True, False], [True, True]]  # the prefix: causal over itself
        assert not ok[0, 0, :2, 2:].any() and ok[0, 0, 2:, :2].all()  # never sees the row; every row sees it
        assert ok[0, 0, 2:, 2:].tolist() == allowed[0, 0].tolist()


def test_inputs_embeds_calls_are_refused_in_one_line():
    model, _ = tiny_model(seed=0)
    SoftPrefix(model, Fixed(torch.zeros(2, model.config.hidden_size)))
    with pytest.raises(ClbenchError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, model.config.hidden_size))


# ---- Progressive Prompts


def test_progressive_prefix_is_every_task_prompt_through_its_mlp_newest_first():
    torch.manual_seed(0)
    prompts = Prompts(ProgPromptConfig(length=2, bottleneck=8))
    p1, p2 = torch.randn(2, 6), torch.randn(2, 6)
    prompts.add(p1)
    assert prompts.length() == 2 and torch.equal(prompts.rows(), prompts.mlps[0](p1))
    prompts.add(p2)
    assert prompts.length() == 4
    assert torch.allclose(prompts.rows(), torch.cat([prompts.mlps[1](p2), prompts.mlps[0](p1)]))
    mlp = prompts.mlps[0]
    assert torch.allclose(mlp(p1) - p1, mlp.layers(p1))  # residual
    assert [m.out_features for m in mlp.layers if isinstance(m, torch.nn.Linear)] == [8, 4, 6]
    bare = Prompts(ProgPromptConfig(length=2, mlp=False))
    bare.add(p1)
    bare.add(p2)
    assert torch.equal(bare.rows(), torch.cat([p2, p1])) and not list(bare.mlps)


def test_residual_mlp_is_the_authors_mlp2():
    m = ResidualMLP(6, 800)
    kinds = [type(x).__name__ for x in m.layers]
    assert kinds == ["Linear", "ReLU", "Linear", "Tanh", "Linear"] and m.layers[2].out_features == 400


# ---- L2P


def test_l2p_selects_the_top_k_keys_by_cosine_and_pulls_by_their_mean_similarity():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0], [0.0, 5.0]])
    idx, pulled = select(q, keys, 2)
    assert idx.tolist() == [[0, 1], [3, 1]]
    c = 2 ** -0.5
    assert float(pulled) == pytest.approx((1 + c + 1 + c) / 2)


def test_l2p_query_reads_the_first_real_tokens_only():
    real = torch.tensor([[False, False, True, True, True, True], [True, True, True, True, True, False]])
    assert head_mask(real, 3).tolist() == [[False, False, True, True, True, False],
                                           [True, True, True, False, False, False]]
    assert head_mask(real, 2, skip=1).tolist() == [[False, False, False, True, True, False],
                                                   [False, True, True, False, False, False]]
    emb = torch.nn.Embedding(20, 4)
    pool = PromptPool(L2PConfig(pool=3, length=2, top_k=2, query_tokens=3), emb)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 0]])
    q = pool.query(ids, real)
    assert torch.allclose(q[0], q[1]) and torch.allclose(q[0], emb.weight[[5, 6, 7]].mean(0))
    prefix = pool.prefix(ids, real)
    assert prefix.shape == (2, 4, 4) and pool.length() == 4
    # the pull term trains the keys, not the (frozen) query
    pool.pulled.backward()
    assert pool.keys.grad is not None and pool.keys.grad.abs().sum() > 0 and emb.weight.grad is None


def test_l2p_refuses_a_query_longer_than_a_training_prompt():
    from types import SimpleNamespace

    from strategies.l2p import L2P

    s = L2P(L2PConfig(query_tokens=50))
    s.pool = SimpleNamespace(skip=4)
    short = Encoded(tuple(range(10)), (1,), 0, "CB")
    with pytest.raises(ClbenchError, match=r"query_tokens=50 \(after a chat header of 4\) exceeds a training prompt of task CB"):
        s.train_items(None, [short])


@pytest.mark.parametrize("name", ["progprompt", "l2p"])
def test_only_the_prompts_train_and_at_their_own_rate(name):
    from types import SimpleNamespace

    from benchmark.runner.loop import _checked_groups, trainable_params
    from strategies.base import build

    strategy = build({"name": name, "lr": 0.05, "weight_decay": 0.01})
    model, tok = tiny_model(seed=0)
    ctx = SimpleNamespace(model=model, device=torch.device("cpu"), stage=1, tasks=[SimpleNamespace(name="CB")],
                          encoder=Encoder(tok, 64), stream=SimpleNamespace(tasks=[]))
    model = strategy.prepare_model(model, ctx)
    strategy.before_stage(ctx)
    params = trainable_params(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(f"clbench_{name}.") for n in names)  # the base model is frozen
    groups = _checked_groups(strategy.param_groups(ctx, params), params)
    assert [(len(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == [(len(params), 0.05, 0.01)]


def test_task_prompts_score_each_task_with_the_prompts_up_to_its_own():
    from types import SimpleNamespace

    from strategies.base import build

    for task_prompts in (False, True):
        strategy = build({"name": "progprompt", "task_prompts": task_prompts, "length": 2, "bottleneck": 8})
        assert strategy.uses_task_identity is task_prompts
        model, tok = tiny_model(seed=0)
        ctx = SimpleNamespace(model=model, device=torch.device("cpu"), encoder=Encoder(tok, 64))
        strategy.prepare_model(model, ctx)
        for stage, name in enumerate(["A", "B", "C"], 1):
            ctx.stage, ctx.tasks = stage, [SimpleNamespace(name=name)]
            strategy.before_stage(ctx)
            strategy.after_stage(ctx)
        source = strategy.prompts
        seen = {}
        for task in ("A", "B", "C", "D"):  # D: not trained
            with strategy.eval_task(ctx, task):
                seen[task] = (source.length(), source.rows())
        assert source.length() == 6  # restored after each task
        expected = {"A": 2, "B": 4, "C": 6, "D": 6} if task_prompts else dict.fromkeys("ABCD", 6)
        assert {t: n for t, (n, _) in seen.items()} == expected
        assert torch.equal(seen["A"][1], seen["C"][1][-seen["A"][0]:])  # the oldest prompt is last, unchanged


def test_progprompt_with_task_prompts_never_forgets_and_says_so(tiny_run, tmp_path):
    rec = tiny_run("strategy=progprompt_task_id", "trainer.batch_size=2", results=tmp_path)
    R = rec["scores"]["loglik"]["values"]
    for i in range(3):
        assert all(R[j][i] == R[i + 1][i] for j in range(i + 1, 4))  # its prompts never change again
    assert rec["scores"]["loglik"]["metrics"]["bwt"] == 0.0 and rec["strategy"]["task_identity"] is True


def test_l2p_checks_the_scored_prompts_before_training_and_freezes_keys_without_pull():
    from types import SimpleNamespace

    from strategies.base import build

    model, tok = tiny_model(seed=0)
    task = load_task("CB", DataConfig(train_per_class=1, test_per_class=1))
    ctx = SimpleNamespace(model=model, encoder=Encoder(tok, 64), stream=SimpleNamespace(tasks=[task]),
                          cfg=SimpleNamespace(eval=SimpleNamespace(split="test")))
    with pytest.raises(ClbenchError, match="exceeds a scored prompt of task CB"):
        build({"name": "l2p", "query_tokens": 500}).prepare_model(model, ctx)
    model, tok = tiny_model(seed=0)
    s = build({"name": "l2p", "pull": 0.0, "query_tokens": 8})
    s.prepare_model(model, SimpleNamespace(**{**vars(ctx), "model": model}))
    assert not s.pool.keys.requires_grad and s.pool.prompts.requires_grad
