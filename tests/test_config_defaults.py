"""Defaults live in the config dataclasses only; conf/*/*.yaml and conf/config.yaml state what differs.

Each option of each config group composes, and no YAML states a value equal to the default of the field it sets:
a restated default would silently stop following the dataclass when the default changes."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from benchmark.config import (EvalConfig, LoggerConfig, ModelConfig, RunConfig, StreamConfig, TrainerConfig, compose,
                              register_configs)
from strategies.base import _REGISTRY, LoraSettings, build
from task_streams import DataConfig, available_streams

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = {"trainer": TrainerConfig, "model": ModelConfig, "data": DataConfig, "eval": EvalConfig,
          "logger": LoggerConfig}
STRATEGY_KEYS = ("defaults", "name", "module")  # not fields of a strategy's config dataclass


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def restated(stated: dict, default, where: str, merged: bool = True, skip: tuple[str, ...] = ()) -> list[str]:
    """'<where>.<key>' for each key of `stated` equal to its default in the dataclass instance `default`, or not a
    field of it. A nested block is compared key by key: against the owner's default block when Hydra merges the
    YAML over the strategy_defaults node (`merged`), else (a compose part, built by strategies.base.build) against
    the block class's own defaults."""
    fields = {f.name for f in dataclasses.fields(default)}
    out = []
    for key, value in stated.items():
        if key in skip:
            continue
        if key not in fields:
            out.append(f"{where}.{key} (not a field of {type(default).__name__})")
            continue
        base = getattr(default, key)
        if dataclasses.is_dataclass(base) and isinstance(value, dict):
            out += restated(value, base if merged else type(base)(), f"{where}.{key}", merged)
        elif value == _plain(base):
            out.append(f"{where}.{key}")
    return out


def _strategy_config(name: str):
    return _REGISTRY[name].config_cls()


def _check_strategy_node(node: dict, where: str) -> list[str]:
    if node["name"] == "compose":
        out = []
        for i, part in enumerate(node["parts"]):
            out += restated(part, _strategy_config(part["name"]), f"{where}.parts[{i}]", merged=False, skip=STRATEGY_KEYS)
        return out
    return restated(node, _strategy_config(node["name"]), where, skip=STRATEGY_KEYS)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_a_group_option_composes_and_states_only_what_differs(group, option):
    cfg = compose([f"{group}={option}"])
    stated = _load(CONF / group / f"{option}.yaml")
    assert restated(stated, GROUPS[group](), f"{group}/{option}.yaml") == []
    for key, value in stated.items():
        assert _plain(getattr(getattr(cfg, group), key)) == value  # what the file states is what runs


def test_the_top_level_config_states_no_default_of_runconfig():
    stated = _load(CONF / "config.yaml")
    top = {k: v for k, v in stated.items() if k not in ("defaults", "hydra")}
    assert restated(top, RunConfig(), "config.yaml") == []
    assert compose([]).seed == RunConfig().seed and compose([]).results_dir == RunConfig().results_dir


@pytest.mark.parametrize("option", _options("strategy"))
def test_a_strategy_option_composes_builds_and_states_only_what_differs(option):
    cfg = compose([f"strategy={option}"])
    strategy = build(dict(cfg.strategy))
    path = CONF / "strategy" / f"{option}.yaml"
    stated = _load(path)
    is_global = path.read_text().startswith("# @package _global_")
    node = stated["strategy"] if is_global else stated
    problems = _check_strategy_node(node, f"strategy/{option}.yaml")
    for group, values in stated.items():  # a global file may set other groups beside the strategy
        if is_global and group not in ("defaults", "strategy"):
            problems += restated(values, GROUPS[group](), f"strategy/{option}.yaml {group}")
    assert problems == []
    if node["name"] != "compose":
        # every key at the dataclass default unless stated: `strategy.<key>=v` finds the key, records list it
        assert stated["defaults"] == [f"/strategy_defaults/{node['name']}@{'strategy' if is_global else '_here_'}"]
        fields = {f.name for f in dataclasses.fields(_REGISTRY[node["name"]].config_cls)}
        assert set(cfg.strategy) == {"name"} | fields
        expected = _REGISTRY[node["name"]].config_cls(**_built(node))
        assert cfg.strategy == {"name": node["name"], **dataclasses.asdict(expected)}
    assert strategy.name == (node["name"] if node["name"] != "compose" else "+".join(p["name"] for p in node["parts"]))


