"""MTL: joint training on the union of all tasks' training data in one stage (the nominal upper bound).

Its accuracy matrix has two rows (zero-shot, after joint training), so only AA is defined; BWT, FWT and
forgetting are reported as null.
"""
from dataclasses import dataclass, field

from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_adapter, check_lora
from strategies.common.lora import apply_adapter


@dataclass
class MTLConfig:
    adapter: str = "lora"  # lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        # none would leave nothing to train: MTL owns the stage plan, so it is always the part that owns the model
        check_adapter(self.adapter, "adapter", ("lora", "full"))
        check_lora(self.lora, "lora")


@register("mtl", MTLConfig)
class MTL(Hooks):
    def prepare_model(self, model, ctx):
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def stages(self, tasks):
        return [list(tasks)]
