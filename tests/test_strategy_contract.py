"""The contract every registered strategy must keep, on the tiny model through the real runner.

Parametrised over `strategies.registered()`: a new strategy is covered without editing this file, through the
YAML(s) in conf/strategy/ that name it (a strategy without one fails here). Each configuration is run once
uninterrupted (with spies) and once interrupted after stage 1 and resumed, with batch 2 and gradient
accumulation 2 on 2 examples per class, so that amazon (5 micro-batches) and MTL's joint stage (23) leave odd remainders.
"""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.records.store import load_record
from benchmark.runner import loop
from benchmark.runner import recipe as runner
from strategies import registered
from strategies.base import build
from tests.conftest import TINY_RUN, compose_cfg, strategy_run_cfg, strategy_yamls

CASES = [(name, y) for name in registered() for y in (strategy_yamls().get(name) or ["<missing>"])]


class Interrupt(Exception):
    pass


def _quality(rec: dict) -> dict:
    return {"matrix": rec["matrix"]["values"], "metrics": rec["metrics"],
            "losses": [(s["steps"], s["mean_loss"]) for s in rec["stages"]]}


@pytest.fixture
def runs(request, strategy_runs):
    """The shared clean run of this case's YAML; a registered strategy without a YAML fails here, once."""
    name, yaml_name = request.node.callspec.params["name"], request.node.callspec.params["yaml_name"]
    if yaml_name == "<missing>":
        pytest.fail(f"strategy {name} is registered but no conf/strategy/*.yaml names it")
    return strategy_runs


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_every_strategy_runs_through_the_runner(name, yaml_name, runs):
    rec = runs(yaml_name)["record"]
    R = rec["matrix"]["values"]
    expected = {"mtl": 2}.get(name, 4)  # MTL trains the three tasks in one stage
    assert len(R) == expected and len(R[0]) == 3 and rec["strategy"]["name"] == runs(yaml_name)["strategy"].name
    assert rec["cost"]["trainable_params"] > 0 and all(math.isfinite(s["mean_loss"]) for s in rec["stages"])


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_every_strategy_has_a_yaml(name, yaml_name):
    assert yaml_name != "<missing>", f"strategy {name} is registered but no conf/strategy/*.yaml names it"


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_interrupted_and_resumed_run_gives_the_identical_record(name, yaml_name, runs, tmp_path, monkeypatch):
    clean = runs(yaml_name)["record"]
    cfg = strategy_run_cfg(yaml_name, tmp_path)

    def stop_after_first_checkpoint(stage):
        raise Interrupt  # right after stage 1's checkpoint is on disk (MTL's only stage included)

    monkeypatch.setattr(runner.PROGRESS, "stage_saved", stop_after_first_checkpoint)
    with pytest.raises(Interrupt):
        runner.run(cfg, None)
    monkeypatch.undo()
    assert not list(tmp_path.glob("runs/*.json"))
    resumed = load_record(runner.run(strategy_run_cfg(yaml_name, tmp_path), None))
    assert resumed["resumed"] == {"after_stages": [1], "attempts": 2}
    assert _quality(resumed) == _quality(clean)


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_state_dict_round_trips(name, yaml_name, runs):
    got = runs(yaml_name)
    tensors, meta = got["strategy"].state_dict()
    fresh = build(dict(got["cfg"].strategy))
    ctx, fresh, _ = runner.build_context(got["cfg"], fresh)
    fresh.load_state_dict(tensors, meta, ctx)
    t2, m2 = fresh.state_dict()
    assert sorted(t2) == sorted(tensors)
    assert all(torch.equal(t2[k], tensors[k]) for k in tensors)
    assert m2 == meta


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_eval_model_leaves_the_training_state_as_it_found_it(name, yaml_name, runs):
    changed = runs(yaml_name)["seen"]["eval_changed"]
    assert changed and not any(changed)


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_general_tasks_leave_the_training_state_as_they_found_it(name, yaml_name, runs):
    """lm-eval (HFLM puts the model in eval mode) under the strategy's eval_model, as after every evaluation."""
    changed = runs(yaml_name)["seen"]["general_changed"]
    assert changed == [False]


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_accumulation_steps_every_stage_remainder_and_leaves_no_gradient(name, yaml_name, runs):
    got = runs(yaml_name)
    stages = got["record"]["stages"]
    assert any(s["micro_batches"] % 2 == 1 for s in stages), "the set-up must leave an odd remainder somewhere"
    for s in stages:
        assert s["steps"] == math.ceil(s["micro_batches"] / 2), s
    assert all(left == [] for left in got["seen"]["grads_left"]), "a stage ended with gradients left behind"


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_kept_adapters_are_active_at_evaluation(name, yaml_name, runs):
    """Every adapter active at evaluation changes the scores when zeroed; per-task adapters are all active (for a
    strategy that uses task identity, each under the evaluation of some task: eval_task)."""
    from strategies.common.lora import lora_layers

    got = runs(yaml_name)
    ctx, s = got["seen"]["ctx"], got["strategy"]
    layers = lora_layers(ctx.model)
    if not layers:
        pytest.skip(f"{yaml_name} trains no LoRA adapter (full fine-tuning or soft prompts)")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    ctx.model.eval()
    seen = set()
    with s.eval_model(ctx), torch.no_grad():
        all_adapters = sorted({a for _, layer in layers for a in layer.lora_A})
        for task in ctx.stream.task_names:
            with s.eval_task(ctx, task):
                active = list(ctx.model.active_adapters)
                seen |= set(active)
                base = ctx.model(input_ids=ids).logits
                for a in active:
                    saved = {n: layer.lora_B[a].weight.detach().clone() for n, layer in layers if a in layer.lora_B}
                    for n, layer in layers:
                        if a in layer.lora_B:
                            layer.lora_B[a].weight.zero_()
                    zeroed = ctx.model(input_ids=ids).logits
                    for n, layer in layers:
                        if a in layer.lora_B:
                            layer.lora_B[a].weight.copy_(saved[n])
                    assert not torch.allclose(base, zeroed), f"adapter {a} is active at evaluation but changes nothing"
        assert [a for a in all_adapters if a.startswith("task")] == sorted(a for a in seen if a.startswith("task"))


