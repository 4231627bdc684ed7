"""SeqLoRA: one fixed-size LoRA trained through the whole stream; nothing merged, nothing frozen (O-LoRA #29)."""
from dataclasses import dataclass, field

from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_lora
from strategies.common.lora import add_lora


@dataclass
class SeqLoRAConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        check_lora(self.lora, "lora")


@register("seq_lora", SeqLoRAConfig)
class SeqLoRA(Hooks):
    def prepare_model(self, model, ctx):
        return add_lora(model, self.cfg.lora, "default")
