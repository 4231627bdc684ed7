"""What eval.schedule saves: the same run of a long-stream cut under `full` and `papers`, on the tiny model and
on SmolLM2-135M, one after the other in this process (one run at a time; run it on idle cores).

Prints and writes (bench/results/eval_schedule.json) per model and schedule: cells scored, prompts scored,
seconds in evaluation and in training, evaluation's share of the wall time, the wall time, the run's own
estimate after its first stage, and AA/BWT/FWT (equal under both schedules, which the run checks).

    python bench/eval_schedule.py                      # both models
    python bench/eval_schedule.py --models tiny        # seconds, for a smoke check
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

TASKS = "[dbpedia,amazon,agnews,SST-2,CB,RTE,BoolQA,WiC]"  # an 8-task cut of the long streams' tasks
MODELS = {
    "tiny": ["model=tiny", "data.train_per_class=4", "data.test_per_class=4", "trainer.batch_size=4"],
    "smollm2-135m": ["model=smollm2-135m", "data.train_per_class=4", "data.test_per_class=4", "trainer.batch_size=8"],
}
SCHEDULES = ("full", "papers")


def measure(model: str, schedule: str, out: Path) -> dict:
    from benchmark.config import compose
    from benchmark.runner import recipe

    cfg = compose(MODELS[model] + [f"stream.tasks={TASKS}", f"eval.schedule={schedule}", f"results_dir={out}",
                                   "leaderboard=false", "eval.general_passages=4"])
    t0 = time.perf_counter()
    rec = json.loads(recipe.run(cfg).read_text())
    wall = time.perf_counter() - t0
    ev = rec["evaluation"]
    return {"cells": ev["cells"], "full_cells": ev["full_cells"], "prompts": sum(r["prompts"] for r in ev["rows"]),
            "generated_tokens": sum(r["generated_tokens"] for r in ev["rows"]), "eval_s": ev["eval_s"],
            "train_s": rec["cost"]["train_s"], "wall_s": round(wall, 1), "eval_share": round(ev["eval_s"] / wall, 3),
            "estimate_s": ev["estimate_s"], **{k: rec["metrics"][k] for k in ("aa", "bwt", "fwt", "forgetting")}}


def table(doc: dict) -> str:
    lines = ["| model | schedule | cells | prompts | eval s | train s | eval share | wall s | estimate s | AA | BWT | FWT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, per in doc["results"].items():
        for schedule, r in per.items():
            lines.append(f"| {model} | {schedule} | {r['cells']}/{r['full_cells']} | {r['prompts']} | {r['eval_s']} | "
                         f"{r['train_s']} | {100 * r['eval_share']:.0f} % | {r['wall_s']} | {r['estimate_s']} | "
                         f"{r['aa']:.2f} | {r['bwt']:+.2f} | {r['fwt']:+.2f} |")
        full, papers = per.get("full"), per.get("papers")
        if full and papers:
            lines.append(f"| {model} | speed-up | | | {full['eval_s'] / papers['eval_s']:.2f}x | | | "
                         f"{full['wall_s'] / papers['wall_s']:.2f}x | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_schedule.json"))
    ap.add_argument("--table", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    from benchmark.records.store import hardware

    doc = {"stream": TASKS, "hardware": hardware(), "results": {}}
    for model in args.models.split(","):
        doc["results"][model] = {}
        for schedule in SCHEDULES:
            with tempfile.TemporaryDirectory() as tmp:
                doc["results"][model][schedule] = measure(model, schedule, Path(tmp))
            print(model, schedule, doc["results"][model][schedule], flush=True)
        per = doc["results"][model]
        same = all(per["full"][k] == per["papers"][k] for k in ("aa", "bwt", "fwt"))
        assert same, f"{model}: AA/BWT/FWT differ between schedules: {per}"
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))


if __name__ == "__main__":
    main()
