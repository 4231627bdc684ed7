"""A toy strategy written the way docs/adding_a_strategy.md says: one file, one YAML, no core edit.

LoRA, plus an L2 pull of the adapter towards zero with weight `beta`; it counts its hook calls so the test can
check that the runner drove it.
"""
from dataclasses import dataclass, field


from strategies import Hooks, LoraSettings, register
from strategies.common.lora import add_lora


@dataclass
class ToyConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)
    beta: float = 0.1


@register("toy_l2", ToyConfig)
class ToyL2(Hooks):
    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg
        self.calls = {"before_stage": 0, "loss": 0, "after_stage": 0}

    def prepare_model(self, model, ctx):
        return add_lora(model, self.cfg.lora, "default")

    def before_stage(self, ctx):
        self.calls["before_stage"] += 1

    def loss(self, ctx, batch, outputs, loss):
        self.calls["loss"] += 1
        l2 = sum(p.pow(2).sum() for p in ctx.model.parameters() if p.requires_grad)
        ctx.log("toy_l2", l2)
        return loss + self.cfg.beta * l2

    def after_stage(self, ctx):
        self.calls["after_stage"] += 1
