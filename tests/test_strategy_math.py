"""Each strategy's math on tiny tensors, against hand-computed values."""
import json
import random

import pytest
import torch

from benchmark.api import IGNORE, ClbenchError
from benchmark.modeling.data import Encoded
from strategies.common.buffer import BufferConfig, ReplayBuffer
from strategies.gere import margin_labels, thresholds, tm_loss
from strategies.ilora import consistency_loss, ema_update
from strategies.migu import unit_mask
from strategies.olora import orthogonality_loss


# ---- O-LoRA ----
def test_orthogonality_loss_hand_computed():
    old = [torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 1.0, -1.0]])]
    new = torch.tensor([[1.0, 0.0, 1.0], [2.0, -1.0, 0.0]])
    # A_old_cat @ new^T = [[1, 0], [-1, -1]] -> L1 = 3
    assert orthogonality_loss(old, new).item() == pytest.approx(3.0)


def test_orthogonality_loss_zero_for_orthogonal_subspaces_and_first_task():
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    old, new = [q[:4], q[4:8]], q[8:12]
    assert orthogonality_loss(old, new).item() == pytest.approx(0.0, abs=1e-5)
    assert orthogonality_loss([], new).item() == 0.0


def test_summed_adapters_equal_the_concatenated_olora_form():
    """Separate frozen adapters summed == the official concatenation [B1 B2][A1; A2] (same alpha/r scale)."""
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    A1, A2 = torch.randn(2, 6), torch.randn(2, 6)
    B1, B2 = torch.randn(4, 2), torch.randn(4, 2)
    scale = 32 / 2
    summed = scale * (x @ A1.T @ B1.T) + scale * (x @ A2.T @ B2.T)
    concat = scale * (x @ torch.cat([A1, A2]).T @ torch.cat([B1, B2], dim=1).T)
    assert torch.allclose(summed, concat, atol=1e-4)


# ---- I-LoRA ----
def test_ema_moves_slow_by_the_stated_amount():
    slow = {"w": torch.tensor([1.0, 2.0])}
    fast = {"w": torch.tensor([3.0, -2.0])}
    ema_update(slow, fast, lam=0.25)
    # 0.25 * slow + 0.75 * fast
    assert torch.allclose(slow["w"], torch.tensor([2.5, -1.0]))
    ema_update(slow, fast, lam=1.0)
    assert torch.allclose(slow["w"], torch.tensor([2.5, -1.0]))


def test_consistency_loss_mse_and_one_sided():
    fast = [torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])]
    slow = [torch.tensor([[[2.0, 1.0], [9.0, 9.0]]])]
    mask = torch.tensor([[1, 0]])  # the second position is padding and must not count
    # mse over real token: ((1-2)^2 + (3-1)^2) / 2 = 2.5
    assert consistency_loss(fast, slow, mask, "mse").item() == pytest.approx(2.5)
    # one-sided: target = max(fast, slow) = [2, 3] -> ((1-2)^2 + 0) / 2 = 0.5
    assert consistency_loss(fast, slow, mask, "one_sided").item() == pytest.approx(0.5)


# ---- MIGU ----
def test_unit_mask_keeps_the_top_fraction():
    mag = torch.arange(1.0, 11.0)  # 10 units
    keep = unit_mask(mag, 0.7)
    assert keep.tolist() == [False] * 7 + [True] * 3
    assert unit_mask(mag, 0.0).all()


def test_masked_units_do_not_move_under_adamw():
    """A gradient mask alone lets AdamW move masked rows (momentum, weight decay); the MIGU step must not."""
    from types import SimpleNamespace

    from strategies.migu import MIGU, MIGUConfig

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 6)
    opt = torch.optim.AdamW([lin.weight], lr=0.1, weight_decay=0.1)
    migu = MIGU(MIGUConfig(adapter="none", threshold=0.5))
    ctx = SimpleNamespace(stage=2, model=None, optimizer=opt, tasks=[],
                          accelerator=SimpleNamespace(num_processes=1), log=lambda *a: None)
    migu.active, migu.collecting = True, True
    from strategies.migu import _Tracked

    migu.tracked = [_Tracked(lin.weight, lin, migu)]
    for step in range(3):
        before = lin.weight.detach().clone()
        x = torch.randn(8, 4)
        out = lin(x)
        mag = out.detach().abs().mean(0)
        keep = unit_mask(mag, 0.5)
        out.pow(2).sum().backward()
        migu.before_optimizer_step(ctx)
        assert (lin.weight.grad[~keep] == 0).all()
        migu.optimizer_step(ctx)
        migu.after_optimizer_step(ctx)
        opt.zero_grad()
        assert torch.equal(lin.weight[~keep], before[~keep]), f"masked rows moved at step {step}"
        assert not torch.equal(lin.weight[keep], before[keep])


