"""The contract every registered strategy must keep, on the tiny model through the real runner.

Parametrised over `strategies.registered()`: a new strategy is covered without editing this file, through the
YAML(s) in conf/strategy/ that name it (a strategy without one fails here). Each configuration is run once
uninterrupted (with spies) and once interrupted after stage 1 and resumed, with batch 2 and gradient
accumulation 2 on 2 examples per class, so that amazon (5 micro-batches) and MTL's joint stage (23) leave odd remainders.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

from benchmark.runner import loop, recipe as runner
from benchmark.records.store import load_record
from strategies import registered
from strategies.base import build
from tests.conftest import CONF, TINY_RUN, compose_cfg

ACCUM = ["trainer.batch_size=2", "trainer.grad_accum=2", "data.train_per_class=2"]


def _yamls_by_name() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in sorted((CONF / "strategy").glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        doc = doc.get("strategy", doc)  # a global-package file (olora_long) nests the strategy
        out.setdefault(doc["name"], []).append(p.stem)
    return out


CASES = [(name, y) for name in registered() for y in (_yamls_by_name().get(name) or ["<missing>"])]


class Interrupt(Exception):
    pass


def _cfg(yaml_name: str, results: Path, *extra: str):
    return compose_cfg(TINY_RUN + ACCUM + [f"strategy={yaml_name}", f"results_dir={results}", *extra])


def _state(model) -> dict:
    return {"training": model.training,
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "values": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "adapters": list(model.active_adapters) if isinstance(model, PeftModel) else []}


def _same_state(a: dict, b: dict) -> bool:
    return (a["training"] == b["training"] and a["requires_grad"] == b["requires_grad"] and a["adapters"] == b["adapters"]
            and all(torch.equal(a["values"][k], b["values"][k]) for k in a["values"]))


def _quality(rec: dict) -> dict:
    return {"matrix": rec["matrix"]["values"], "metrics": rec["metrics"],
            "losses": [(s["steps"], s["mean_loss"]) for s in rec["stages"]]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted spied run per configuration, shared by the contract tests."""
    cache: dict[str, dict] = {}

    def get(yaml_name: str) -> dict:
        if yaml_name in cache:
            return cache[yaml_name]
        out = tmp_path_factory.mktemp(yaml_name)
        cfg = _cfg(yaml_name, out)
        s = build(dict(cfg.strategy))
        seen: dict = {"grads_left": [], "eval_changed": [], "ctx": None}
        orig_after = s.after_stage

        def after_stage(ctx, _orig=orig_after):
            _orig(ctx)
            seen["grads_left"].append([n for n, p in ctx.model.named_parameters() if p.grad is not None])
            before = _state(ctx.model)
            with s.eval_model(ctx):
                pass
            seen["eval_changed"].append(not _same_state(before, _state(ctx.model)))
            seen["ctx"] = ctx

        s.after_stage = after_stage
        rec = load_record(runner.run(cfg, s))
        cache[yaml_name] = {"record": rec, "strategy": s, "seen": seen, "cfg": cfg}
        return cache[yaml_name]

    return get


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_every_strategy_has_a_yaml(name, yaml_name):
    assert yaml_name != "<missing>", f"strategy {name} is registered but no conf/strategy/*.yaml names it"


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_interrupted_and_resumed_run_gives_the_identical_record(name, yaml_name, runs, tmp_path, monkeypatch):
    if yaml_name == "<missing>":
        pytest.fail(f"no YAML for {name}")
    clean = runs(yaml_name)["record"]
    cfg = _cfg(yaml_name, tmp_path)

    def stop_after_first_checkpoint(stage):
        raise Interrupt  # right after stage 1's checkpoint is on disk (MTL's only stage included)

    monkeypatch.setattr(runner.PROGRESS, "stage_saved", stop_after_first_checkpoint)
    with pytest.raises(Interrupt):
        runner.run(cfg, None)
    monkeypatch.undo()
    assert not list(tmp_path.glob("runs/*.json"))
    resumed = load_record(runner.run(_cfg(yaml_name, tmp_path), None))
    assert resumed["resumed"] == {"after_stages": [1], "attempts": 2}
    assert _quality(resumed) == _quality(clean)


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_state_dict_round_trips(name, yaml_name, runs):
    if yaml_name == "<missing>":
        pytest.fail(f"no YAML for {name}")
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
    if yaml_name == "<missing>":
        pytest.fail(f"no YAML for {name}")
    changed = runs(yaml_name)["seen"]["eval_changed"]
    assert changed and not any(changed)


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_accumulation_steps_every_stage_remainder_and_leaves_no_gradient(name, yaml_name, runs):
    if yaml_name == "<missing>":
        pytest.fail(f"no YAML for {name}")
    got = runs(yaml_name)
    stages = got["record"]["stages"]
    assert any(s["micro_batches"] % 2 == 1 for s in stages), "the set-up must leave an odd remainder somewhere"
    for s in stages:
        assert s["steps"] == math.ceil(s["micro_batches"] / 2), s
    assert all(left == [] for left in got["seen"]["grads_left"]), "a stage ended with gradients left behind"


