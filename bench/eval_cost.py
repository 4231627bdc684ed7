"""What evaluation costs and what the chat template changes: the zero-shot evaluation of the demo stream, exactly
as a run does it (benchmark.runner.evaluate.evaluate_all), with eval.mode=generate alone against eval.mode=both (generation
and label log-likelihood sharing the prompt's forward), with the chat template on and off.

    python bench/eval_cost.py                              # SmolLM2-135M-Instruct, demo stream, 8 test/class
    python bench/eval_cost.py --model tiny --test-per-class 2 --out /tmp/eval_cost.json

Prints a table (accuracy by each score, seconds, the both/generate cost ratio, mean generated tokens, share at the
50-token limit) and writes JSON. Each setting is timed twice after one untimed warm-up batch; the faster of the
two counts, so that a busy machine inflates it less.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def measure(model: str, chat: str, mode: str, test_per_class: int, repeats: int) -> dict:
    from benchmark.records import predictions
    from benchmark.runner import evaluate, recipe
    from benchmark.config import compose
    from benchmark.records.store import hardware

    cfg = compose([f"model={model}", f"data.chat_template={chat}", f"eval.mode={mode}",
                   f"data.test_per_class={test_per_class}", "leaderboard=false"])
    ctx, strategy, _ = recipe.build_context(cfg)
    tests = {t.name: ctx.encoder.encode(t, t.test) for t in ctx.stream.tasks}
    warm = {t: v[: cfg.eval.batch_size] for t, v in list(tests.items())[:1]}
    evaluate.evaluate_all(ctx, strategy, {**{t: v[:1] for t, v in tests.items()}, **warm}, 0, "warm-up")
    times, lines = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lines = evaluate.evaluate_all(ctx, strategy, tests, 0, "zero-shot")
        times.append(time.perf_counter() - t0)
    tasks = ctx.stream.task_names
    gen = predictions.generation_stats(lines, tasks)
    return {"model": model, "chat_template": chat, "applied": ctx.model_info["chat_template"], "mode": mode,
            "examples": len(lines), "seconds": round(min(times), 2), "all_seconds": [round(t, 2) for t in times],
            "accuracy": predictions.accuracies(lines, tasks), "generation": gen, "hardware": hardware()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--test-per-class", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_cost.json"))
    args = ap.parse_args()
    results = []
    for chat in ("on", "off"):
        for mode in ("generate", "both"):
            r = measure(args.model, chat, mode, args.test_per_class, args.repeats)
            results.append(r)
            acc = r["accuracy"]
            toks = {t: g["mean_tokens"] for t, g in (r["generation"] or {}).items()}
            lim = {t: g["at_limit"] for t, g in (r["generation"] or {}).items()}
            print(f"chat={chat:3} mode={mode:8} {r['seconds']:7.2f}s gen%={acc.get('generate')} "
                  f"loglik%={acc.get('loglik')} tokens={toks} at_limit={lim}", flush=True)
    ratio = {chat: round(next(r["seconds"] for r in results if r["chat_template"] == chat and r["mode"] == "both") /
                         next(r["seconds"] for r in results if r["chat_template"] == chat and r["mode"] == "generate"), 3)
             for chat in ("on", "off")}
    print(f"cost of both scores / generation alone: {ratio} (target <= 1.3)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results, "both_over_generate": ratio}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
