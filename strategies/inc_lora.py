"""IncLoRA: a new LoRA per task, earlier ones frozen and all summed at inference. It is O-LoRA with both lambdas at
zero, so it is registered as that configuration of O-LoRA rather than as a class of its own."""
from dataclasses import dataclass, field

from strategies.base import LoraSettings, register
from strategies.common.checks import check_lora
from strategies.olora import OLoRA, OLoRAConfig


@dataclass
class IncLoRAConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        check_lora(self.lora, "lora")


register("inc_lora", IncLoRAConfig, lambda cfg: OLoRA(OLoRAConfig(lora=cfg.lora, lambda1=0.0, lambda2=0.0)))
