"""Short runs of each strategy on the tiny model through the real runner, checking its defining property."""
from collections import Counter

import torch

from strategies.base import build
from tests.conftest import compose_cfg


def _strategy(name: str, *overrides: str):
    cfg = compose_cfg([f"strategy={name}", *overrides])
    return build(dict(cfg.strategy))


def _spy(obj, method: str, record: list):
    orig = getattr(obj, method)

    def wrapped(ctx, *args):
        out = orig(ctx, *args)
        record.append((ctx.stage, args, out, ctx))
        return out

    setattr(obj, method, wrapped)


def test_seq_ft_makes_every_weight_trainable(tiny_run):
    rec = tiny_run("strategy=seq_ft", "trainer.max_steps_per_task=1")
    assert rec["cost"]["trainable_params"] == rec["model"]["parameters"]


def test_replay_default_is_loRAReplay_stored_rows_join_later_training_sets_once_per_epoch(tiny_run):
    s = _strategy("replay", "strategy.buffer.fraction=0.25")
    assert s.cfg.mode == "mix"
    sets, rows = [], {}
    _spy(s, "train_items", sets)

    def batch(ctx, b, items, _orig=s.train_batch):
        rows.setdefault(ctx.stage, []).extend(items)
        return _orig(ctx, b, items)

    s.train_batch = batch
    tiny_run(strategy=s)
    own = {stage: list(args[0]) for stage, args, _, _ in sets}
    joined = {stage: out[len(args[0]):] for stage, args, out, _ in sets}
    assert all(out[:len(args[0])] == list(args[0]) for _, args, out, _ in sets), "the stage's own rows all train"
    # int(0.25 * |train|) of each finished task: dbpedia 56 -> 14, amazon 20 -> 5; agnews 16 trains last
    assert {stage: Counter(it.task for it in rows_) for stage, rows_ in joined.items()} == \
        {1: Counter(), 2: Counter(dbpedia=14), 3: Counter(dbpedia=14, amazon=5)}
    # stored once when a task ends, from that task's own training rows, and kept: not redrawn at every stage
    assert all(it in own[1] for it in joined[2])
    assert joined[3][:14] == joined[2] and all(it in own[2] for it in joined[3][14:])
    for stage, _, out, _ in sets:
        assert sorted(map(id, rows[stage])) == sorted(map(id, out)), "each example of the stage's set is seen once"
    assert s.buffer.items()[:19] == joined[3]
    assert Counter(it.task for it in s.buffer.items()) == Counter(dbpedia=14, amazon=5, agnews=4)


def test_interleaved_replay_appends_earlier_tasks_rows_to_every_batch(tiny_run):
    s = _strategy("replay", "strategy.mode=interleave", "strategy.buffer.fraction=0.5")
    seen, drawn = [], []
    _spy(s, "train_batch", seen)
    orig_prepare = s.prepare_model

    def prepare(model, ctx):
        out = orig_prepare(model, ctx)
        sample = s.buffer.sample
        s.buffer.sample = lambda k: drawn.append((ctx.stage, r := sample(k))) or r
        return out

    s.prepare_model = prepare
    tiny_run(strategy=s)
    assert len(s.buffer) == 56 // 2 + 20 // 2 + 16 // 2  # half of dbpedia (14x4), amazon (5x4), agnews (4x4)
    for stage, _, batch, ctx in seen:
        rep = batch["is_replay"]
        if stage == 1:
            assert not rep.any()  # nothing stored before the first task ends
        else:
            assert rep.sum() == (~rep).sum()  # ratio 1.0
    order = ["dbpedia", "amazon", "agnews"]
    assert drawn and all(order.index(it.task) < stage - 1 for stage, rows in drawn for it in rows), \
        "only finished tasks are replayed"


