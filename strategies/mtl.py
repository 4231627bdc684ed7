"""MTL: joint training on the union of all tasks' training data in one stage (the nominal upper bound).

Its accuracy matrix has two rows (zero-shot, after joint training), so only AA is defined; BWT, FWT and
forgetting are reported as null.
"""
from dataclasses import dataclass, field

from strategies.base import Hooks, LoraSettings, register
from strategies.lora import apply_adapter


@dataclass
class MTLConfig:
    adapter: str = "lora"  # lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)


@register("mtl", MTLConfig)
class MTL(Hooks):
    def __init__(self, cfg: MTLConfig):
        self.cfg = cfg

    def prepare_model(self, model, ctx):
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def stages(self, tasks):
        return [list(tasks)]