class _NoPrompt:
    def length(self) -> int:
        return 0


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_kept_soft_prompts_are_active_at_evaluation(name, yaml_name, runs):
    """A strategy that puts soft prompts before the input (strategies/common/soft_prompt.py) has them in front of
    every evaluated task's inputs, and they change the scores."""
    from strategies.common.soft_prompt import SoftPrefix

    got = runs(yaml_name)
    ctx, s = got["seen"]["ctx"], got["strategy"]
    owners = [p for p in getattr(s, "parts", [s]) if isinstance(getattr(p, "prefix", None), SoftPrefix)]
    if not owners:
        pytest.skip(f"{yaml_name} puts no soft prompt before the input")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    ctx.model.eval()
    with s.eval_model(ctx), torch.no_grad():
        for task in ctx.stream.task_names:
            with s.eval_task(ctx, task):
                for owner in owners:
                    hooks = owner.prefix
                    assert hooks.source.length() > 0, f"no prompt in front of {task}'s inputs"
                    prompted = ctx.model(input_ids=ids).logits
                    source, hooks.source = hooks.source, _NoPrompt()
                    try:
                        bare = ctx.model(input_ids=ids).logits
                    finally:
                        hooks.source = source
                    assert not torch.allclose(prompted, bare), f"the prompts in front of {task} change nothing"


def test_batch_b_times_accumulation_k_trains_like_batch_kb(tmp_path, monkeypatch):
    """Token-weighted accumulation: 2 micro-batches of 2 rows (k = 2) give the gradient of 1 batch of 4 rows.

    The claim is about the accumulated gradient the optimizer receives, so that is what is compared (at the first
    optimizer step, where both runs hold the same weights): after an Adam step, rounding differences of
    near-zero gradients grow to about the learning rate and a weight comparison fails by rounding alone."""
    real = loop.stage_batches

    def fixed(items, cfg, stage, epoch, world, rank):
        rows = real(items, cfg, stage, epoch, world, rank)
        pool = sorted((e for b in rows for e in b), key=lambda e: (len(e.answer), e.label, e.prompt))
        short, long_ = pool[:4], pool[-4:]
        assert len(short[0].answer) < len(long_[-1].answer)
        # each global batch of 4 is 2 short-answer rows then 2 long-answer rows: the micro-batches of 2 differ
        flat = short[:2] + long_[:2] + short[2:] + long_[2:]
        size = cfg.trainer.batch_size
        return [flat[i : i + size] for i in range(0, len(flat), size)]

    monkeypatch.setattr(loop, "stage_batches", fixed)
    grads, tokens = {}, {}
    for name, over in (("kb", ["trainer.batch_size=4", "trainer.grad_accum=1"]),
                       ("b_k", ["trainer.batch_size=2", "trainer.grad_accum=2"])):
        cfg = compose_cfg(TINY_RUN + over + ["strategy=seq_lora", "stream.tasks=[dbpedia,amazon]",
                                             "trainer.max_steps_per_task=1", f"results_dir={tmp_path / name}"])
        s = build(dict(cfg.strategy))
        step, train_batch = s.before_optimizer_step, s.train_batch

        def capture(ctx, _step=step, _name=name):
            if ctx.stage == 1 and ctx.step == 0:  # the first window: both runs start from the same weights
                grads[_name] = {n: p.grad.detach().clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
            _step(ctx)

        def count(ctx, batch, items, _orig=train_batch, _name=name):
            if ctx.stage == 1 and ctx.step == 0:
                tokens.setdefault(_name, []).append(int((batch["labels"] != -100).sum()))
            return _orig(ctx, batch, items)

        s.before_optimizer_step, s.train_batch = capture, count
        runner.run(cfg, s)
    # the two micro-batches of the window hold different answer-token counts: a plain mean of micro-batch means
    # would weight them equally, and so differ from the batch of 4 (by about 7 % of the gradient here)
    assert len(tokens["b_k"]) == 2 and tokens["b_k"][0] != tokens["b_k"][1] and tokens["kb"] == [sum(tokens["b_k"])]
    assert grads["kb"].keys() == grads["b_k"].keys() and grads["kb"]
    # LoRA's B starts at zero, so at the first step only the B matrices have a gradient. Measured here: rounding
    # moves the accumulated gradient by 9e-7 of its largest entry, a mean of micro-batch means by 0.42
    scale = max(float(g.abs().max()) for g in grads["kb"].values())
    assert scale > 0
    for k, g in grads["kb"].items():
        torch.testing.assert_close(grads["b_k"][k], g, rtol=1e-3, atol=1e-3 * scale, msg=k)
