"""Peak training memory per strategy on CPU, with and without activation checkpointing, and what it implies for
the papers' 7-8B models on 80 GB GPUs (issue #15, item 3).

    python bench/memory.py                         # tiny, SmolLM2-135M, a random 0.41B Llama (~15 min, 2 cores)
    python bench/memory.py --bf16                  # also the bf16-weights slope on CPU (+5 min here)
    python bench/memory.py --models tiny --out /tmp/m.json
    python bench/memory.py --table bench/results/memory.json       # reprint a saved result
    python bench/memory.py --gpu /tmp/memory_gpu.json               # on a CUDA GPU: the 7-8B shapes measured

Every measurement runs in a fresh child process (this script with --child): the model is built exactly as a run
builds it (`recipe.build_context`, fp32 unless stated, one torch thread), then the strategy trains through
`loop.train_stage` on a two-task stream (agnews -> amazon; one step on the first task, two on the second, so that
buffers, frozen adapters, masks and replay are live). Every training row is cut or tiled to exactly SEQ tokens, so
a micro-batch holds batch x SEQ tokens and the memory per token can be fitted. The peak is the training phase's
own: the peak-RSS mark is reset (/proc/self/clear_refs) when training starts and read (VmHWM) when it ends;
`loaded` is the resident memory at that start (weights, data, libraries). No evaluation runs.

Extrapolation to 7-8B (written to the JSON with its assumptions):
  weights           parameters x 2 bytes (bf16), replicated on every GPU for LoRA (DDP)
  LoRA              adapter parameters x 16 bytes (fp32 weight, gradient, two AdamW moments)
  full FT           parameters x (16 + 4) bytes over N GPUs (FSDP full shard): weight, gradient, fp32 master and two
                    moments (ZeRO's count of 16), plus the parameter-sized temporary of torch's foreach AdamW step
  activations       bytes per token = k x hidden x layers: k fitted from the slope of the training peak between two
                    batch sizes (CPU: at the largest model measured; bf16 from a bf16-weights run; or, given a --gpu
                    result, the GPU's own slope under bf16 autocast); times the tokens a strategy forwards with
                    gradients (replay rows, GeRe's general rows), plus its own tensors (strategy_cost)
  GPUs (80 GB)      90 % usable; LoRA fits one GPU or not at all; full FT needs FSDP, refused for the strategies
                    that hold parameter references (O-LoRA, IncLoRA, I-LoRA, MIGU)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

# conf/strategy YAMLs, each with its cost formula in strategy_cost below; tests/test_scale.py checks that they
# cover every registered strategy (compositions cost what their parts cost)
STRATEGIES = ("seq_lora", "seq_ft", "replay", "replay_interleave", "olora", "inc_lora", "ilora", "migu", "migu_ft",
              "gere", "mtl", "ewc", "lwf", "per_task", "progprompt", "l2p", "agem")
FULL_FT = ("seq_ft", "migu_ft")
# GeRe's reference pass over its whole general set would dominate a short measurement; per-step memory does not
# depend on the size of that set
OVERRIDES = {"gere": ["strategy.n_samples=8"]}
# a Llama-shaped model built in code (random weights): hidden 1024, 24 layers, LLaMA's MLP ratio, untied embeddings
LLAMA_04B = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816, vocab_size=49152, tie_word_embeddings=False)
MODELS = {"tiny": ("tiny", {}), "smollm2-135m": ("smollm2-135m", {}), "llama-0.4b": ("tiny", LLAMA_04B)}
# the papers' models (config.json of meta-llama/Llama-2-7b-hf and Llama-3.1-8B)
TARGETS = {
    "LLaMA-2-7B": dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32000, tied=False),
    "LLaMA-3.1-8B": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256, tied=False),
}
SEQ = 64  # tokens per training row
RESULT = "\nmemory-result: "
GPU_GB = 80
GPU_USABLE = 0.9  # CUDA context, allocator fragmentation and NCCL buffers take the rest
# torch's default (foreach) AdamW step holds one parameter-sized fp32 temporary: full FT of LLaMA-2-7B on fp32 weights
# peaked at 134.8 GB on an H200 = 20 bytes/parameter, whatever the batch (bench/results/memory_gpu.json)
ADAMW_TEMP = 4
GB = 1e9


# ----------------------------------------------------------------------------------------------- child
def _status_mb(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def _reset_peak() -> None:
    # "5" resets the peak resident set (VmHWM) to the current one (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")


def _fixed_length(items, seq: int):
    """Each row cut or tiled to exactly `seq` tokens (answer kept), so every micro-batch holds batch x seq tokens."""
    out = []
    for e in items:
        room = seq - len(e.answer)
        prompt = (e.prompt * math.ceil(room / max(len(e.prompt), 1)))[-room:]
        out.append(dataclasses.replace(e, prompt=tuple(prompt)))
    return out


def measure(spec: dict) -> dict:
    import torch

    from benchmark.config import compose
    from benchmark.runner.loop import train_stage
    from benchmark.runner.recipe import build_context

    model, tiny = MODELS[spec["model"]]
    b, steps = spec["batch"], spec["steps"]
    per_class = math.ceil(b * steps / 4) + 1  # agnews has 4 classes, amazon 5
    cfg = compose([f"model={model}", f"model.dtype={spec['dtype']}", f"strategy={spec['strategy']}",
                   *OVERRIDES.get(spec["strategy"], []), "stream.tasks=[agnews,amazon]",
                   f"data.train_per_class={per_class}", "data.test_per_class=1", "eval.general_passages=0",
                   "trainer.device=cpu", f"trainer.batch_size={b}", f"trainer.max_steps_per_task={steps}",
                   f"trainer.max_prompt_tokens={spec['seq']}", f"trainer.gradient_checkpointing={spec['ckpt']}",
                   "trainer.num_threads=1", "leaderboard=false", "resume=false"])
    cfg.model.tiny = dict(tiny)
    torch.manual_seed(0)
    ctx, strat, _ = build_context(cfg)
    rows = {t.name: _fixed_length(ctx.encoder.encode(t, t.train), spec["seq"]) for t in ctx.stream.tasks}
    stages = strat.stages(ctx.stream.tasks)[: spec.get("stages", 2)]
    load_peak = _status_mb("VmHWM")
    _reset_peak()
    loaded = _status_mb("VmRSS")
    t0 = time.perf_counter()
    padded = []
    for s, tasks in enumerate(stages, 1):
        ctx.stage, ctx.tasks = s, tasks
        strat.before_stage(ctx)
        pool = [e for group in zip(*(rows[t.name] for t in tasks)) for e in group]  # MTL: tasks interleaved
        items = strat.train_items(ctx, pool[: b * (steps if s == len(stages) else 1)])
        stats = train_stage(ctx, strat, items)
        padded.append(stats["padded_tokens"] / max(stats["micro_batches"], 1))
        strat.after_stage(ctx)
    peak = _status_mb("VmHWM")
    return {**spec, "parameters": ctx.model_info["parameters"],
            "trainable": sum(p.numel() for p in ctx.model.parameters() if p.requires_grad),
            "hidden": ctx.model.config.hidden_size, "layers": ctx.model.config.num_hidden_layers,
            "tokens_per_micro_batch": round(padded[-1], 1), "load_peak_mb": round(load_peak, 1),
            "loaded_mb": round(loaded, 1), "peak_mb": round(peak, 1), "train_extra_mb": round(peak - loaded, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------------------------- plan
def plan(models: list[str], bf16: bool = False) -> list[dict]:
    """What to measure in ~15 minutes on two busy cores: every strategy on the small models; at 0.41B (10-40 s a step
    on one core) only SeqLoRA and SeqFT; two batch sizes for the per-token slope; with bf16, bf16 weights too."""
    specs = []

    def add(model, strategy, ckpt, batch, steps, dtype="float32", stages=2):
        specs.append(dict(model=model, strategy=strategy, ckpt=ckpt, batch=batch, seq=SEQ, steps=steps, dtype=dtype,
                          stages=stages))

    for ckpt in (False, True):
        # checkpointing acts on the decoder layers alone, the same way under every strategy: with it, SeqLoRA and SeqFT
        if "tiny" in models:
            for s in STRATEGIES if not ckpt else ("seq_lora", "seq_ft"):
                add("tiny", s, ckpt, 4, 2)
        if "smollm2-135m" in models:
            for s in STRATEGIES if not ckpt else ("seq_lora", "seq_ft"):
                add("smollm2-135m", s, ckpt, 4, 2)
            for s in ("seq_lora", "seq_ft"):
                add("smollm2-135m", s, ckpt, 8, 2)
            if bf16 and not ckpt:  # 2-4 minutes each on CPUs without bf16 matrix units
                for b in (4, 8):
                    add("smollm2-135m", "seq_lora", ckpt, b, 2, "bfloat16")
        if "llama-0.4b" in models:
            # one task: SeqLoRA and SeqFT do nothing different on the second; two steps so that AdamW's states,
            # the gradients and a step's activations coexist
            for b in (2, 4):
                add("llama-0.4b", "seq_lora", ckpt, b, 2, stages=1)
            add("llama-0.4b", "seq_ft", ckpt, 2, 2, stages=1)
    return specs


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {**spec, "error": f"exit {p.returncode}: {tail}"}
    return json.loads(p.stdout.rsplit(RESULT, 1)[1])


# ----------------------------------------------------------------------------------------------- GPU check
def _gpu_step(model, opt, batch: int, seq: int, vocab: int, gen) -> float:
    """One training step as train_stage takes it: answer-only cross-entropy on the last two positions (logits only
    there), bf16 autocast, clipping, AdamW."""
    import torch

    ids = torch.randint(3, vocab, (batch, seq), device="cuda", generator=gen)
    keep = torch.arange(seq - 3, seq - 1, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, -2:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _replay_hooks_once(model, batch: int, seq: int, vocab: int, gen) -> dict:
    """Forward-hook calls on every LoRA layer during one checkpointed step: those outside a replay must be exactly one
    per layer (MIGU's statistics), however many the replay in backward (on CUDA, in autograd's own thread) adds."""
    import torch

    from benchmark.modeling.model import replaying_checkpointed_forward
    from strategies.common.lora import lora_layers

    calls = {"forward": 0, "replay": 0}

    def hook(*_):
        calls["replay" if replaying_checkpointed_forward() else "forward"] += 1

    handles = [m.register_forward_hook(hook) for _, m in lora_layers(model)]
    ids = torch.randint(3, vocab, (batch, seq), device="cuda", generator=gen)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(input_ids=ids, logits_to_keep=1).logits.float().sum().backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    return {**calls, "layers": len(handles)}


def gpu_check(shapes: dict, batch: int, seq: int) -> dict:
    """Peak CUDA memory of one training step (the second, when AdamW's states exist) of randomly initialised models of
    the papers' shapes: LoRA on bf16 weights and full fine-tuning on fp32 weights (bf16 autocast, fp32 AdamW: 16
    bytes/parameter), with and without activation checkpointing, at batch/2 and batch rows of seq tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmark.modeling.model import enable_activation_checkpointing
    from strategies.base import LoraSettings
    from strategies.common.lora import add_lora

    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": batch, "seq": seq, "runs": []}
    for name, t in shapes.items():
        for mode in ("lora", "full"):
            cfg = LlamaConfig(hidden_size=t["hidden"], num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                              num_key_value_heads=t["kv_heads"], intermediate_size=t["intermediate"],
                              vocab_size=t["vocab"], tie_word_embeddings=t["tied"])
            torch.cuda.empty_cache()
            try:
                with torch.device("cuda"):
                    model = LlamaForCausalLM(cfg).to(torch.bfloat16 if mode == "lora" else torch.float32)
            except torch.OutOfMemoryError:
                out["runs"].append({"model": name, "mode": mode, "error": "OOM building the model"})
                continue
            model = add_lora(model, LoraSettings(), "default") if mode == "lora" else model
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            gen = torch.Generator("cuda").manual_seed(0)
            weights = torch.cuda.memory_allocated()
            for ckpt in (False, True):
                if ckpt:
                    enable_activation_checkpointing(model)
                for b in (batch // 2, batch):
                    row = {"model": name, "mode": mode, "ckpt": ckpt, "batch": b, "seq": seq, "weights_gb": round(weights / GB, 2)}
                    try:
                        _gpu_step(model, opt, b, seq, t["vocab"], gen)
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        t0 = time.perf_counter()
                        row["loss"] = _gpu_step(model, opt, b, seq, t["vocab"], gen)
                        torch.cuda.synchronize()
                        row["step_s"] = round(time.perf_counter() - t0, 3)
                        row["peak_gb"] = round(torch.cuda.max_memory_allocated() / GB, 2)
                        row["reserved_gb"] = round(torch.cuda.max_memory_reserved() / GB, 2)
                    except torch.OutOfMemoryError:
                        row["error"] = "OOM"
                        opt.zero_grad(set_to_none=True)
                        torch.cuda.empty_cache()
                    out["runs"].append(row)
                    print(json.dumps(row), flush=True)
            if mode == "lora":
                out.setdefault("hook_calls", {})[name] = _replay_hooks_once(model, 2, 64, t["vocab"], gen)
            del model, opt
    return out


# ----------------------------------------------------------------------------------------------- fit and extrapolate
def _find(rows, **want):
    return [r for r in rows if "error" not in r and all(r[k] == v for k, v in want.items())]


def fit_k(rows: list[dict]) -> dict:
    """Bytes of activations per token per (hidden x layers), from the slope of the training peak between the two batch
    sizes measured, per model, trainable set (lora | full), checkpointing and dtype."""
    fits = {}
    for r in rows:
        if "error" in r:
            continue
        kind = "full" if r["strategy"] in FULL_FT else "lora"
        if r["strategy"] not in ("seq_lora", "seq_ft"):
            continue
        key = (r["model"], kind, r["ckpt"], r["dtype"])
        fits.setdefault(key, []).append(r)
    out = {}
    for (model, kind, ckpt, dtype), rs in fits.items():
        by_tokens = {}
        for r in rs:
            by_tokens.setdefault(r["tokens_per_micro_batch"], r)
        if len(by_tokens) < 2:
            continue
        (t1, r1), (t2, r2) = sorted(by_tokens.items())[0], sorted(by_tokens.items())[-1]
        per_token = (r2["peak_mb"] - r1["peak_mb"]) * 2**20 / (t2 - t1)
        out[f"{model}/{kind}/{'ckpt' if ckpt else 'no_ckpt'}/{dtype}"] = {
            "model": model, "kind": kind, "ckpt": ckpt, "dtype": dtype, "bytes_per_token": round(per_token),
            "k": round(per_token / (r1["hidden"] * r1["layers"]), 2), "tokens": [t1, t2]}
    return out


def _k(fits: dict, kind: str, ckpt: bool, dtype: str) -> tuple[float | None, str]:
    """The fitted k for LoRA or full FT. Full FT keeps at least LoRA's activations (and every Linear's input besides),
    but its peak is often AdamW's step, which the slope between batch sizes does not see: then LoRA's k."""
    k, src = _k_fit(fits, kind, ckpt, dtype)
    if kind == "full":
        kl, src_l = _k_fit(fits, "lora", ckpt, dtype)
        if kl is not None and (k is None or kl > k):
            return kl, f"{src_l} (LoRA's: the full-FT peak is AdamW's step)"
    return k, src


def _k_fit(fits: dict, kind: str, ckpt: bool, dtype: str) -> tuple[float | None, str]:
    """k of the largest model measured for this setting; where bf16 was not measured, the fp32 k times the bf16/fp32
    ratio of the LoRA fits without checkpointing."""
    order = ("llama-0.4b", "smollm2-135m", "tiny")
    tag = "ckpt" if ckpt else "no_ckpt"
    for m in order:
        f = fits.get(f"{m}/{kind}/{tag}/{dtype}")
        if f and f["k"] > 0:
            return f["k"], f"{m} {dtype}"
    if dtype == "bfloat16":  # full FT has no bf16 measurement: the fp32 k times the LoRA bf16/fp32 ratio
        k32, src = _k_fit(fits, kind, ckpt, "float32")
        for m in order:  # the ratio without checkpointing, the only one measured in bf16
            a, b = fits.get(f"{m}/lora/no_ckpt/bfloat16"), fits.get(f"{m}/lora/no_ckpt/float32")
            if k32 and a and b and a["k"] > 0 and b["k"] > 0:
                return k32 * a["k"] / b["k"], f"{src} x bf16/fp32 ratio of {m} LoRA"
        if k32:  # no bf16 run: activations of half the size
            return k32 / 2, f"{src} / 2"
    return None, "not measured"


def llama_params(t: dict) -> int:
    h, kv = t["hidden"], t["hidden"] * t["kv_heads"] // t["heads"]
    layer = h * h * 2 + h * kv * 2 + 3 * h * t["intermediate"] + 2 * h  # q, o; k, v; gate, up, down; 2 norms
    return t["layers"] * layer + t["vocab"] * h * (1 if t["tied"] else 2) + h


def lora_params(t: dict, r: int = 8) -> int:
    """LoRA r on q_proj and v_proj (the strategies' default)."""
    h, kv = t["hidden"], t["hidden"] * t["kv_heads"] // t["heads"]
    return t["layers"] * r * ((h + h) + (h + kv))


# the papers' settings that size the strategies' own state at 7-8B
PAPER = dict(tasks=15, gere_samples=1000, gere_tokens=563, gere_per_batch=2)
# hold parameter references or switch adapters per module (strategies/base.py)
REFUSE_FSDP = ("olora", "inc_lora", "ilora", "migu", "migu_ft", "lwf", "per_task", "progprompt", "l2p")
# the soft prompts' defaults (strategies/progprompt.py, strategies/l2p.py)
PROMPT_ROWS, PROMPT_MLP, L2P_POOL = 10, 800, (10, 5, 3)


def strategy_cost(name: str, t: dict, tokens: int) -> dict:
    """What a strategy adds at a 7-8B shape, by its definition: the tokens it forwards with gradients per micro-batch
    (x tokens), GPU bytes of its own state and transient tensors, host bytes (GeRe's reference states)."""
    h, lp, vocab = t["hidden"], lora_params(t), t["vocab"]
    c = {"kind": "full" if name in FULL_FT else "lora", "x_tokens": 1.0, "gpu_extra": 0.0, "host_extra": 0.0}
    if name in ("olora", "inc_lora"):  # one frozen fp32 adapter per earlier task
        c["gpu_extra"] = (PAPER["tasks"] - 1) * lp * 4
    elif name == "replay_interleave":  # a replayed row per current row (ratio 1)
        c["x_tokens"] = 2.0
    elif name == "ilora":  # replayed rows (ratio 1), slow adapter, the slow learner's hidden states of them (bf16)
        c["x_tokens"] = 2.0
        c["gpu_extra"] = lp * 4 + (t["layers"] + 1) * tokens * h * 2
    elif name == "gere":  # general rows with full-vocabulary logits; base-model states and labels kept on the host
        g = PAPER["gere_per_batch"] * PAPER["gere_tokens"]
        c["x_tokens"] = 1 + g / tokens
        c["gpu_extra"] = g * vocab * (2 + 4 + 4)  # bf16 logits, their fp32 copy, its gradient
        c["host_extra"] = PAPER["gere_samples"] * PAPER["gere_tokens"] * h * 5 + vocab * h * 4
    elif name == "migu_ft":  # the largest masked weight (lm_head) and its two moments, copied for one step
        c["gpu_extra"] = vocab * h * 12
    elif name == "ewc":  # a fp32 Fisher and anchor of the adapter per earlier task, on the GPU
        c["gpu_extra"] = (PAPER["tasks"] - 1) * lp * 4 * 2
    elif name == "lwf":  # the teacher adapter, its forward (no gradient) and both answer-span logits in fp32
        c["x_tokens"] = 1.0  # the teacher's forward keeps no activations for backward
        c["gpu_extra"] = lp * 4 + tokens * vocab * 4 * 2
    elif name == "per_task":  # one frozen fp32 adapter per earlier task
        c["gpu_extra"] = (PAPER["tasks"] - 1) * lp * 4
    elif name == "agem":  # a reference forward and backward of up to 256 memory rows (in micro-batches of the
        # training batch, so activations as a training micro-batch) and two flat fp32 gradients of the adapter
        c["gpu_extra"] = lp * 4 * 2
    elif name == "progprompt":  # every task's rows in front of each input; per task a prompt and its MLP, the
        # current one with AdamW states (16 B/param), the earlier ones frozen fp32 (4 B/param); counted in the
        # "lora" kind (frozen base, small trainable state), whose LoRA states it does not have
        mlp = PROMPT_ROWS * h + h * PROMPT_MLP + PROMPT_MLP * PROMPT_MLP // 2 + PROMPT_MLP // 2 * h
        c["x_tokens"] = 1 + PAPER["tasks"] * PROMPT_ROWS / tokens
        c["gpu_extra"] = mlp * 16 + (PAPER["tasks"] - 1) * mlp * 4
    elif name == "l2p":  # top_k x length rows in front of each input; the pool and its keys with AdamW states
        pool, length, top = L2P_POOL
        c["x_tokens"] = 1 + top * length / tokens
        c["gpu_extra"] = (pool * length + pool) * h * 16
    return c


def extrapolate(fits: dict, tokens: int, gpu: dict | None = None) -> dict:
    """Per target and strategy: GPU memory per process and 80 GB GPUs needed, from the fitted activations k (GPU-
    measured k where a GPU run is given, else the CPU fit), with and without checkpointing."""
    usable = GPU_GB * GPU_USABLE
    gpu_k = gpu_fits(gpu) if gpu else {}
    out = {}
    for name, t in TARGETS.items():
        p, lp = llama_params(t), lora_params(t)
        row = {"parameters": p, "lora_parameters": lp, "tokens_per_micro_batch": tokens,
               "weights_gb": {"bf16": round(2 * p / GB, 1), "fp32": round(4 * p / GB, 1)},
               "lora_states_gb": round(16 * lp / GB, 3), "full_ft_states_gb": round(16 * p / GB, 1),
               "adamw_step_temporaries_gb": round(ADAMW_TEMP * p / GB, 1), "strategies": {}}
        for s in STRATEGIES:
            c = strategy_cost(s, t, tokens)
            cell = {"host_extra_gb": round(c["host_extra"] / GB, 1)}
            for ckpt in (False, True):
                tag = "ckpt" if ckpt else "no_ckpt"
                k, src = gpu_k.get(f"{c['kind']}/{tag}", (None, None))
                k32_full, k32_lora = _k(fits, "full", ckpt, "float32")[0], _k(fits, "lora", ckpt, "float32")[0]
                if k is None and c["kind"] == "full" and f"lora/{tag}" in gpu_k and k32_full and k32_lora:
                    # full FT keeps more inputs (every Linear's, for its weight gradient): the CPU ratio to LoRA's
                    k = gpu_k[f"lora/{tag}"][0] * k32_full / k32_lora
                    src = f"{gpu_k[f'lora/{tag}'][1]} x CPU full/LoRA ratio"
                if k is None:
                    k, src = _k(fits, c["kind"], ckpt, "bfloat16")
                if k is None:
                    cell[tag] = {"gpu_gb": None, "gpus_80gb": None, "k_from": src}
                    continue
                act = k * t["hidden"] * t["layers"] * tokens * c["x_tokens"] / GB + c["gpu_extra"] / GB
                if c["kind"] == "lora":  # DDP: every GPU holds the whole model
                    total = 2 * p / GB + 16 * lp / GB + act
                    gpus = 1 if total <= usable else None
                else:  # FSDP full shard: weights, gradients, master weights, moments and AdamW's temporaries / N
                    per_param = 16 + ADAMW_TEMP
                    gpus = math.ceil(per_param * p / GB / (usable - act)) if act < usable else None
                    gpus = None if s in REFUSE_FSDP and gpus and gpus > 1 else gpus
                    total = per_param * p / GB / (gpus or 1) + act
                cell[tag] = {"gpu_gb": round(total, 1), "gpus_80gb": gpus, "activations_gb": round(act, 1),
                             "k": round(k, 2), "k_from": src}
            row["strategies"][s] = cell
        out[name] = row
    return out


def gpu_fits(gpu: dict) -> dict:
    """k from the GPU run (bf16 autocast): the slope of the peak between its two batch sizes at the largest shape."""
    out = {}
    runs = [r for r in gpu.get("runs", []) if "peak_gb" in r]
    for model in ("LLaMA-2-7B", "LLaMA-3.1-8B", "llama-0.4b"):
        t = TARGETS.get(model) or dict(hidden=1024, layers=24)
        for mode in ("lora", "full"):
            for ckpt in (False, True):
                rs = sorted((r for r in runs if r["model"] == model and r["mode"] == mode and r["ckpt"] == ckpt),
                            key=lambda r: r["batch"])
                key = f"{mode}/{'ckpt' if ckpt else 'no_ckpt'}"
                if len(rs) < 2 or key in out or rs[-1]["peak_gb"] <= rs[0]["peak_gb"]:
                    continue  # full FT's peak is AdamW's step, not the activations: no slope
                per_token = (rs[-1]["peak_gb"] - rs[0]["peak_gb"]) * GB / ((rs[-1]["batch"] - rs[0]["batch"]) * rs[0]["seq"])
                out[key] = (per_token / (t["hidden"] * t["layers"]), f"{model} on {gpu['device']}, bf16 autocast")
    return out


def strategy_factors(rows: list[dict], model: str) -> dict:
    """Each strategy's training-phase extra memory over SeqLoRA's (SeqFT's for full FT) on one model: how much more
    its buffers, adapters, replayed rows and extra forwards cost at that size."""
    out = {}
    for ckpt in (False, True):
        for r in _find(rows, model=model, ckpt=ckpt, dtype="float32", batch=4):
            base = _find(rows, model=model, ckpt=ckpt, dtype="float32", batch=4,
                         strategy="seq_ft" if r["strategy"] in FULL_FT else "seq_lora")
            if base and base[0]["train_extra_mb"] > 0:
                out.setdefault(r["strategy"], {})["ckpt" if ckpt else "no_ckpt"] = round(
                    r["train_extra_mb"] / base[0]["train_extra_mb"], 2)
    return out


def _gb(cell: dict) -> str:
    return " / ".join("n/a" if cell[t]["gpu_gb"] is None else f"{cell[t]['gpu_gb']:.1f}" for t in ("no_ckpt", "ckpt"))


def _gpus(strategy: str, cell: dict) -> str:
    def one(n):
        return str(n) if n else ("no (FSDP refused)" if strategy in REFUSE_FSDP else "no")

    return " / ".join(one(cell[t]["gpus_80gb"]) for t in ("no_ckpt", "ckpt"))


def target_table(doc: dict) -> list[str]:
    """Per strategy at 7B and 8B: GB per GPU and 80 GB GPUs needed, without / with checkpointing."""
    x = doc.get("extrapolation_gpu_k") or doc["extrapolation"]
    names = list(x)
    factors = next(iter(v for k, v in doc["strategy_extra_vs_base"].items() if k == "smollm2-135m"), {})
    head = "| strategy | 135M CPU: training extra vs base |" + "".join(
        f" {n}: GB per GPU | {n}: 80 GB GPUs |" for n in names)
    lines = [head, "|---|---|" + "---|---|" * len(names)]
    for s in STRATEGIES:
        f = factors.get(s, {}).get("no_ckpt", "")
        lines.append(f"| {s} | {f} |" + "".join(f" {_gb(x[n]['strategies'][s])} | {_gpus(s, x[n]['strategies'][s])} |"
                                                for n in names))
    return lines


def gpu_table(doc: dict) -> list[str]:
    gpu = doc.get("gpu_measured")
    if not gpu:
        return []
    lines = [f"| measured on {gpu['device']}, {gpu['batch']} x {gpu['seq']} tokens | weights GB | peak GB, no ckpt | "
             "peak GB, ckpt | CPU-fit estimate, no ckpt / ckpt |", "|---|---|---|---|---|"]
    for model in TARGETS:
        for mode in ("lora", "full"):
            rs = {r["ckpt"]: r for r in gpu["runs"] if r["model"] == model and r["mode"] == mode and r["batch"] == gpu["batch"]}
            if not rs:
                continue
            est = doc["extrapolation"][model]["strategies"]["seq_lora" if mode == "lora" else "seq_ft"]
            what = "LoRA, bf16 weights" if mode == "lora" else "full FT, fp32 weights + AdamW, 1 GPU"
            lines.append(f"| {model} {what} | {rs[False]['weights_gb']} | {rs[False].get('peak_gb', 'OOM')} | "
                         f"{rs[True].get('peak_gb', 'OOM')} | {_gb(est) if mode == 'lora' else ''} |")
    return lines


def table(doc: dict) -> str:
    lines = ["| model | params | strategy | batch x seq | dtype | peak MB (no ckpt) | peak MB (ckpt) | "
             "training extra MB (no ckpt -> ckpt) |", "|---|---|---|---|---|---|---|---|"]
    rows = doc["measurements"]
    for r in rows:
        if r["ckpt"] or "error" in r:
            continue
        on = _find(rows, model=r["model"], strategy=r["strategy"], batch=r["batch"], dtype=r["dtype"], ckpt=True)
        on_peak = f"{on[0]['peak_mb']:.0f}" if on else ""
        on_extra = f" -> {on[0]['train_extra_mb']:.0f}" if on else ""
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {r['strategy']} | {r['batch']} x {r['seq']} | "
                     f"{r['dtype']} | {r['peak_mb']:.0f} | {on_peak} | {r['train_extra_mb']:.0f}{on_extra} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['strategy']} | {r['batch']} x {r['seq']} | {r['dtype']} | "
                         f"error: {r['error']} | | |")
    lines += ["", "| activation fit | bytes/token | k = bytes/token/(hidden x layers) |", "|---|---|---|"]
    for key, f in doc["activation_fits"].items():
        lines.append(f"| {key} | {f['bytes_per_token']} | {f['k']} |")
    for key, (k, src) in (doc.get("gpu_k") or {}).items():
        lines.append(f"| GPU {key} ({src}) | | {k:.2f} |")
    x = doc["extrapolation"]
    for name, r in x.items():
        lines.append(f"\n{name}: {r['parameters'] / 1e9:.2f}B parameters, bf16 weights {r['weights_gb']['bf16']} GB, LoRA "
                     f"states {r['lora_states_gb']} GB, full-FT states {r['full_ft_states_gb']} GB "
                     f"(+{r['adamw_step_temporaries_gb']} GB in AdamW's step), {r['tokens_per_micro_batch']} tokens per micro-batch")
    return "\n".join(lines + ["", *target_table(doc), "", *gpu_table(doc)])


