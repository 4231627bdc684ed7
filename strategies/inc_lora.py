"""IncLoRA: a new LoRA per task, earlier ones frozen and all summed at inference; O-LoRA with lambda1 = lambda2 = 0."""
from dataclasses import dataclass, field

from strategies.base import LoraSettings, register
from strategies.olora import OLoRA, OLoRAConfig


@dataclass
class IncLoRAConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)


@register("inc_lora", IncLoRAConfig)
class IncLoRA(OLoRA):
    def __init__(self, cfg: IncLoRAConfig):
        super().__init__(OLoRAConfig(lora=cfg.lora, lambda1=0.0, lambda2=0.0))

    def loss(self, ctx, batch, outputs, loss):
        return loss  # no regulariser: skip computing terms that are multiplied by zero