# ---- GeRe ----
def test_margin_labels_and_thresholds():
    h = torch.tensor([[[0.0], [2.0], [4.0]]])  # one dim, mu = 2, sd = sqrt(8/3)
    mask = torch.ones(1, 3)
    pos, neg = thresholds(h, mask)
    sd = (8 / 3) ** 0.5
    assert pos.item() == pytest.approx(2 + sd) and neg.item() == pytest.approx(2 - sd)
    assert margin_labels(h, pos, neg).flatten().tolist() == [-1, 0, 1]


def test_tm_loss_zero_inside_thresholds_and_hand_computed_outside():
    pos, neg = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])
    labels = torch.tensor([[[1, 0], [-1, 0]]], dtype=torch.int8)
    mask = torch.ones(1, 2)
    inside = torch.tensor([[[1.5, 0.3], [-2.0, -0.9]]])  # pos >= 1, neutral in band, neg <= -1
    assert tm_loss(inside, labels, pos, neg, mask).item() == 0.0
    outside = torch.tensor([[[0.5, 1.6], [0.0, -1.2]]])
    # violations: pos 1-0.5=0.5 ; neutral 1.6-1=0.6 ; neg 0-(-1)=1.0 ; neutral -1-(-1.2)=0.2 -> mean over 4 non-zero
    assert tm_loss(outside, labels, pos, neg, mask).item() == pytest.approx((0.5 + 0.6 + 1.0 + 0.2) / 4)
    pad = torch.tensor([[1, 0]])  # the second token is padding: only 0.5 and 0.6 count
    assert tm_loss(outside, labels, pos, neg, pad).item() == pytest.approx((0.5 + 0.6) / 2)


# ---- replay buffers ----
def _items(task: int, n: int):
    return [Encoded((task, i), (1,), 0, f"t{task}") for i in range(n)]


def test_reservoir_buffer_composition_is_proportional_to_samples_seen():
    counts = {0: 0, 1: 0}
    for trial in range(200):
        buf = ReplayBuffer(BufferConfig(policy="reservoir", size=20), n_tasks=2, seed=trial)
        buf.add(_items(0, 100), 0)
        buf.add(_items(1, 300), 1)
        assert len(buf) == 20
        for it in buf.items():
            counts[it.prompt[0]] += 1
    share = counts[0] / (counts[0] + counts[1])
    assert share == pytest.approx(0.25, abs=0.03)


def test_reservoir_fills_first_m_in_order():
    buf = ReplayBuffer(BufferConfig(policy="reservoir", size=5), n_tasks=1, seed=0)
    buf.add(_items(0, 5), 0)
    assert [it.prompt[1] for it in buf.items()] == [0, 1, 2, 3, 4]


def test_per_task_ring_and_fraction_policies():
    ring = ReplayBuffer(BufferConfig(policy="per_task", size=6), n_tasks=3, seed=0)
    ring.add(_items(0, 5), 0)
    ring.add(_items(1, 1), 1)
    # task 0 owns slots 0-1 (last two written wins: 4 -> slot 0, 3 -> slot 1), task 1 slot 2
    assert [it.prompt for it in ring.items()] == [(0, 4), (0, 3), (1, 0)]
    frac = ReplayBuffer(BufferConfig(policy="fraction", fraction=0.02), n_tasks=2, seed=0)
    frac.add_task(_items(0, 500))
    assert len(frac) == 10 and all(it.task == "t0" for it in frac.items())


def test_buffer_state_roundtrip():
    buf = ReplayBuffer(BufferConfig(policy="reservoir", size=4), n_tasks=1, seed=3)
    buf.add(_items(0, 10), 0)
    tensors, meta = buf.state("b/")
    other = ReplayBuffer(BufferConfig(policy="reservoir", size=4), n_tasks=1, seed=99)
    other.load("b/", tensors, meta)
    assert other.items() == buf.items()
    assert other.sample(2) == buf.sample(2)
    random.seed(0)


