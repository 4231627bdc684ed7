"""A-GEM, Averaged Gradient Episodic Memory (Chaudhry et al., ICLR 2019): an episodic memory keeps examples of the
finished tasks; before every optimizer step of a later task, a reference gradient g_ref of the answer loss on up to
`ref_batch` memory examples is taken at the current weights, and when the step's gradient g would increase that
loss (g . g_ref < 0) it is projected:

    g <- g - (g . g_ref / g_ref . g_ref) g_ref

both flattened over every trainable parameter; else g is used as it is.

Reference: facebookresearch/agem @4542149 (the authors' TensorFlow code, `model/model.py`): a reference gradient every
step from up to 256 memory examples of all earlier tasks, the projection above, plain SGD afterwards. No
language-model repository implements it faithfully (LLMCL's version stores no examples and projects after the
optimizer step, so it never changes an update; not copied). Deliberate differences (docs/strategies.md,
Faithfulness): the memory is replay's (`buffer`: int(2 % x |train|) random examples of each finished task, MIGU's
LoRAReplay memory) so that A-GEM and replay differ only in how they use it, where the authors keep a fixed number
per class; the projected gradient then goes through clipping and AdamW, the suite's optimizer for every strategy,
where the authors' follows with SGD; LoRA by default (`adapter: full` for full fine-tuning). Under DDP every process
draws its own memory examples and the reference gradients are averaged, so every process projects alike. The flat
gradients are fp32 copies of every trainable parameter: cheap for a LoRA, several model-sized tensors under
`adapter: full` on a large model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.api import IGNORE, answer_loss
from strategies.base import Hooks, LoraSettings, register
from strategies.common.buffer import BufferConfig, ReplayBuffer
from strategies.common.checks import check_adapter, check_lora, check_nested, check_range
from strategies.common.lora import apply_adapter


@dataclass
class AGEMConfig:
    adapter: str = "lora"  # lora | full | none (another composed part owns the model)
    lora: LoraSettings = field(default_factory=LoraSettings)
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(policy="fraction", fraction=0.02))
    ref_batch: int = 256  # memory examples per reference gradient (all of them when fewer are stored)

    def __post_init__(self):
        check_adapter(self.adapter, "adapter")
        check_lora(self.lora, "lora")
        check_nested(self.buffer, "buffer", BufferConfig)
        self.buffer.check("buffer")
        check_range(self.ref_batch, "ref_batch", 1, integer=True)


def project(g: torch.Tensor, g_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A-GEM's projection of the flat gradient g against the flat reference g_ref; whether it applied."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g, False
    return g - (dot / torch.dot(g_ref, g_ref).clamp(min=torch.finfo(g_ref.dtype).tiny)) * g_ref, True


@register("agem", AGEMConfig)
class AGEM(Hooks):
    def __init__(self, cfg: AGEMConfig):
        super().__init__(cfg)
        self.buffer: ReplayBuffer | None = None
        self.projected = 0  # optimizer steps whose gradient was projected (logged)

    def prepare_model(self, model, ctx):
        self.buffer = ReplayBuffer.for_run(self.cfg.buffer, ctx)
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def reference_gradient(self, ctx, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The answer loss's gradient on up to ref_batch memory examples (token-weighted over micro-batches of
        trainer.batch_size), flat, at the current weights; .grad is left untouched."""
        items = self.buffer.sample(self.cfg.ref_batch)
        size = ctx.cfg.trainer.batch_size
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        batches = [ctx.encoder.collate(c) for c in chunks]
        tokens = [int((b["labels"] != IGNORE).sum()) for b in batches]
        total = sum(tokens)
        flat = torch.zeros(sum(p.numel() for p in params), device=ctx.device)
        for b, n in zip(batches, tokens):
            with ctx.accelerator.autocast():
                ce, _ = answer_loss(ctx, b, False, model=ctx.model)  # the unwrapped model: no DDP reduction
            grads = torch.autograd.grad(ce * (n / total), params, allow_unused=True)
            flat += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                               for g, p in zip(grads, params)])
        if ctx.accelerator.num_processes > 1:
            flat = ctx.accelerator.reduce(flat, reduction="mean")
        return flat

    def before_optimizer_step(self, ctx) -> None:
        if ctx.stage < 2 or len(self.buffer) == 0:
            return
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
        g, applied = project(g, self.reference_gradient(ctx, params))
        ctx.log("agem_projected", float(applied))
        if not applied:
            return
        self.projected += 1
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = g[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def after_stage(self, ctx) -> None:
        self.buffer.store_finished([e for t in ctx.tasks for e in ctx.encoder.encode(t, t.train)], ctx.stage - 1)
        self.buffer.share(ctx.accelerator)  # each process's draws resume as its own

    def state_dict(self):
        tensors, meta = self.buffer.state("buffer/")
        return tensors, {**meta, "projected": self.projected}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        self.buffer.load("buffer/", tensors, meta)
        self.projected = meta["projected"]