def test_inc_lora_and_olora_freeze_earlier_adapters(tiny_run):
    for name in ("inc_lora", "olora"):
        s = _strategy(name)
        snaps, logs = {}, []

        def after_stage(ctx, _orig=s.after_stage):
            from strategies.common.lora import adapter_weights

            snaps[ctx.stage] = {k: v.detach().clone() for k, v in adapter_weights(ctx.model, f"task{ctx.stage}").items()}
            logs.append((ctx.stage, {k: float(v) for k, v in ctx.logs.items()}))
            return _orig(ctx)

        s.after_stage = after_stage
        holder = {}
        orig_before = s.before_stage

        def before_stage(ctx, _orig=orig_before):
            _orig(ctx)
            holder["ctx"] = ctx

        s.before_stage = before_stage
        tiny_run(f"strategy={name}", strategy=s)
        model = holder["ctx"].model
        from strategies.common.lora import adapter_weights

        assert s.n_adapters == 3
        for stage in (1, 2):
            now = adapter_weights(model, f"task{stage}")
            for k, v in snaps[stage].items():
                assert torch.equal(now[k].detach(), v), f"{name}: adapter of task {stage} changed later ({k})"
                assert not now[k].requires_grad
        if name == "olora":
            assert logs[0][1]["olora_orth"] == 0.0  # no earlier subspace on task 1
            assert logs[1][1]["olora_orth"] > 0.0 and logs[2][1]["olora_orth"] > 0.0


def test_ilora_slow_learner_really_moves(tiny_run):
    s = _strategy("ilora")
    init = {}
    orig = s.prepare_model

    def prepare(model, ctx):
        m = orig(model, ctx)
        init.update({k: v.detach().clone() for k, v in s.slow.items()})
        return m

    s.prepare_model = prepare
    tiny_run(strategy=s)
    moved = [not torch.equal(s.slow[k], init[k]) for k in init if k.endswith("lora_B")]
    assert all(moved), "the slow adapter must change (the official code's EMA is a no-op)"
    differs = [not torch.allclose(s.slow[k], s.fast[k]) for k in init]
    assert any(differs)
    assert not any(v.requires_grad for v in s.slow.values())


def test_migu_masks_all_but_the_top_units_after_the_first_task(tiny_run):
    s = _strategy("migu")
    logs = []
    orig = s.after_optimizer_step

    def after(ctx, _orig=orig):
        logs.append((ctx.stage, float(ctx.logs["migu_kept_fraction"]) if "migu_kept_fraction" in ctx.logs else None))
        ctx.logs.pop("migu_kept_fraction", None)
        return _orig(ctx)

    s.after_optimizer_step = after
    tiny_run(strategy=s)
    assert all(v is None for st, v in logs if st == 1)  # first task unmasked
    later = [v for st, v in logs if st > 1]
    assert later and all(0.3 <= v <= 0.45 for v in later)  # top 30% kept, ties aside (r=8 units: 3/8)


def test_gere_margin_loss_is_zero_at_the_first_step_and_grows_once_the_model_moves(tiny_run):
    s = _strategy("gere", "strategy.n_samples=8", "strategy.max_tokens=32")
    values = []
    orig = s.loss

    def loss(ctx, batch, out, l, _orig=orig):
        res = _orig(ctx, batch, out, l)
        values.append((ctx.stage, float(ctx.logs["gere_tm"])))
        return res

    s.loss = loss
    tiny_run(strategy=s)
    assert values[0] == (1, 0.0)  # LoRA B = 0: the model equals the base model at step 0
    assert max(v for _, v in values) > 0.0
    # thresholds mu +- sigma from the base model's states: pos above neg in every dimension
    assert (s.ref["pos"] > s.ref["neg"]).all()


def test_mtl_trains_once_on_all_tasks(tiny_run):
    rec = tiny_run("strategy=mtl")
    assert rec["matrix"]["rows"] == ["zero-shot", "dbpedia+amazon+agnews"]
    assert rec["stages"][0]["examples"] == 56 + 20 + 16
    assert rec["metrics"]["bwt"] is None


def test_ilora_first_task_trains_without_replay_or_consistency(tiny_run):
    s = _strategy("ilora")
    seen = []
    _spy(s, "train_batch", seen)
    cons = []
    orig = s.loss

    def loss(ctx, batch, out, l, _orig=orig):
        ctx.logs.pop("ilora_consistency", None)
        res = _orig(ctx, batch, out, l)
        cons.append((ctx.stage, "ilora_consistency" in ctx.logs))
        return res

    s.loss = loss
    tiny_run(strategy=s)
    assert all("is_replay" not in b for st, _, b, _ in seen if st == 1)
    assert all(b["is_replay"].any() for st, _, b, _ in seen if st > 1)
    assert not any(c for st, c in cons if st == 1) and all(c for st, c in cons if st > 1)
    assert len(s.buffer) > 0


