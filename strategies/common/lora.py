"""PEFT LoRA helpers shared by the LoRA-based strategies (public PEFT API only)."""
from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from strategies.base import LoraSettings, StrategyConfigError
from strategies.common.checks import ADAPTERS, check_lora


# the attention query and value projections (the papers' LoRA targets) under each architecture's names, tried in
# order by `target_modules: [auto]`: Llama/Qwen/Mistral/SmolLM/Phi, T5, GPT-2 (fused qkv), GPT-NeoX/Falcon/Bloom
QUERY_VALUE_NAMES = (("q_proj", "v_proj"), ("q", "v"), ("c_attn",), ("query_key_value",))


def _leaf_names(model) -> set[str]:
    # GPT-2's projections are transformers' Conv1D; a module that already carries an adapter is a LoraLayer
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, LoraLayer)) or type(m).__name__ == "Conv1D"}


def _model_type(model) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def resolve_targets(model, targets: list[str]) -> list[str]:
    """The module names LoRA wraps in `model`: `[auto]` picks the architecture's query/value projections; named
    targets must exist, or the run stops naming the model and what would match."""
    present = _leaf_names(model)
    if list(targets) == ["auto"]:
        for names in QUERY_VALUE_NAMES:
            if all(n in present for n in names):
                return list(names)
        raise StrategyConfigError(f"strategy lora.target_modules=[auto]: no query/value projection of a known "
                                  f"architecture in model type {_model_type(model)!r}; name the modules to adapt")
    missing = [t for t in targets if t not in present]
    if missing:
        hint = next((list(n) for n in QUERY_VALUE_NAMES if all(x in present for x in n)), None)
        raise StrategyConfigError(f"strategy lora.target_modules {missing} match no module of model type "
                                  f"{_model_type(model)!r}" + (f" (its query/value projections are {hint}; "
                                  "strategy.lora.target_modules=[auto] picks them)" if hint else ""))
    return list(targets)


def lora_config(s: LoraSettings, targets: list[str] | None = None, seq2seq: bool = False) -> LoraConfig:
    # the last guard for a config that does not check its LoRA settings itself: after the model loaded, but
    # before any adapter exists
    check_lora(s, "lora")
    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                      target_modules=list(targets or s.target_modules), bias="none",
                      task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")


def add_lora(model, settings: LoraSettings, adapter: str):
    """Wrap a plain model (or add an adapter to a PeftModel); only this adapter's weights train."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    targets = resolve_targets(base, list(settings.target_modules))
    config = lora_config(settings, targets, seq2seq=bool(getattr(base.config, "is_encoder_decoder", False)))
    if isinstance(model, PeftModel):
        model.add_adapter(adapter, config)
    else:
        model = get_peft_model(model, config, adapter_name=adapter)
    return model


def activate(model: PeftModel, active: list[str], train: list[str]) -> None:
    """Sum the outputs of all `active` adapters in the forward pass; only the `train` ones get gradients."""
    model.base_model.set_adapter(active if len(active) > 1 else active[0])
    for _, layer in lora_layers(model):
        for name in layer.lora_A:
            need = name in train
            layer.lora_A[name].weight.requires_grad_(need)
            layer.lora_B[name].weight.requires_grad_(need)


def lora_layers(model) -> list[tuple[str, LoraLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def adapter_weights(model, adapter: str) -> dict[str, torch.Tensor]:
    """{module.lora_A / module.lora_B: weight} of one adapter, e.g. for freezing checks and EMA updates."""
    out = {}
    for name, layer in lora_layers(model):
        if adapter in layer.lora_A:
            out[f"{name}.lora_A"] = layer.lora_A[adapter].weight
            out[f"{name}.lora_B"] = layer.lora_B[adapter].weight
    return out


def full_finetune(model):
    """Every weight trains (SeqFT); embeddings included, as in the O-LoRA/MIGU full-FT baselines."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def apply_adapter(model, kind: str, settings: LoraSettings, adapter: str = "default"):
    """The `adapter:` field of a strategy: lora (one PEFT adapter), full (full FT) or none (another part owns it)."""
    if kind == "lora":
        return add_lora(model, settings, adapter)
    if kind == "full":
        return full_finetune(model)
    if kind == "none":
        return model
    raise StrategyConfigError(f"adapter must be one of {', '.join(ADAPTERS)}, got {kind!r}")
