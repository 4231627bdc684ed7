"""Seconds per MMLU question through lm-evaluation-harness on the model as a run evaluates it (SmolLM2-135M with
the long_repro_cpu cut's LoRA, one thread), for the letter and the cloze form, with the zero-shot score and how
often the model picks each letter. Run on idle cores:

    python bench/general_cost.py [--per-subject 2] [--threads 1] [--out bench/results/general_cost.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

from benchmark.config import compose
from benchmark.records.store import hardware
from benchmark.runner import general
from benchmark.runner.recipe import build_context
from task_streams import mmlu


def measure(task: str, per_subject: int, threads: int) -> dict:
    cfg = compose(["+experiment=long_repro_cpu", "strategy=seq_lora", f"general.tasks=[{task}]",
                   f"general.per_subject={per_subject}", f"trainer.num_threads={threads}"])
    ctx, strategy, _ = build_context(cfg)
    prepared = general.prepare(cfg.general)
    t0 = time.perf_counter()
    res = general.run_lm_eval(ctx, strategy, prepared, cfg.general)[task]
    seconds = time.perf_counter() - t0
    picks = collections.Counter(max(range(4), key=lambda i: s["filtered_resps"][i][0]) for s in res["samples"])
    n = len(res["samples"])
    return {"task": task, "questions": n, "seconds": round(seconds, 1), "s_per_question": round(seconds / n, 3),
            "acc": round(100 * res["results"]["acc,none"], 2), "stderr": round(100 * res["results"]["acc_stderr,none"], 2),
            "picks": {mmlu.LETTERS[i]: picks.get(i, 0) for i in range(4)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results/general_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(task, args.per_subject, args.threads) for task in ("mmlu_cloze", "mmlu")]
    doc = {"model": "smollm2-135m + LoRA (long_repro_cpu cut, untrained)", "per_subject": args.per_subject,
           "threads": args.threads, "hardware": hardware(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        print(f"{r['task']:<11} {r['questions']} questions  {r['seconds']:>7.1f} s  {r['s_per_question']:.3f} s/question  "
              f"acc {r['acc']:.2f} ±{r['stderr']:.2f}  picks {r['picks']}")


if __name__ == "__main__":
    main()
