"""MIGU (Du et al., EMNLP Findings 2024): update only the output units with the largest output magnitudes.

Per linear layer W (d_out output units), on the current batch (all micro-batches of an accumulation window):
    n_i = mean over real tokens of |h_i|,  normalised by sum_i n_i (ranking unchanged)
    keep unit i iff n_i >= quantile(n, T)          -> the top (1 - T) fraction is updated
    W <- W - eta * (M (.) grad W)                   (rows of W.grad = output units)
With LoRA: A (r units) is ranked by |x A|, B (d_out units) by the layer's full output |x W + s x A B|.
Faithfulness choices, stated: (1) under AdamW a zero gradient still moves a weight (momentum, weight decay);
with `mask_optimizer` (default) masked rows are restored after the step, weights and Adam moments alike, so
masked units do not move at all. To keep memory near plain fine-tuning, the unmasked weights take one ordinary
optimizer step and then the masked weights are stepped one at a time (AdamW skips parameters without a
gradient), so only one weight's copy for restoring exists at any moment, not a copy of the model; (2) magnitudes ignore padding positions (the code counted them); (3) the first
task is trained without a mask, as in the code; (4) a tied lm_head/embedding is never masked.
Composable: `adapter: none` leaves the model to another part (MIGU + replay, MIGU + O-LoRA), and masks
whatever LoRA/linear weights are trainable when each task starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.api import base_model, is_seq2seq, replaying_checkpointed_forward
from strategies.base import Hooks, LoraSettings, register
from strategies.common.checks import check_adapter, check_lora, check_range
from strategies.common.lora import apply_adapter, lora_layers


@dataclass
class MIGUConfig:
    adapter: str = "lora"  # one of strategies.common.checks.ADAPTERS
    lora: LoraSettings = field(default_factory=LoraSettings)
    threshold: float = 0.7  # T: the fraction of output units whose gradient is masked
    mask_optimizer: bool = True
    mask_first_task: bool = False

    def __post_init__(self):
        check_range(self.threshold, "threshold", 0, 1, high_open=True)
        check_adapter(self.adapter, "adapter")
        check_lora(self.lora, "lora")


def unit_mask(magnitude: torch.Tensor, threshold: float) -> torch.Tensor:
    """True for the output units to update: magnitude at or above the T-quantile of the L1-normalised magnitudes."""
    norm = magnitude / magnitude.sum().clamp(min=1e-12)
    return norm >= torch.quantile(norm.float(), threshold).to(norm.dtype)


class _Tracked:
    """One weight whose rows are masked, with the module whose output ranks them."""

    def __init__(self, weight: torch.nn.Parameter, module: torch.nn.Module, owner: "MIGU"):
        self.weight, self.sum, self.count = weight, None, 0
        self.handle = module.register_forward_hook(self._hook)
        self.owner = owner

    def _hook(self, module, inputs, output):
        # the replay of a checkpointed layer in backward would count the batch again (or only some layers)
        if not (self.owner.collecting and torch.is_grad_enabled()) or replaying_checkpointed_forward():
            return
        out = output[0] if isinstance(output, tuple) else output
        mask = self.owner.mask_for(inputs)
        # sums and counts stay on the device: an int() here would wait for the accelerator in every layer
        with torch.no_grad():
            a = out.detach().abs().float()
            if mask is not None and mask.shape == a.shape[:2]:
                m = mask.to(a.dtype)
                s = torch.einsum("bld,bl->d", a, m)
                n = m.sum()
            else:
                s = a.reshape(-1, a.shape[-1]).sum(0)
                n = a[..., 0].numel()
            self.sum = s if self.sum is None else self.sum + s
            self.count = self.count + n

    def reset(self) -> None:
        self.sum, self.count = None, 0


@register("migu", MIGUConfig)
class MIGU(Hooks):
    holds_parameter_refs = True

    def __init__(self, cfg: MIGUConfig):
        super().__init__(cfg)
        self.tracked: list[_Tracked] = []
        self.collecting = False
        self.stats: dict[str, float] = {}
        self._masked: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.token_mask: torch.Tensor | None = None  # attention mask of the batch being forwarded: pads are not ranked
        # while an encoder-decoder's decoder runs: the encoder states its cross-attention reads, and their mask
        self.cross: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._mask_hooks: list = []

    def _capture_mask(self, module, args, kwargs) -> None:
        self.token_mask = kwargs.get("attention_mask")
        self.cross = (kwargs.get("encoder_hidden_states"), kwargs.get("encoder_attention_mask"))

    def mask_for(self, inputs) -> torch.Tensor | None:
        """The real-token mask of a tracked module's input: the running stack's own mask, except for the
        cross-attention projections that read the encoder's states (the very tensor the decoder was given)."""
        states, mask = self.cross
        x = inputs[0] if inputs else None
        if states is not None and torch.is_tensor(x) and x.shape == states.shape and x.data_ptr() == states.data_ptr():
            return mask
        return self.token_mask

    def _watch_mask(self, model) -> None:
        """Forward pre-hooks on the decoder stack (and an encoder-decoder's encoder stack), called with keyword
        arguments by every LM head and not checkpointed, note each batch's attention mask before the layers whose
        outputs MIGU ranks (each stack runs whole before the next)."""
        for h in self._mask_hooks:
            h.remove()
        base = base_model(model)
        stacks = [base.get_encoder()] if is_seq2seq(base) else []
        stacks.append(base.get_decoder() if hasattr(base, "get_decoder") else base)
        self._mask_hooks = [st.register_forward_pre_hook(self._capture_mask, with_kwargs=True) for st in stacks]

    def refuse(self, engine, mixed_precision):
        if engine == "deepspeed":
            return "DeepSpeed steps the optimizer inside backward, before MIGU's mask could act"
        if mixed_precision == "fp16" and self.cfg.mask_optimizer:
            return "fp16's loss scaler allows one optimizer step per update; mask_optimizer steps weights one at a time"
        return super().refuse(engine, mixed_precision)

    def prepare_model(self, model, ctx):
        return apply_adapter(model, self.cfg.adapter, self.cfg.lora)

    def _targets(self, model) -> list[tuple[torch.nn.Parameter, torch.nn.Module]]:
        layers = lora_layers(model)
        if layers:
            pairs = []
            for _, layer in layers:
                for name, a in layer.lora_A.items():
                    if a.weight.requires_grad:
                        pairs += [(a.weight, a), (layer.lora_B[name].weight, layer)]
            return pairs
        tied = {id(model.get_input_embeddings().weight)} if model.get_input_embeddings() is not None else set()
        return [(m.weight, m) for m in model.modules()
                if isinstance(m, torch.nn.Linear) and m.weight.requires_grad and id(m.weight) not in tied]

    def before_stage(self, ctx) -> None:
        for t in self.tracked:
            t.handle.remove()
        self._watch_mask(ctx.model)  # per stage: a composed O-LoRA may have wrapped the model anew
        self.tracked = [_Tracked(w, m, self) for w, m in self._targets(ctx.model)]
        self.active = ctx.stage > 1 or self.cfg.mask_first_task
        self.collecting = self.active

    def before_optimizer_step(self, ctx) -> None:
        """Zero the gradient rows of the masked units (by multiplication: boolean indexing or `.item()` would make
        the host wait for the device at every layer of every step)."""
        self._masked = []
        if not self.active:
            return
        kept, total = [], 0
        for t in self.tracked:
            if t.sum is None or t.weight.grad is None:
                continue
            mag = t.sum / torch.as_tensor(t.count).clamp(min=1)
            if ctx.accelerator.num_processes > 1:  # one mask for all processes, as the code's all-reduce
                mag = ctx.accelerator.reduce(mag, reduction="mean")
            keep = unit_mask(mag, self.cfg.threshold)
            rows = keep.view(-1, *([1] * (t.weight.dim() - 1)))  # output units are the rows of W.grad
            t.weight.grad.mul_(rows.to(t.weight.grad.dtype))
            kept.append(keep.sum())
            total += keep.numel()
            self._masked.append((t.weight, rows))
        if total:
            ctx.log("migu_kept_fraction", torch.stack(kept).sum() / total)

    def optimizer_step(self, ctx) -> None:
        if not (self.cfg.mask_optimizer and self._masked):
            ctx.optimizer.step()
            return
        masked_step(ctx.optimizer, self._masked)

    def after_optimizer_step(self, ctx) -> None:
        self._masked = []
        for t in self.tracked:
            t.reset()

    def after_stage(self, ctx) -> None:
        self.collecting = False


def masked_step(optimizer, masked: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    """One optimizer step in which the rows where `rows` is False stay exactly as they were (weights and every
    optimizer state of the weight's shape). Unmasked weights step together; each masked weight then steps alone,
    with every other gradient detached, so that only that weight's old values are held for restoring."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper keeps the torch optimizer here
    params = [p for g in inner.param_groups for p in g["params"]]
    grads = {id(p): p.grad for p in params}
    for w, _ in masked:
        w.grad = None
    optimizer.step()
    for p in params:
        p.grad = None
    for w, rows in masked:
        w.grad = grads[id(w)]
        old_state = {k: v.clone() for k, v in inner.state.get(w, {}).items() if torch.is_tensor(v) and v.shape == w.shape}
        old = w.detach().clone()
        inner.step()
        with torch.no_grad():
            w.copy_(torch.where(rows, w, old))
            st = inner.state[w]
            for k, v in old_state.items():
                st[k].copy_(torch.where(rows, st[k], v))
        w.grad = None
        del old, old_state
    for p in params:
        p.grad = grads[id(p)]
