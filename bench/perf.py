"""The training and evaluation hot paths, side by side on one model, one data set and one machine.

    python bench/perf.py                                  # tiny model and SmolLM2-135M: table + JSON
    python bench/perf.py --models tiny --steps 8 --out /tmp/perf.json

Every measurement runs in a fresh child process (this script with --child), so that its peak memory is its
own and no measurement warms the allocator or caches for the next one. Warm-up steps run first and are not
timed. Training measurements use the same examples, the same LoRA (r8 alpha32, q/v), AdamW, lr 1e-3,
gradient clipping at 1.0 and the same batch size:

  suite         benchmark.runner.loop.train_stage with seq_lora: exactly what a clbench run executes per task
  bare          a minimal PyTorch loop over the same length-bucketed batches doing the same work (answer-only
                cross-entropy, vocabulary projection only where answers are predicted)
  bare_hf_loss  the loop most people write first: model(**batch, labels=labels).loss (every position projected)
  trainer       transformers.Trainer, train_sampling_strategy=group_by_length, the suite's collator

Strategy overhead: train_stage on task 2 of the demo stream after a short untimed task 1, so that buffers,
frozen adapters, orthogonality terms and masks are all live; time per optimizer step relative to seq_lora.
Evaluation: examples/s of label log-likelihood (the KV-cache path and the per-pair reference) and of greedy
generation, on dbpedia (14 labels) and agnews (4 labels), with the padding share of the training batches.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

TRAIN_METHODS = ("suite", "bare", "bare_hf_loss", "trainer")
def _strategies() -> list[str]:
    """Every registered strategy but compositions (their step is their parts'), SeqLoRA first: the baseline."""
    from strategies import registered

    return sorted((n for n in registered() if n != "compose"), key=lambda n: (n != "seq_lora", n))
# bench-sized strategy settings, stated in the output: GeRe's reference pass over 1000 general samples would
# dominate a short timing; the per-step work does not depend on the size of the fixed set
STRATEGY_OVERRIDES = {"gere": ["strategy.n_samples=32"]}


# ----------------------------------------------------------------------------------------------- memory
class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms (CPU) or read from CUDA's counters."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        self.peak = self.base = self._rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra_mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.extra_mb = (self.peak - self.base) / 2**20


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- set-up
def _cfg(model: str, batch_size: int, per_class: int, test_per_class: int, extra: list[str] = ()):
    from benchmark.config import compose

    return compose([f"model={model}", "stream=demo", f"data.train_per_class={per_class}",
                    f"data.test_per_class={test_per_class}", f"trainer.batch_size={batch_size}", "trainer.device=auto",
                    "eval.general_passages=0", "leaderboard=false", *extra])


def _context(args, strategy="seq_lora", extra=()):
    from benchmark.runner import build_context

    per_class = math.ceil((args.steps + args.warmup) * args.batch_size / 5) + 1  # amazon has the fewest classes (5)
    cfg = _cfg(args.model, args.batch_size, per_class, args.test_per_class,
               [f"strategy={strategy}", *STRATEGY_OVERRIDES.get(strategy, []), *extra])
    ctx, strat, _ = build_context(cfg)
    return cfg, ctx, strat


def _split(ctx, task_index: int, args):
    """Warm-up and timed examples of one task, the same for every method (data order fixed by data.seed)."""
    task = ctx.stream.tasks[task_index]
    items = ctx.encoder.encode(task, task.train)
    w = args.warmup * args.batch_size
    return task, items[:w], items[w : w + args.steps * args.batch_size]


def _batches(ctx, items, stage: int = 1):
    from benchmark.runner.loop import stage_batches as _stage_batches

    return _stage_batches(items, ctx.cfg, stage, 0, 1, 0)


def _train_result(secs, steps, answer_tokens, padded_tokens, examples, mem):
    return {"seconds": round(secs, 3), "steps": steps, "step_ms": round(1000 * secs / steps, 1),
            "examples_per_s": round(examples / secs, 2), "answer_tokens_per_s": round(answer_tokens / secs, 2),
            "padded_tokens_per_s": round(padded_tokens / secs, 1), "answer_tokens": answer_tokens,
            "padded_tokens": padded_tokens, "peak_extra_mb": round(mem.extra_mb, 1)}


# ----------------------------------------------------------------------------------------------- training
def _timed(ctx, fn):
    """(seconds, PeakRSS, result) of fn(), with the device drained before the clock stops."""
    with PeakRSS(ctx.device) as mem:
        t0 = time.perf_counter()
        out = fn()
        _sync(ctx.device)
        secs = time.perf_counter() - t0
    return secs, mem, out


def train_suite(args):
    from benchmark.runner.loop import train_stage

    cfg, ctx, strat = _context(args)
    task, warm, timed = _split(ctx, 0, args)
    ctx.stage, ctx.tasks = 1, [task]
    train_stage(ctx, strat, warm)
    secs, mem, stats = _timed(ctx, lambda: train_stage(ctx, strat, timed))
    return _train_result(secs, stats["steps"], stats["answer_tokens"], stats["padded_tokens"], len(timed), mem)


def _bare_loop(model, batches, pad_id, device, hf_loss: bool) -> tuple[int, int]:
    """The minimal loop: forward, answer-only cross-entropy, backward, clip, AdamW step."""
    import torch

    from benchmark.modeling.data import IGNORE, collate_train

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    answer = padded = 0
    for rows in batches:
        b = collate_train(rows, pad_id)
        is_ans = b["labels"] != IGNORE
        answer += int(is_ans.sum())
        padded += b["input_ids"].numel()
        b = {k: v.to(device) for k, v in b.items()}
        if hf_loss:
            loss = model(**b).loss
        else:
            first = int(is_ans.int().argmax(-1).min())
            last = int(is_ans.shape[1] - 1 - is_ans.flip(-1).int().argmax(-1).min())
            keep = torch.arange(first - 1, last, device=device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=keep).logits
            target = b["labels"][:, first : last + 1]
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return answer, padded


def train_bare(args, hf_loss: bool = False):
    cfg, ctx, _ = _context(args)
    task, warm, timed = _split(ctx, 0, args)
    model, pad = ctx.model, ctx.tokenizer.pad_token_id
    model.train()
    _bare_loop(model, _batches(ctx, warm), pad, ctx.device, hf_loss)
    batches = _batches(ctx, timed)
    secs, mem, (answer, padded) = _timed(ctx, lambda: _bare_loop(model, batches, pad, ctx.device, hf_loss))
    return _train_result(secs, len(batches), answer, padded, len(timed), mem)


def train_hf_trainer(args):
    from transformers import Trainer, TrainingArguments

    from benchmark.modeling.data import IGNORE, pad_batch

    cfg, ctx, _ = _context(args)
    task, warm, timed = _split(ctx, 0, args)
    pad = ctx.tokenizer.pad_token_id
    counts = {"answer": 0, "padded": 0}

    def collate(feats):
        b = pad_batch([f["input_ids"] for f in feats], pad, "right", [f["prompt_len"] for f in feats])
        counts["answer"] += int((b["labels"] != IGNORE).sum())
        counts["padded"] += b["input_ids"].numel()
        return b

    def trainer(items, out):
        data = [{"input_ids": list(e.prompt + e.answer), "prompt_len": len(e.prompt)} for e in items]
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, num_train_epochs=1, learning_rate=1e-3,
            weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant", optim="adamw_torch",
            train_sampling_strategy="group_by_length", logging_strategy="no", save_strategy="no", report_to="none",
            disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=False, seed=ctx.seed,
            use_cpu=ctx.device.type == "cpu", bf16=ctx.cfg.trainer.mixed_precision == "bf16")
        return Trainer(model=ctx.model, args=targs, train_dataset=data, data_collator=collate)

    with tempfile.TemporaryDirectory() as out:
        trainer(warm, out).train()
        counts.update(answer=0, padded=0)
        tr = trainer(timed, out)
        secs, mem, _ = _timed(ctx, tr.train)
    steps = math.ceil(len(timed) / args.batch_size)
    return _train_result(secs, steps, counts["answer"], counts["padded"], len(timed), mem)