def _built(node: dict) -> dict:
    """The config dataclass's keyword arguments for a YAML node: its default, the stated values merged over it."""
    default = _strategy_config(node["name"])
    kwargs = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
    for key, value in node.items():
        if key in STRATEGY_KEYS:
            continue
        kwargs[key] = dataclasses.replace(kwargs[key], **value) if isinstance(value, dict) and dataclasses.is_dataclass(kwargs[key]) else value
    return kwargs


def test_the_check_flags_a_restated_default():
    # the YAMLs as they were before issue #13: each of these restated a default
    assert restated({"device": "cpu", "batch_size": 8, "gradient_checkpointing": False}, TrainerConfig(), "t") == [
        "t.batch_size", "t.gradient_checkpointing"]
    lora = {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["auto"]}
    assert _check_strategy_node({"name": "seq_lora", "lora": lora}, "s") == ["s.lora.r", "s.lora.alpha", "s.lora.dropout",
                                                                               "s.lora.target_modules"]
    assert _check_strategy_node({"name": "replay", "buffer": {"policy": "fraction"}, "modee": "mix"}, "s") == [
        "s.buffer.policy", "s.modee (not a field of ReplayConfig)"]
    assert _check_strategy_node({"name": "compose", "parts": [{"name": "olora", "lambda1": 0.5}, {"name": "migu"}]},
                                "s") == ["s.parts[0].lambda1"]


def test_a_changed_lora_default_reaches_every_composed_strategy(monkeypatch):
    """LoraSettings (strategies/base.py) is the one place of the LoRA defaults: no YAML restates them."""
    defaults = LoraSettings.__init__.__defaults__
    try:
        with monkeypatch.context() as m:
            m.setattr(LoraSettings.__init__, "__defaults__", (16,) + defaults[1:])
            assert LoraSettings().r == 16
            seen = 0
            for option in _options("strategy"):
                s = build(dict(compose([f"strategy={option}"]).strategy))
                for part in getattr(s, "parts", [s]):
                    lora = getattr(getattr(part, "cfg", None), "lora", None)
                    if lora is not None:
                        assert lora.r == 16, option
                        seen += 1
            assert seen >= 10
    finally:
        register_configs()  # the ConfigStore keeps what it was last given: put the real defaults back


def test_a_nested_override_keeps_the_other_defaults_of_its_block():
    s = compose(["strategy=replay", "strategy.buffer.size=100"]).strategy
    assert s["buffer"] == {"policy": "fraction", "size": 100, "fraction": 0.02}  # not BufferConfig's reservoir
    s = compose(["strategy=replay_interleave", "strategy.lora.r=4"]).strategy
    assert s["buffer"]["policy"] == "reservoir" and s["lora"]["alpha"] == 32 and s["lora"]["r"] == 4


# ---------------------------------------------------------------- streams


@pytest.mark.parametrize("name", available_streams())
def test_every_stream_of_streams_yaml_is_a_stream_choice(name):
    assert compose([f"stream={name}"]).stream == StreamConfig(name=name)


def test_streams_have_no_yaml_copy_and_the_usual_forms_compose():
    assert not (CONF / "stream").exists()  # task_streams/streams.yaml is the one list
    assert compose([]).stream.name == "demo"
    assert compose(["+experiment=long_repro"]).stream == StreamConfig(name="long_order6", missing="skip")
    assert compose(["stream=long_order6", "stream.missing=error"]).stream.missing == "error"
    with pytest.raises(Exception, match="stream/order7"):
        compose(["stream=order7"])


def test_a_stream_sweep_composes_each_stream():
    # what `clbench-run -m stream=standard_order1,standard_order2` runs: Hydra's basic sweeper, one job per value
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["stream=standard_order1,standard_order2", "seed=1"])
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert [compose(list(job)).stream.name for job in jobs] == ["standard_order1", "standard_order2"]


def test_the_data_settings_have_one_class():
    import benchmark.config

    assert not hasattr(benchmark.config, "DataSettings")
    assert {f.name: f.type for f in dataclasses.fields(RunConfig)}["data"] in (DataConfig, "DataConfig")
    assert compose(["data=full"]).data == DataConfig()
    assert compose([]).data == DataConfig(train_per_class=16, test_per_class=8)
