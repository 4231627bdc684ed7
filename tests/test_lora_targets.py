"""LoRA targets per architecture (issue 17, item 4): `target_modules: [auto]` picks the attention query/value
projections under each architecture's own names; named targets that a model lacks stop the run with the model
type and what would match."""
import pytest
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

from benchmark.modeling.model import tiny_model
from strategies.base import LoraSettings, StrategyConfigError, build
from strategies.common.lora import add_lora, lora_layers, resolve_targets


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0))


def _t5():
    return T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))


@pytest.mark.parametrize("make, expected", [(lambda: tiny_model()[0], ["q_proj", "v_proj"]), (_gpt2, ["c_attn"]),
                                            (_t5, ["q", "v"])])
def test_auto_picks_each_architectures_query_and_value_projections(make, expected):
    model = make()
    assert resolve_targets(model, ["auto"]) == expected
    wrapped = add_lora(model, LoraSettings(target_modules=["auto"]), "default")
    names = {n.rsplit(".", 1)[-1] for n, _ in lora_layers(wrapped)}
    assert names == set(expected)


def test_named_targets_the_model_lacks_fail_naming_the_model_type_and_the_fix():
    with pytest.raises(StrategyConfigError, match=r"\['q_proj', 'v_proj'\] match no module of model type 'gpt2' "
                                                  r"\(its query/value projections are \['c_attn'\]"):
        add_lora(_gpt2(), LoraSettings(target_modules=["q_proj", "v_proj"]), "default")
    with pytest.raises(StrategyConfigError, match=r"^strategy lora.target_modules \['nope'\] match no module of "
                                                  r"model type 'llama' \(its query/value projections are"):
        resolve_targets(tiny_model()[0], ["k_proj", "nope"])  # only the missing name is named


def test_a_second_adapter_finds_the_modules_the_first_one_wrapped():
    model = add_lora(tiny_model()[0], LoraSettings(), "task1")
    model = add_lora(model, LoraSettings(), "task2")  # O-LoRA and IncLoRA add one adapter per task
    assert {a for _, layer in lora_layers(model) for a in layer.lora_A} == {"task1", "task2"}


def test_auto_is_an_accepted_value_and_an_override_wins():
    assert build({"name": "seq_lora", "lora": {"target_modules": ["auto"]}}).cfg.lora.target_modules == ["auto"]
    model = tiny_model()[0]
    assert resolve_targets(model, ["k_proj"]) == ["k_proj"]


def test_auto_targets_keep_the_config_hash_of_the_earlier_default():
    """[auto] became the default after records with [q_proj, v_proj] were published; it picks exactly those wherever
    they exist, so the two are one identity, while other target lists stay distinct (composed parts included)."""
    from benchmark.records.store import config_hash

    def cfg(targets, composed=False):
        part = {"name": "olora", "lora": {"r": 8, "target_modules": targets}}
        strategy = {"name": "compose", "parts": [part, {"name": "migu", "adapter": "none"}]} if composed else part
        return {"model": {"name": "smollm2-135m"}, "strategy": strategy, "seed": 1}

    for composed in (False, True):
        assert config_hash(cfg(["auto"], composed)) == config_hash(cfg(["q_proj", "v_proj"], composed))
        assert config_hash(cfg(["auto"], composed)) != config_hash(cfg(["q", "v"], composed))
        assert config_hash(cfg(["auto"], composed)) != config_hash(cfg(["q_proj"], composed))