def test_each_process_resumes_its_own_buffer_and_draws():
    """Under two processes the main one writes the checkpoint: share() puts both buffers in it (rows offered while
    training are each process's own shard, draws are seeded per rank) and each process loads its own back, so
    that after resuming rank 1 draws what it would have drawn without the interruption, not rank 0's rows."""
    from types import SimpleNamespace

    cfg = BufferConfig(policy="reservoir", size=4)
    ranks = [ReplayBuffer(cfg, n_tasks=1, seed=3, rank=r, processes=2) for r in (0, 1)]
    for r, buf in enumerate(ranks):
        buf.add(_items(r, 10), 0)  # each process's own shard
        buf.sample(2)  # draws already made in the stage
    own = [b._own_state("") for b in ranks]
    for r, buf in enumerate(ranks):  # gather_object: one item per process, in rank order, on every process
        buf.share(SimpleNamespace(num_processes=2, is_main_process=r == 0), gather=lambda mine: own)
    assert ranks[1].shared is None  # only the main process, which writes the checkpoint, keeps them
    tensors, meta = ranks[0].state("b/")
    assert len(meta["ranks"]) == 2
    resumed = [ReplayBuffer(cfg, n_tasks=1, seed=3, rank=r, processes=2) for r in (0, 1)]
    for buf in resumed:
        buf.load("b/", tensors, meta)
    for before, after in zip(ranks, resumed):
        assert after.items() == before.items()
        assert after.sample(3) == before.sample(3)
    assert resumed[0].items() != resumed[1].items()
    # one process: nothing gathered, the checkpoint keeps the one-process layout
    single = ReplayBuffer(cfg, n_tasks=1, seed=3)
    single.share(SimpleNamespace(num_processes=1, is_main_process=True),
                 gather=lambda mine: pytest.fail("gathered on one process"))
    assert "ranks" not in single.state("b/")[1]
    # another number of processes cannot deal the saved buffers out again: one line, either way
    for processes, saved in ((1, meta), (3, meta), (2, single.state("b/")[1])):
        with pytest.raises(ClbenchError, match="the replay buffer of this checkpoint was saved by [12] process"):
            ReplayBuffer(cfg, n_tasks=1, seed=3, rank=0, processes=processes).load("b/", tensors, saved)
    random.seed(0)


def test_gere_resumes_each_process_own_draws_of_general_passages():
    from types import SimpleNamespace

    from benchmark.api import rng_to_json
    from strategies.gere import GeRe, GeReConfig

    def rank(r):
        g = GeRe(GeReConfig())
        g.rng = random.Random(f"1/{r}")
        g.rng.random()
        return g

    procs = [rank(0), rank(1)]
    states = [rng_to_json(g.rng) for g in procs]
    from strategies.common import processes
    for r, g in enumerate(procs):
        g.rngs = processes.gather_each(SimpleNamespace(num_processes=2), states[r], gather=lambda mine: states)
    tensors, meta = procs[0].state_dict()
    for r in (0, 1):
        fresh = rank(0)  # as a fresh process builds it: then the checkpoint sets its state
        ctx = SimpleNamespace(accelerator=SimpleNamespace(process_index=r, num_processes=2))
        fresh.load_state_dict(tensors, meta, ctx)
        assert fresh.rng.random() == procs[r].rng.random()
    with pytest.raises(ClbenchError, match="GeRe's draw state of this checkpoint was saved by 2 process"):
        rank(0).load_state_dict(tensors, meta, SimpleNamespace(accelerator=SimpleNamespace(process_index=0,
                                                                                            num_processes=1)))
    random.seed(0)


# ---- issue 11: GeRe's effective objective, fractional replay counts, per-process draws ----
def test_gere_objective_weights_task_ce_by_one_minus_p_and_keeps_other_terms():
    from strategies.gere import general_share, gere_objective

    task_ce, reg, gen_ce, tm = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(3.0), torch.tensor(0.01)
    p = general_share(8, 2)
    assert p == pytest.approx(0.2)
    # the running loss holds the task CE plus another composed strategy's regulariser (0.5)
    out = gere_objective(task_ce + reg, task_ce, gen_ce, tm, p, 100.0)
    assert out.item() == pytest.approx(0.8 * 2.0 + 0.5 + 0.2 * (3.0 + 100.0 * 0.01))
    assert gere_objective(task_ce, task_ce, gen_ce, None, p, 0.0).item() == pytest.approx(0.8 * 2.0 + 0.2 * 3.0)