def at_second_task(args, name: str):
    """A strategy trained briefly (untimed) on task 1 and set up on task 2, and task 2's examples to time."""
    from benchmark.runner.loop import train_stage

    cfg, ctx, strat = _context(args, name)
    task1, warm1, _ = _split(ctx, 0, args)
    task2, warm2, timed = _split(ctx, 1, args)
    ctx.stage, ctx.tasks = 1, [task1]
    strat.before_stage(ctx)
    train_stage(ctx, strat, warm1)
    strat.after_stage(ctx)
    ctx.stage, ctx.tasks = 2, [task2]
    strat.before_stage(ctx)
    train_stage(ctx, strat, warm2)
    return ctx, strat, timed


def train_strategy(args, name: str):
    """Time per step of one strategy on task 2, after a short untimed task 1."""
    from benchmark.runner.loop import train_stage

    ctx, strat, timed = at_second_task(args, name)
    secs, mem, stats = _timed(ctx, lambda: train_stage(ctx, strat, timed))
    res = _train_result(secs, stats["steps"], stats["answer_tokens"], stats["padded_tokens"], len(timed), mem)
    res["overrides"] = STRATEGY_OVERRIDES.get(name, [])
    return res


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate(args):
    import torch

    from benchmark import evaluation
    from benchmark.modeling.data import length_bucketed_batches, padding_share

    cfg, ctx, strat = _context(args)
    ctx.model.eval()
    out = {}
    for task in ctx.stream.tasks:
        if task.name not in ("dbpedia", "agnews"):
            continue
        tests = ctx.encoder.encode(task, task.test)
        answers = [ctx.encoder.answer(l) for l in task.labels]
        pad, eos = ctx.tokenizer.pad_token_id, ctx.tokenizer.eos_token_id
        bs = cfg.eval.batch_size
        longest = max(len(a) for a in answers)

        def loglik(ex):
            return evaluation.loglik_scores(ctx.model, ex, answers, pad, bs, ctx.device)

        def pairs(ex):
            return evaluation.loglik_scores_pairs(ctx.model, ex, answers, pad, bs, ctx.device)

        def generate(ex, n=longest + 2):
            return evaluation.generate_predictions(ctx.model, ex, pad, eos, bs, ctx.device, n, ctx.tokenizer.decode)

        def generate50(ex):
            return generate(ex, 50)

        def prompt_forward(ex):
            # the floor under both modes: one forward of every prompt, nothing scored or generated
            for i in range(0, len(ex), bs):
                b = evaluation.pad_batch([e.prompt for e in ex[i : i + bs]], pad, "left")
                ctx.model(**{k: b[k].to(ctx.device) for k in ("input_ids", "attention_mask", "position_ids")},
                          logits_to_keep=1)

        res = {"examples": len(tests), "labels": len(answers), "generate_max_new_tokens": longest + 2}
        modes = (("loglik", loglik), ("loglik_pairs", pairs), ("generate", generate), ("generate_50", generate50),
                 ("prompt_forward", prompt_forward))
        for mode, fn in modes:
            ex = tests if mode in ("loglik", "generate", "prompt_forward") else tests[: max(bs, len(tests) // 4)]
            with torch.inference_mode():
                fn(ex[:4])  # warm-up
                secs, mem, _ = _timed(ctx, lambda: fn(ex))
            res[mode] = {"examples": len(ex), "seconds": round(secs, 3), "examples_per_s": round(len(ex) / secs, 2),
                         "peak_extra_mb": round(mem.extra_mb, 1)}
        res["loglik_speedup_vs_generate"] = round(res["loglik"]["examples_per_s"] / res["generate"]["examples_per_s"], 2)
        train = ctx.encoder.encode(task, task.train)
        lengths = [len(e.prompt) + len(e.answer) for e in train]
        b = cfg.trainer.batch_size
        res["train_padding_share"] = {
            "examples": len(train),
            "random_batches": round(padding_share(length_bucketed_batches(lengths, b, seed=1, window=1), lengths), 4),
            "bucketed": round(padding_share(length_bucketed_batches(lengths, b, seed=1), lengths), 4)}
        out[task.name] = res
    return out


def run_child(spec: dict) -> dict:
    import torch

    args = argparse.Namespace(**spec)
    torch.manual_seed(0)
    kind = spec["kind"]
    if kind == "train":
        fn = {"suite": train_suite, "bare": train_bare, "bare_hf_loss": lambda a: train_bare(a, hf_loss=True),
              "trainer": train_hf_trainer}[spec["method"]]
        res = fn(args)
    elif kind == "strategy":
        res = train_strategy(args, spec["method"])
    else:
        res = evaluate(args)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


# ----------------------------------------------------------------------------------------------- driver
def _hardware() -> dict:
    """The run records' hardware block, plus the CPU model that speed numbers depend on."""
    from benchmark.records.store import hardware

    info = hardware()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def _spawn(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def summarize(results: dict) -> dict:
    """The targets of issue #7, as numbers."""
    out = {}
    for model, r in results.items():
        tr, st = r["train"], r["strategies"]
        s = {}
        if all("error" not in tr.get(m, {"error": 1}) for m in ("suite", "bare", "trainer")):
            # same examples in every method: examples/s is the like-for-like rate (padding differs under Trainer)
            s["suite_vs_bare"] = _ratio(tr["suite"]["examples_per_s"], tr["bare"]["examples_per_s"])
            s["suite_vs_bare_hf_loss"] = _ratio(tr["suite"]["examples_per_s"], tr["bare_hf_loss"].get("examples_per_s"))
            s["suite_vs_trainer"] = _ratio(tr["suite"]["examples_per_s"], tr["trainer"]["examples_per_s"])
        base = st.get("seq_lora", {}).get("step_ms")
        s["step_time_vs_seq_lora"] = {n: _ratio(v.get("step_ms"), base) for n, v in st.items()}
        # replaying strategies forward more rows per step: time per padded token forwarded is the cost of the method
        # itself, apart from the replayed data it chooses to add
        base_tok = st.get("seq_lora", {}).get("padded_tokens_per_s")
        s["time_per_padded_token_vs_seq_lora"] = {n: _ratio(base_tok, v.get("padded_tokens_per_s")) for n, v in st.items()}
        s["loglik_speedup_vs_generate"] = {t: v["loglik_speedup_vs_generate"] for t, v in r["eval"].items()
                                           if isinstance(v, dict) and "loglik_speedup_vs_generate" in v}
        out[model] = s
    return out


def table(results: dict, summary: dict) -> str:
    lines = []
    for model, r in results.items():
        lines.append(f"\n## {model}\n")
        lines.append("| training | step ms | examples/s | answer tok/s | padded tok/s | peak extra MB | peak RSS MB | vs suite |")
        lines.append("|---|---|---|---|---|---|---|---|")
        suite_eps = r["train"].get("suite", {}).get("examples_per_s")
        for name, v in [*r["train"].items(), *((f"strategy {k}", v) for k, v in r["strategies"].items())]:
            if "error" in v:
                lines.append(f"| {name} | error: {v['error']} ||||||")
                continue
            lines.append(f"| {name} | {v['step_ms']} | {v['examples_per_s']} | {v['answer_tokens_per_s']} | "
                         f"{v['padded_tokens_per_s']} | {v['peak_extra_mb']} | {v.get('peak_rss_mb')} | "
                         f"{_ratio(v['examples_per_s'], suite_eps)} |")
        lines.append("\n| evaluation | examples | labels | loglik ex/s | per-pair loglik ex/s | generate ex/s "
                     "(max new) | generate ex/s (50 new) | prompt forward only ex/s | loglik / generate | "
                     "train padding random -> bucketed |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        if "error" in r["eval"]:
            lines.append(f"| error: {r['eval']['error']} ||||||||")
        for t, v in r["eval"].items():
            if not isinstance(v, dict) or "loglik" not in v:
                continue
            p = v["train_padding_share"]
            lines.append(f"| {t} | {v['examples']} | {v['labels']} | {v['loglik']['examples_per_s']} | "
                         f"{v['loglik_pairs']['examples_per_s']} | {v['generate']['examples_per_s']} "
                         f"({v['generate_max_new_tokens']}) | {v['generate_50']['examples_per_s']} | "
                         f"{v['prompt_forward']['examples_per_s']} | "
                         f"{v['loglik_speedup_vs_generate']}x | {p['random_batches']:.1%} -> {p['bucketed']:.1%} |")
        s = summary.get(model, {})
        lines.append(f"\nsuite / bare: {s.get('suite_vs_bare')}, suite / bare (HF loss): {s.get('suite_vs_bare_hf_loss')}, "
                     f"suite / Trainer: {s.get('suite_vs_trainer')} (examples/s ratios)")
        lines.append(f"step time vs seq_lora: {s.get('step_time_vs_seq_lora')}")
        lines.append(f"time per padded token vs seq_lora: {s.get('time_per_padded_token_vs_seq_lora')}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2-135m")
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps per training measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--test-per-class", type=int, default=8)
    p.add_argument("--only", default="train,strategies,eval")
    p.add_argument("--strategies", help="comma-separated strategy YAMLs to measure (default: every registered "
                                        "strategy); seq_lora, the baseline of the ratios, is always measured")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "perf.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--table", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    a = p.parse_args(argv)
    if a.table:
        doc = json.loads(Path(a.table).read_text())
        print(table(doc["results"], doc["summary"]))
        return
    if a.child:
        print(json.dumps(run_child(json.loads(a.child))))
        return
    common = {"steps": a.steps, "warmup": a.warmup, "batch_size": a.batch_size, "test_per_class": a.test_per_class}
    only = set(a.only.split(","))
    results = {}
    for model in a.models.split(","):
        r = results[model] = {"train": {}, "strategies": {}, "eval": {}}
        jobs = [("train", m) for m in TRAIN_METHODS if "train" in only]
        chosen = _strategies() if not a.strategies else ["seq_lora", *(x for x in a.strategies.split(",") if x != "seq_lora")]
        jobs += [("strategy", s) for s in chosen if "strategies" in only]
        jobs += [("eval", "eval")] if "eval" in only else []
        for kind, method in jobs:
            t0 = time.perf_counter()
            res = _spawn({**common, "model": model, "kind": kind, "method": method})
            print(f"{model:14s} {kind:8s} {method:13s} {time.perf_counter() - t0:6.1f}s  "
                  f"{json.dumps(res)[:160]}", flush=True)
            if kind == "eval":
                r["eval"] = res
            else:
                r["train" if kind == "train" else "strategies"][method] = res
    summary = summarize(results)
    doc = {"hardware": _hardware(), "settings": {**common, "strategy_overrides": STRATEGY_OVERRIDES},
           "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results, "summary": summary}
    print(table(results, summary))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
