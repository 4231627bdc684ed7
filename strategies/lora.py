"""PEFT LoRA helpers shared by the LoRA-based strategies (public PEFT API only)."""
from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from strategies.base import LoraSettings, StrategyConfigError
from strategies.checks import check_lora


def lora_config(s: LoraSettings) -> LoraConfig:
    # the last guard for a config that does not check its LoRA settings itself (MIGU's): after the model loaded,
    # but before any adapter exists
    check_lora(s, "lora")
    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules),
                      bias="none", task_type="CAUSAL_LM")


def add_lora(model, settings: LoraSettings, adapter: str):
    """Wrap a plain model (or add an adapter to a PeftModel); only this adapter's weights train."""
    if isinstance(model, PeftModel):
        model.add_adapter(adapter, lora_config(settings))
    else:
        model = get_peft_model(model, lora_config(settings), adapter_name=adapter)
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
    raise StrategyConfigError(f"adapter must be lora, full or none, got {kind!r}")