def derive(doc: dict, tokens: int, gpu_json: Path | None = None) -> dict:
    """The activation fits, strategy factors and 7-8B extrapolation of a set of measurements; with a GPU run's JSON
    (--gpu), also the extrapolation from the GPU's own k and the measured peaks."""
    rows = doc["measurements"]
    fits = fit_k(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    gpu = json.loads(gpu_json.read_text()) if gpu_json and gpu_json.is_file() else None
    return {**doc, "activation_fits": fits, "strategy_extra_vs_base": {m: strategy_factors(rows, m) for m in models},
            "extrapolation": extrapolate(fits, tokens),
            "extrapolation_gpu_k": extrapolate(fits, tokens, gpu) if gpu else None,
            "gpu_k": {k: list(v) for k, v in gpu_fits(gpu).items()} if gpu else None, "gpu_measured": gpu,
            "assumptions": {"gpu_gb": GPU_GB, "usable_fraction": GPU_USABLE, "lora": "r 8 on q_proj, v_proj",
                            "full_ft_bytes_per_param": 16 + ADAMW_TEMP, "lora_state_bytes_per_param": 16,
                            "weights": "bf16 (2 bytes/param)", "tokens_per_micro_batch": tokens, "paper": PAPER,
                            "lora_engine": "DDP (model replicated)", "full_ft_engine": "FSDP full shard"}}


def _hardware() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "mem_total_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--strategies", default=None, help="comma-separated subset of the strategies measured")
    ap.add_argument("--tokens", type=int, default=8 * 512, help="tokens per micro-batch at 7-8B (default 8 x 512)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    ap.add_argument("--table", metavar="JSON", help="reprint the table of a saved result and exit")
    ap.add_argument("--bf16", action="store_true", help="also fit k with bf16 weights on the CPU (slow without bf16 units)")
    ap.add_argument("--rewrite", action="store_true", help="with --table: also write the derived parts back")
    ap.add_argument("--gpu", metavar="JSON", help="on a CUDA GPU: measure the 7-8B shapes directly, write JSON, exit")
    ap.add_argument("--gpu-json", default=str(ROOT / "bench" / "results" / "memory_gpu.json"),
                    help="a --gpu result to compare with and take the GPU's activation k from (if the file exists)")
    ap.add_argument("--gpu-batch", type=int, default=8)
    ap.add_argument("--gpu-seq", type=int, default=512)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(RESULT + json.dumps(measure(json.loads(args.child))))  # after the progress bars' carriage returns
        return 0
    if args.gpu:
        shapes = {"llama-0.4b": dict(hidden=1024, layers=24, heads=16, kv_heads=16, intermediate=2816, vocab=49152,
                                     tied=False), **TARGETS}
        doc = gpu_check(shapes, args.gpu_batch, args.gpu_seq)
        Path(args.gpu).write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc.get("hook_calls")))
        return 0
    if args.table:  # fits and extrapolation are derived again from the saved measurements
        doc = derive(json.loads(Path(args.table).read_text()), args.tokens, Path(args.gpu_json))
        if args.rewrite:
            Path(args.table).write_text(json.dumps(doc, indent=2) + "\n")
        print(table(doc))
        return 0
    specs = plan(args.models.split(","), args.bf16)
    if args.strategies:
        keep = set(args.strategies.split(","))
        specs = [s for s in specs if s["strategy"] in keep]
    t0, rows = time.perf_counter(), []
    for i, spec in enumerate(specs, 1):
        rows.append(_spawn(spec))
        r = rows[-1]
        print(f"[{i}/{len(specs)} {time.perf_counter() - t0:.0f}s] {spec['model']} {spec['strategy']} ckpt={spec['ckpt']} "
              f"b={spec['batch']} {spec['dtype']}: " + (r.get("error") or f"peak {r['peak_mb']:.0f} MB, extra {r['train_extra_mb']:.0f} MB"),
              flush=True)
    doc = derive({"hardware": _hardware(), "torch_threads": 1, "wall_s": round(time.perf_counter() - t0, 1),
                  "measurements": rows}, args.tokens, Path(args.gpu_json))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(table(doc))
    print(f"wrote {args.out} ({doc['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