@pytest.mark.parametrize("name,yaml_name", CASES)
def test_kept_adapters_are_active_at_evaluation(name, yaml_name, runs):
    """Every adapter active at evaluation changes the scores when zeroed; per-task adapters are all active."""
    from strategies.common.lora import lora_layers

    if yaml_name == "<missing>":
        pytest.fail(f"no YAML for {name}")
    got = runs(yaml_name)
    ctx, s = got["seen"]["ctx"], got["strategy"]
    layers = lora_layers(ctx.model)
    if not layers:
        pytest.skip(f"{yaml_name} trains no adapter (full fine-tuning)")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    ctx.model.eval()
    with s.eval_model(ctx), torch.no_grad():
        active = list(ctx.model.active_adapters)
        all_adapters = sorted({a for _, layer in layers for a in layer.lora_A})
        assert [a for a in all_adapters if a.startswith("task")] == [a for a in active if a.startswith("task")]
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
    ctx.model.train()


def test_batch_b_times_accumulation_k_trains_like_batch_kb(tmp_path, monkeypatch):
    """Token-weighted accumulation: 4 micro-batches of 2 rows (k = 2) give the weights of 2 batches of 4 rows."""
    from strategies.common.lora import adapter_weights

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
    weights = {}
    for name, over in (("kb", ["trainer.batch_size=4", "trainer.grad_accum=1"]),
                       ("b_k", ["trainer.batch_size=2", "trainer.grad_accum=2"])):
        cfg = compose_cfg(TINY_RUN + over + ["strategy=seq_lora", "stream.tasks=[dbpedia,amazon]", "trainer.lr=0.05",
                                             f"results_dir={tmp_path / name}"])
        s = build(dict(cfg.strategy))
        orig = s.after_stage

        def after_stage(ctx, _orig=orig, _name=name):
            _orig(ctx)
            weights.setdefault(_name, []).append({k: v.detach().clone() for k, v in adapter_weights(ctx.model, "default").items()})

        s.after_stage = after_stage
        rec = load_record(runner.run(cfg, s))
        assert [st["steps"] for st in rec["stages"]] == [2, 2]
    for a, b in zip(weights["kb"], weights["b_k"]):
        for k in a:
            # Adam turns float-rounding differences of near-zero gradients into ~1e-5; a mean of micro-batch means
            # instead of the token-weighted mean moves weights by ~lr here
            assert torch.allclose(a[k], b[k], atol=1e-4), (k, (a[k] - b[k]).abs().max())
    # the two micro-batches of a window have different answer-token counts, so a plain mean of means would differ
    assert any(not torch.equal(a[k], weights["kb"][0][k]) for a in weights["kb"][1:] for k in a)
