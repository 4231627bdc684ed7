"""Every option of every registered strategy refuses a wrong value when the strategy is built, with the key named,
in well under a second: nothing loads before the check (issue #13, item 2). The data, eval and stream settings do
the same when the run config is composed."""
import dataclasses
import re
import time

import pytest

import strategies  # noqa: F401  (registers the built-in strategies; imported once, not inside a timed call)
from benchmark.errors import ClbenchError
from strategies.base import _REGISTRY, StrategyConfigError, build, registered

NAN = float("nan")
LORA = [("lora", 8), ("lora.r", 0), ("lora.r", 2.5), ("lora.r", None), ("lora.alpha", 0), ("lora.dropout", 1.0),
        ("lora.target_modules", []), ("lora.target_modules", "q_proj")]
BUFFER = [("buffer", 500), ("buffer.policy", "fifo"), ("buffer.size", 0), ("buffer.fraction", 0.0),
          ("buffer.fraction", 1.5)]

# (strategy, option, a wrong value); the option is a dotted path into nested settings
BAD: list[tuple[str, str, object]] = [
    *(("seq_lora", o, v) for o, v in LORA),
    *(("inc_lora", o, v) for o, v in LORA),
    ("mtl", "adapter", "none"), *(("mtl", o, v) for o, v in LORA),
    *(("olora", o, v) for o, v in LORA),
    ("olora", "lambda1", -1.0), ("olora", "lambda1", NAN), ("olora", "lambda2", -0.1),
    ("olora", "lambda1_per_task", {"dbpdia": 5.0}), ("olora", "lambda1_per_task", [5.0]),
    ("olora", "lambda2_per_task", {"WiC": -0.3}),
    ("replay", "adapter", "lorra"), *(("replay", o, v) for o, v in LORA), ("replay", "mode", "mixed"),
    *(("replay", o, v) for o, v in BUFFER), ("replay", "ratio", -1.0), ("replay", "include_current", "yes"),
    ("replay", "include_current", True),  # with the default mode mix
    *(("ilora", o, v) for o, v in LORA), ("ilora", "ema_lambda", 1.5), ("ilora", "gamma", -1.0),
    ("ilora", "consistency", "l2"), ("ilora", "eval_learner", "both"), *(("ilora", o, v) for o, v in BUFFER),
    ("ilora", "buffer.policy", "fraction"), ("ilora", "ratio", NAN),
    ("gere", "adapter", "frozen"), *(("gere", o, v) for o, v in LORA), ("gere", "n_samples", 0),
    ("gere", "max_tokens", 1), ("gere", "per_batch", 0), ("gere", "loss", "mse"), ("gere", "weight", -1.0),
    ("gere", "weight", "dynamic"), ("gere", "sigma", -1.0), ("gere", "temperature", 0.0),
    ("migu", "adapter", "lorra"), ("migu", "threshold", 1.0), ("migu", "threshold", -0.1),
    ("migu", "mask_optimizer", "yes"), ("migu", "mask_first_task", 1),
    ("compose", "parts", [{"name": "replay"}]), ("compose", "parts", ["replay", "migu"]),
    ("ewc", "adapter", "none"), *(("ewc", o, v) for o, v in LORA), ("ewc", "ewc_lambda", -1.0),
    ("ewc", "ewc_lambda", NAN), ("ewc", "fisher", "true"), ("ewc", "fisher_batches", -1), ("ewc", "fisher_batches", 1.5),
    ("ewc", "online", "yes"), ("ewc", "gamma", 1.5),
    *(("lwf", o, v) for o, v in LORA), ("lwf", "alpha", -1.0), ("lwf", "temperature", 0.0),
    ("agem", "adapter", "qlora"), *(("agem", o, v) for o, v in LORA), *(("agem", o, v) for o, v in BUFFER),
    ("agem", "ref_batch", 0), ("agem", "ref_batch", 2.5),
    ("progprompt", "length", 0), ("progprompt", "length", 2.5), ("progprompt", "mlp", "yes"),
    ("progprompt", "bottleneck", 1), ("progprompt", "lr", 0.0), ("progprompt", "weight_decay", -1.0),
    ("progprompt", "task_prompts", "yes"),
    ("l2p", "pool", 0), ("l2p", "length", 0), ("l2p", "top_k", 11), ("l2p", "pull", -0.5), ("l2p", "query_tokens", 0),
    ("l2p", "init_scale", 0.0), ("l2p", "lr", NAN), ("l2p", "weight_decay", -1.0),
    *(("per_task", o, v) for o, v in LORA),
]
MIGU_LORA = [("migu", o, v) for o, v in LORA]


def _options(cls: type, prefix: str = "") -> set[str]:
    """Every settable option of a config dataclass, nested settings as dotted paths (lora.r) beside the block."""
    out = set()
    default = cls()
    for f in dataclasses.fields(cls):
        out.add(prefix + f.name)
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            out |= _options(type(value), f"{prefix}{f.name}.")
    return out


def _nest(option: str, value) -> dict:
    head, _, rest = option.partition(".")
    return {head: _nest(rest, value) if rest else value}


def test_the_table_covers_every_option_of_every_registered_strategy():
    covered = {(s, o) for s, o, _ in BAD + MIGU_LORA}
    # the built-in strategies: a test may have registered a toy one from the tests folder
    for name in (n for n in registered() if _REGISTRY[n].factory.__module__.startswith("strategies.")):
        cls = _REGISTRY[name].config_cls
        options = {"parts"} if name == "compose" else _options(cls)
        assert options == {o for s, o in covered if s == name}, name