def test_replay_count_has_the_right_expectation_and_never_rounds_to_zero():
    import random as _random

    from strategies.replay import replay_count

    assert replay_count(1.0, 8, 0.99) == 8 and replay_count(0.5, 8, 0.0) == 4
    rng = _random.Random(0)
    draws = [replay_count(0.1, 4, rng.random()) for _ in range(20000)]
    assert set(draws) == {0, 1}
    assert sum(draws) / len(draws) == pytest.approx(0.4, abs=0.02)  # round(0.1 * 4) would replay nothing


def test_buffer_stores_the_same_rows_on_every_process_but_draws_differ():
    from benchmark.modeling.data import Encoded
    from strategies.common.buffer import BufferConfig, ReplayBuffer

    items = [Encoded((i,), (1,), 0, "t") for i in range(200)]
    b0, b1 = (ReplayBuffer(BufferConfig(policy="fraction", fraction=0.1), 3, seed=5, rank=r) for r in (0, 1))
    b0.add_task(items)
    b1.add_task(items)
    assert [e.prompt for e in b0.items()] == [e.prompt for e in b1.items()]
    assert [e.prompt for e in b0.sample(10)] != [e.prompt for e in b1.sample(10)]


def test_engines_that_would_run_a_strategy_silently_wrong_are_refused():
    from types import SimpleNamespace

    from benchmark.runner.engines import check_engine
    from strategies.base import StrategyConfigError, build

    def acc(kind, mp="no"):
        return SimpleNamespace(distributed_type=SimpleNamespace(value=kind), mixed_precision=mp)

    for name in ("seq_lora", "olora", "migu", "replay"):
        with pytest.raises(StrategyConfigError, match="DeepSpeed"):
            check_engine(build({"name": name}), acc("DEEPSPEED"))
        check_engine(build({"name": name}), acc("MULTI_CPU"))
    for name in ("olora", "inc_lora", "ilora", "migu"):
        with pytest.raises(StrategyConfigError, match="FSDP"):
            check_engine(build({"name": name}), acc("FSDP"))
    check_engine(build({"name": "seq_lora"}), acc("FSDP"))
    with pytest.raises(StrategyConfigError, match="fp16"):
        check_engine(build({"name": "migu"}), acc("NO", "fp16"))
    composed = build({"name": "compose", "parts": [{"name": "replay"}, {"name": "migu", "adapter": "none"}]})
    assert composed.name == "replay+migu"
    with pytest.raises(StrategyConfigError, match="migu"):
        check_engine(composed, acc("FSDP"))


def test_stage_epochs_per_task():
    from types import SimpleNamespace

    from benchmark.runner.loop import accumulation_windows, stage_epochs

    t = lambda n: SimpleNamespace(name=n)  # noqa: E731
    tcfg = SimpleNamespace(epochs=1, epochs_per_task={"MNLI": 2})
    assert stage_epochs(tcfg, [t("MNLI")]) == 2 and stage_epochs(tcfg, [t("RTE")]) == 1
    assert stage_epochs(tcfg, [t("MNLI"), t("RTE")]) == 1  # a joint (MTL) stage uses trainer.epochs
    assert [list(w) for w in accumulation_windows(5, 2)] == [[0, 1], [2, 3], [4]]


def test_olora_long_sets_the_scripts_per_task_epochs_and_lambdas():
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["strategy=olora_long"])
    assert cfg.trainer.epochs_per_task == {"MNLI": 2} and cfg.trainer.epochs == 1
    assert cfg.strategy["name"] == "olora" and cfg.strategy["lambda1_per_task"]["dbpedia"] == 5.0
    assert compose_cfg(["strategy=olora"]).trainer.epochs_per_task == {}


def test_gere_draws_different_general_rows_on_each_process():
    from types import SimpleNamespace

    from benchmark.modeling.data import Encoder
    from benchmark.modeling.model import tiny_model
    from strategies.base import build

    draws = []
    for rank in (0, 1):
        model, tok = tiny_model()
        g = build({"name": "gere", "n_samples": 16, "max_tokens": 16, "per_batch": 4})
        ctx = SimpleNamespace(encoder=Encoder(tok, 64), tokenizer=tok, seed=3,
                              accelerator=SimpleNamespace(process_index=rank))
        g.prepare_model(model, ctx)
        draws.append([g._general_batch()[0] for _ in range(5)])
    assert draws[0] != draws[1]


