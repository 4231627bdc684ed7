"""MIGU's peak memory against the plain fine-tuning it masks (issue 11, item 9; target: within 1.15x).

    python bench/migu_memory.py                       # SmolLM2-135M: seq_ft vs migu_ft, seq_lora vs migu
    python bench/migu_memory.py --model tiny --out /tmp/m.json

Each strategy runs `clbench-run` in its own process on a two-task stream (dbpedia -> amazon), a few optimizer
steps per task, so MIGU's masks are live on the second task; the peak is the record's `cost.peak_memory_mb`
(peak RSS on CPU, peak allocated memory on CUDA). Full fine-tuning is where a copy of every masked weight and of
both Adam moments (the earlier implementation) would show: about 3x the model's weights on top of AdamW's 4x.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [("seq_ft", "migu_ft"), ("seq_lora", "migu")]


def run_one(strategy: str, model: str, steps: int, lr: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "benchmark.cli", f"strategy={strategy}", f"model={model}", "stream.tasks=[dbpedia,amazon]",
               "data.train_per_class=4", "data.test_per_class=1", "eval.general_passages=0", f"trainer.lr={lr}",
               f"trainer.max_steps_per_task={steps}", f"results_dir={out}", "leaderboard=false", "resume=false"]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        if p.returncode != 0:
            raise SystemExit(f"{strategy}: clbench-run failed:\n{p.stderr[-2000:]}")
        rec = json.loads(next(Path(out, "runs").glob("*.json")).read_text())
    cost = rec["cost"]
    return {"strategy": strategy, "peak_memory_mb": cost["peak_memory_mb"], "trainable_params": cost["trainable_params"],
            "device": cost["device"], "steps": [s["steps"] for s in rec["stages"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model config group (default smollm2-135m)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per task")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "migu_memory.json"))
    args = ap.parse_args(argv)
    rows = []
    for base, migu in PAIRS:
        lr = "1e-4" if base == "seq_ft" else "1e-3"
        a, b = run_one(base, args.model, args.steps, lr), run_one(migu, args.model, args.steps, lr)
        ratio = b["peak_memory_mb"] / a["peak_memory_mb"]
        rows.append({"baseline": a, "migu": b, "ratio": round(ratio, 3), "within_1.15x": ratio <= 1.15})
        print(f"{migu:>9} {b['peak_memory_mb']:>9.0f} MB  vs {base:>8} {a['peak_memory_mb']:>9.0f} MB  -> {ratio:.3f}x", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "steps_per_task": args.steps, "pairs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
