"""SeqFT: full fine-tuning of every weight, task after task; no regulariser, no replay (lower bound)."""
from dataclasses import dataclass

from strategies.base import Hooks, register
from strategies.common.lora import full_finetune


@dataclass
class SeqFTConfig:
    pass


@register("seq_ft", SeqFTConfig)
class SeqFT(Hooks):
    def prepare_model(self, model, ctx):
        return full_finetune(model)