@pytest.mark.parametrize("name,option,bad", BAD + MIGU_LORA)
def test_a_wrong_value_fails_at_build_naming_its_key(name, option, bad):
    t0 = time.perf_counter()
    with pytest.raises(StrategyConfigError) as e:
        build({"name": name, **_nest(option, bad)})
    elapsed = time.perf_counter() - t0
    message = str(e.value)
    assert re.match(rf"strategy {re.escape(name)}\.{re.escape(option)}\b", message), message
    assert "\n" not in message
    assert elapsed < 0.5, f"{elapsed:.2f} s: building a strategy must not load anything"


def test_a_composed_strategy_checks_its_parts_with_their_names():
    with pytest.raises(StrategyConfigError, match=r"^strategy replay\.ratio must be a number >= 0, got -1"):
        build({"name": "compose", "parts": [{"name": "replay", "ratio": -1}, {"name": "migu", "adapter": "none"}]})
    with pytest.raises(StrategyConfigError, match=r"^strategy migu: unknown key 'thresh'"):
        build({"name": "compose", "parts": [{"name": "replay"}, {"name": "migu", "thresh": 0.4}]})


@pytest.mark.parametrize("name", [n for n in registered() if n != "compose"])
def test_every_strategy_builds_from_its_defaults_and_accepts_the_boundaries(name):
    build({"name": name})
    cls = _REGISTRY[name].config_cls
    if "lora" in _options(cls):
        build({"name": name, "lora": {"r": 1, "dropout": 0.0, "target_modules": ["q_proj"]}})


def test_values_at_the_edge_of_each_range_are_accepted():
    build({"name": "replay", "ratio": 0.0, "buffer": {"fraction": 1.0}})
    build({"name": "replay", "mode": "interleave", "include_current": True, "buffer": {"policy": "reservoir"}})
    build({"name": "ilora", "ema_lambda": 1.0, "gamma": 0.0, "buffer": {"policy": "per_task", "size": 1}})
    build({"name": "gere", "max_tokens": 2, "sigma": 0.0, "weight": 0.0})
    build({"name": "olora", "lambda1": 0.0, "lambda1_per_task": {"dbpedia": 5.0}, "lambda2_per_task": {}})
    build({"name": "migu", "threshold": 0.0})


def test_gere_accepts_the_dynamic_weight():
    assert build({"name": "gere", "weight": "dy"}).cfg.weight == "dy"


def test_a_replay_buffer_made_directly_is_checked_too():
    from strategies.common.buffer import BufferConfig, ReplayBuffer

    with pytest.raises(StrategyConfigError, match=r"^buffer\.size must be an integer >= 1, got 0"):
        ReplayBuffer(BufferConfig(size=0), n_tasks=2, seed=0)


# ---------------------------------------------------------------- data, eval and stream settings


BAD_OVERRIDES = [
    ("eval.mode=x", "eval.mode"), ("eval.batch_size=0", "eval.batch_size"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"), ("eval.general_passages=-1", "eval.general_passages"),
    ("eval.general_tokens=1", "eval.general_tokens"),
    ("data.chat_template=x", "data.chat_template"), ("data.train_per_class=0", "data.train_per_class"),
    ("data.test_per_class=0", "data.test_per_class"),
    ("stream.name=order7", "stream.name"), ("stream.tasks=[dbpedia,yelpp]", "stream.tasks"),
    ("stream.missing=ignore", "stream.missing"),
]


@pytest.mark.parametrize("override,key", BAD_OVERRIDES)
def test_a_wrong_run_setting_fails_when_the_config_is_composed(override, key):
    from benchmark.config import compose

    with pytest.raises(ClbenchError, match=rf"^{re.escape(key)} must be"):
        compose([override])


def test_a_wrong_type_fails_in_hydra_with_the_key_named():
    from benchmark.config import compose

    with pytest.raises(Exception, match=r"data\.task_prefix"):
        compose(["data.task_prefix=maybe"])


# ---------------------------------------------------------------- how a module is written does not matter


@pytest.mark.parametrize("module,name", [("tests.toy.freeze_half", "toy_l2"),  # no `from __future__ import annotations`
                                         ("strategies.olora", "olora")])  # annotations deferred (strings)
def test_a_numeric_option_is_type_checked_whether_or_not_annotations_are_deferred(module, name):
    import importlib

    key = {"toy_l2": "beta", "olora": "lambda1"}[name]
    deferred = "from __future__ import annotations" in importlib.import_module(module).__loader__.get_source(module)
    assert deferred == (name == "olora")  # the two styles are really both tested
    with pytest.raises(StrategyConfigError, match=rf"^strategy {name}\.{key}: expected a number, got 'abc'"):
        build({"name": name, "module": module, key: "abc"})
    with pytest.raises(StrategyConfigError, match=rf"^strategy {name}\.lora\.r: expected a number, got 'x'"):
        build({"name": name, "module": module, "lora": {"r": "x"}})


def test_the_identity_of_a_strategy_does_not_depend_on_how_its_yaml_is_written():
    from benchmark.records.store import config_hash
    from strategies.base import complete

    terse = {"name": "olora", "lambda2": 0.3}
    full = {"name": "olora", **dataclasses.asdict(_REGISTRY["olora"].config_cls()), "lambda2": 0.3}
    assert complete(terse) == complete(full) == full
    parts = {"name": "compose", "parts": [{"name": "olora"}, {"name": "migu", "adapter": "none"}]}
    filled = complete(parts)
    assert filled["parts"][1]["threshold"] == 0.7 and filled["parts"][0]["lambda1"] == 0.5
    assert complete(filled) == filled
    cfg = {"seed": 1, "model": {"name": "tiny-llama"}}
    assert config_hash({**cfg, "strategy": complete(terse)}) == config_hash({**cfg, "strategy": complete(full)})
