"""Progress of runs that did not finish (a time limit, a crash): the accuracy matrix of the tasks trained so far,
read from each run's last finished stage (`<results>/checkpoints/<hash>-s<seed>/stage-k/state.json`, or a copy of
that file as `<folder>/<hash>-s<seed>/state.json`). Metrics over the first k tasks only: not comparable with a
finished run's, and never entered in a leaderboard.

    python bench/partial_runs.py results/examples/long_repro_h200/unfinished          # each run as far as it got
    python bench/partial_runs.py results/examples/long_repro_h200/unfinished --at 6   # all runs after 6 tasks
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def state_files(folder: Path) -> list[Path]:
    found = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        stages = sorted(run.glob("stage-*/state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
        found += stages[-1:] or ([run / "state.json"] if (run / "state.json").is_file() else [])
    return found


def summary(path: Path, at: int | None = None) -> dict:
    from benchmark.records.metrics import all_metrics

    meta = json.loads(path.read_text())
    rs = meta["run_state"]
    tasks = [t for st in rs["stage_stats"] for t in st["tasks"]]
    if at is not None:
        if at > len(tasks):
            raise SystemExit(f"{path}: only {len(tasks)} tasks finished, fewer than --at {at}")
        tasks = tasks[:at]
    out = {"run": path.parent.parent.name if path.parent.name.startswith("stage-") else path.parent.name,
           "strategy": meta.get("strategy_name"), "stages_done": meta["stage"], "last_task": tasks[-1],
           "elapsed_s": rs.get("elapsed_s")}
    for mode, R in rs["matrices"].items():
        R = [row[: len(tasks)] for row in R[: len(tasks) + 1]]
        met = all_metrics(R)
        out[mode] = {"aa": round(met["aa"], 2), "bwt": None if met["bwt"] is None else round(met["bwt"], 2),
                     "final_row": R[-1]}
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default="results/checkpoints")
    ap.add_argument("--at", type=int, default=None, help="metrics after this many tasks, for every run")
    args = ap.parse_args()
    for f in state_files(Path(args.folder)):
        s = summary(f, args.at)
        modes = "  ".join(f"{m}: AA {v['aa']:.2f} BWT {v['bwt'] if v['bwt'] is None else format(v['bwt'], '.2f')}"
                          for m, v in s.items() if isinstance(v, dict))
        print(f"{s['run']:28} {s['stages_done']:2} stages done (metrics to {s['last_task']}), {s['elapsed_s']} s  {modes}")


if __name__ == "__main__":
    main()