def test_gere_general_rows_are_averaged_per_row_as_the_official_per_sample_micro_batches():
    """Issue 26, finding 6: the official code trains each general sample as its own micro-batch (CE_j + w_j *
    TM_j, w_j = CE_j / TM_j with dy) and accumulation averages them; two rows of different lengths in one batch
    must give exactly that mean, not the pooled CE and TM of their tokens."""
    import torch.nn.functional as F

    from strategies.gere import gere_objective, row_ce

    gen = torch.Generator().manual_seed(0)
    V, d, L = 11, 4, 6
    logits, h = torch.randn(2, L, V, generator=gen), torch.randn(2, L, d, generator=gen)
    target = torch.randint(0, V, (2, L), generator=gen)
    lengths = [6, 2]  # the second row is padded after two tokens
    target[1, 2:] = IGNORE
    mask = torch.tensor([[1.0] * 6, [1.0] * 2 + [0.0] * 4])
    labels = torch.randint(-1, 2, (2, L, d), generator=gen).to(torch.int8)
    pos, neg = torch.full((d,), 0.3), torch.full((d,), -0.3)

    def official(w):  # one micro-batch per row, no padding: the official code's view
        out = []
        for j, n in enumerate(lengths):
            ce = F.cross_entropy(logits[j, :n], target[j, :n])
            tm = tm_loss(h[j:j + 1, :n], labels[j:j + 1, :n], pos, neg, torch.ones(1, n))[0]
            out.append(ce + (ce / tm if w == "dy" else w) * tm)
        return torch.stack(out).mean()

    ce_rows, tm_rows = row_ce(logits, target), tm_loss(h, labels, pos, neg, mask)
    zero = torch.tensor(0.0)
    for w in ("dy", 100.0):
        weight = ce_rows / tm_rows if w == "dy" else w
        got = gere_objective(zero, zero, ce_rows, tm_rows, 1.0, weight)
        assert got.item() == pytest.approx(official(w).item(), rel=1e-6)
    # objective version 1 pooled the rows' tokens: another number on rows of different lengths
    pooled_ce = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), ignore_index=IGNORE)
    tokens = torch.cat([h[0, :6], h[1, :2]])[None], torch.cat([labels[0, :6], labels[1, :2]])[None]
    pooled_tm = tm_loss(tokens[0], tokens[1], pos, neg, torch.ones(1, 8))[0]
    assert abs((pooled_ce + 100.0 * pooled_tm).item() - official(100.0).item()) > 1e-3


# ---- EWC (issue 23) ----
def test_ewc_penalty_equals_its_closed_form_over_every_anchor():
    from strategies.ewc import ewc_penalty

    p = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    anchors = [({"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([[4.0]])},
                {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[0.0]])}),
               ({"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[0.0]])},
                {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[9.0]])})]
    # 2*(1-0)^2 + 0*(2-1)^2 + 4*(0.5)^2 = 3 ; 1*0 + 1*(2-1)^2 + 0 = 1 ; lambda/2 * 4
    assert ewc_penalty(p, anchors, 10.0).item() == pytest.approx(0.5 * 10.0 * 4.0)
    assert ewc_penalty(p, [], 10.0).item() == 0.0


def test_ewc_fisher_is_the_mean_squared_batch_gradient_and_zero_where_the_loss_does_not_reach():
    from types import SimpleNamespace

    from accelerate import Accelerator

    from benchmark.modeling.model import tiny_model
    from strategies.ewc import fisher_diagonal

    model, _tok = tiny_model()
    unused = torch.nn.Parameter(torch.ones(3))  # trainable, but no loss reaches it
    model.register_parameter("unused", unused)
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    unused.requires_grad_(True)
    params = {"head": head, "unused": unused}
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(3, 200, (2, 6), generator=gen)
        labels = torch.full_like(ids, IGNORE)
        labels[:, 4:] = ids[:, 4:]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    ctx = SimpleNamespace(model=model, train_model=None, accelerator=Accelerator(cpu=True), device=torch.device("cpu"))
    ctx.forward = lambda batch, model=None, **kw: (model or ctx.model)(
        **{k: v for k, v in batch.items() if k != "labels"}, **kw)
    fisher = fisher_diagonal(ctx, params, batches)
    assert head.grad is None and unused.grad is None  # no gradient left behind for the next stage's optimizer
    expected = torch.zeros_like(head)
    for b in batches:
        head.grad = None
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                                          ignore_index=IGNORE).backward()
        expected += head.grad ** 2
    assert torch.allclose(fisher["head"], expected / 2, rtol=1e-5, atol=1e-12)
    assert torch.count_nonzero(fisher["unused"]) == 0