def test_every_row_and_gere_reference_use_the_training_precision(tiny_run, monkeypatch):
    """bf16 autocast on CPU: the zero-shot row, later rows and GeRe's reference states all run under it."""
    from accelerate.state import AcceleratorState

    from benchmark.modeling import scoring as evaluation

    # accelerate keeps one precision per process; earlier tests in this process set "no" (accelerate's own tests
    # reset it the same way)
    AcceleratorState._reset_state()

    states = []
    real = evaluation.score_examples

    def spy(*a, **kw):
        states.append(torch.is_autocast_enabled("cpu"))
        return real(*a, **kw)

    monkeypatch.setattr(evaluation, "score_examples", spy)
    s = _strategy("gere", "strategy.n_samples=8", "strategy.max_tokens=32")
    tms = []
    orig = s.loss

    def loss(ctx, batch, out, l, _orig=orig):
        res = _orig(ctx, batch, out, l)
        tms.append(float(ctx.logs["gere_tm"]))
        return res

    s.loss = loss
    try:
        tiny_run("trainer.mixed_precision=bf16", strategy=s)
    finally:
        AcceleratorState._reset_state()
    assert states and all(states), "every evaluation row runs under the training autocast"
    assert tms[0] == 0.0, "the margin loss is 0 at step 0 when reference and training share a precision"


def test_lwf_distillation_is_zero_at_the_first_step_of_each_task_and_grows_as_the_task_trains(tiny_run):
    s = _strategy("lwf")
    values = []

    def loss(ctx, batch, out, l, _orig=s.loss):
        res = _orig(ctx, batch, out, l)
        values.append((ctx.stage, ctx.step, float(ctx.logs["lwf_kd"]) if "lwf_kd" in ctx.logs else None))
        ctx.logs.pop("lwf_kd", None)
        return res

    s.loss = loss
    tiny_run(strategy=s, *["trainer.batch_size=2"])
    assert all(v is None for st, _, v in values if st == 1)  # no teacher before the second task
    for stage in (2, 3):
        kd = [v for st, _, v in values if st == stage]
        assert kd[0] == 0.0  # the teacher is the model as it starts the task
        assert max(kd) > 0.0


def test_ewc_penalty_is_zero_on_the_first_task_and_holds_parameters_afterwards(tiny_run):
    s = _strategy("ewc", "strategy.ewc_lambda=1000")
    values = []

    def loss(ctx, batch, out, l, _orig=s.loss):
        res = _orig(ctx, batch, out, l)
        values.append((ctx.stage, float(ctx.logs.pop("ewc_penalty", 0.0))))
        return res

    s.loss = loss
    tiny_run(strategy=s, *["trainer.batch_size=2"])
    assert all(v == 0.0 for st, v in values if st == 1)
    second = [v for st, v in values if st == 2]
    assert second[0] == 0.0 and max(second) > 0.0  # at the anchor, then away from it
    assert len(s.anchors) == 3 and all(f.keys() == s.anchors[0][0].keys() for f, _ in s.anchors)


def test_per_task_evaluates_each_task_with_its_own_adapter_so_nothing_is_forgotten_or_transferred(tiny_run, tmp_path):
    from benchmark import leaderboard

    rec = tiny_run("strategy=per_task", "trainer.batch_size=2", results=tmp_path)
    R = rec["scores"]["loglik"]["values"]
    for i in range(3):
        assert all(R[j][i] == R[i + 1][i] for j in range(i + 1, 4))  # its adapter never changes again
        assert all(R[j][i] == R[0][i] for j in range(i + 1))  # before its stage: the base model
    assert rec["scores"]["loglik"]["metrics"]["bwt"] == 0.0 and rec["scores"]["loglik"]["metrics"]["fwt"] == 0.0
    assert rec["strategy"]["task_identity"] is True

    seq = tiny_run("strategy=seq_lora", "trainer.batch_size=2", results=tmp_path)
    assert seq["strategy"]["task_identity"] is False
    board = leaderboard.build_board(tmp_path / "runs", tmp_path, mode="loglik")
    row = next(r for r in board["rows"] if r["strategy"] == "per_task")
    assert "task identity at test" in row["settings"]
    assert row["vs_baseline"]["metrics"]["aa"]["verdict"] == "not comparable"