def test_ewc_state_round_trips_fisher_and_anchors_exactly():
    from strategies.ewc import EWC, EWCConfig

    a, b = EWC(EWCConfig()), EWC(EWCConfig())
    gen = torch.Generator().manual_seed(1)
    a.anchors = [({"w": torch.rand(3, generator=gen)}, {"w": torch.rand(3, generator=gen)}) for _ in range(2)]
    tensors, meta = a.state_dict()
    b.load_state_dict(tensors, json.loads(json.dumps(meta)), None)
    assert len(b.anchors) == 2
    for (fa, ta), (fb, tb) in zip(a.anchors, b.anchors):
        assert torch.equal(fa["w"], fb["w"]) and torch.equal(ta["w"], tb["w"])


def test_lwf_distillation_is_kl_old_to_new_at_answer_positions_only():
    from strategies.lwf import distillation

    old = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])
    new = torch.tensor([[[0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]])
    targets = torch.tensor([[1, IGNORE]])  # only the first position predicts an answer token
    T = 2.0
    p_old, p_new = torch.softmax(old[0, 0] / T, -1), torch.softmax(new[0, 0] / T, -1)
    expected = (p_old * (p_old.log() - p_new.log())).sum()
    assert distillation(new, old, targets, T).item() == pytest.approx(expected.item(), rel=1e-6)
    assert distillation(old, old, targets, T).item() == pytest.approx(0.0, abs=1e-7)


def test_agem_projects_only_an_opposing_gradient_onto_the_plane_orthogonal_to_the_reference():
    from strategies.agem import project

    g_ref = torch.tensor([1.0, 0.0, 2.0])
    same, applied = project(torch.tensor([0.5, 3.0, 0.0]), g_ref)  # g . g_ref = 0.5 >= 0: unchanged
    assert not applied and same.tolist() == [0.5, 3.0, 0.0]
    g = torch.tensor([-1.0, 1.0, -1.0])  # g . g_ref = -3, |g_ref|^2 = 5
    out, applied = project(g, g_ref)
    assert applied and torch.allclose(out, g + 0.6 * g_ref)
    assert abs(float(torch.dot(out, g_ref))) < 1e-6  # it no longer increases the memory's loss (to first order)


def test_agem_reference_gradient_is_the_token_weighted_memory_gradient_and_the_step_follows_it():
    from types import SimpleNamespace

    from accelerate import Accelerator

    from benchmark.modeling.data import Encoder
    from benchmark.modeling.model import tiny_model
    from strategies.agem import AGEM, AGEMConfig

    model, tok = tiny_model(seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    enc = Encoder(tok, 64)
    gen = random.Random(0)
    memory = [Encoded(tuple(gen.randrange(3, 200) for _ in range(gen.randrange(5, 12))),
                      tuple(gen.randrange(3, 200) for _ in range(gen.randrange(1, 4))), 0, "t") for _ in range(5)]
    cfg = SimpleNamespace(trainer=SimpleNamespace(batch_size=2))
    ctx = SimpleNamespace(model=model, train_model=None, accelerator=Accelerator(cpu=True), device=torch.device("cpu"),
                          encoder=enc, cfg=cfg, stage=2, log=lambda *a: None)
    ctx.forward = lambda batch, model=None, **kw: (model or ctx.model)(
        **{k: v for k, v in batch.items() if k != "labels"}, **kw)
    s = AGEM(AGEMConfig(ref_batch=256))
    s.buffer = ReplayBuffer(BufferConfig(policy="fraction", fraction=1.0), 2, seed=0)
    s.buffer.add_task(memory)
    got = s.reference_gradient(ctx, [head])
    # the same loss in one batch of all five rows: the mean CE over every answer token
    head.grad = None
    b = enc.collate(memory)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                                      ignore_index=IGNORE).backward()
    assert torch.allclose(got, head.grad.reshape(-1), atol=1e-6)
    # a step gradient that opposes it is projected in place; the result no longer opposes it
    head.grad = -head.grad.clone() + 0.01 * torch.randn_like(head)
    s.before_optimizer_step(ctx)
    assert s.projected == 1 and float(torch.dot(head.grad.reshape(-1), got)) == pytest.approx(0.0, abs=1e-4)
    # on the first task there is no memory and nothing to project
    ctx.stage, before = 1, head.grad.clone()
    s.before_optimizer_step(ctx)
    assert torch.equal(head.grad, before)
