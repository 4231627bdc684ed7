"""`clbench-run` (the Hydra app) and `clbench-leaderboard`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# wandb stays offline unless a user asks otherwise; tokenizers' fork warning is noise under joblib
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from benchmark.config import register_configs  # noqa: E402

register_configs()

USER_ERRORS = ("TaskDataError", "StrategyConfigError", "RecordError", "GeneralCorpusError", "ValueError",
               "FileNotFoundError", "RuntimeError")


def _format_matrix(rec: dict) -> str:
    m = rec["matrix"]
    width = max(10, *(len(c) for c in m["columns"]))
    lines = [" " * 24 + "".join(f"{c:>{width}}" for c in m["columns"])]
    for name, row in zip(m["rows"], m["values"]):
        lines.append(f"{name[:23]:<24}" + "".join(f"{v:>{width}.1f}" for v in row))
    return "\n".join(lines)


def _summary(rec: dict, path: Path) -> str:
    met = rec["metrics"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"\naccuracy matrix (%), {rec['strategy']['name']} on {rec['stream']['name']}, seed {rec['seed']}:\n"
            f"{_format_matrix(rec)}\n"
            f"AA {fmt(met['aa'])}  BWT {fmt(met['bwt'])}  FWT {fmt(met['fwt'])}  forgetting {fmt(met['forgetting'])}  "
            f"general ppl {fmt(met.get('ppl_before'))} -> {fmt(met.get('ppl_after'))}\n"
            f"record: {path}  ({rec['cost']['wall_s']:.0f} s)")


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from benchmark import leaderboard, records
    from benchmark.runner import run

    try:
        run_cfg = OmegaConf.to_object(cfg)
        path = run(run_cfg)
    except Exception as e:  # user-facing errors: one line naming the culprit, no traceback
        if type(e).__name__ not in USER_ERRORS or os.environ.get("CLBENCH_DEBUG"):
            raise
        print(f"clbench-run: error: {e}", file=sys.stderr)
        sys.exit(2)
    if path is None:  # not the main process
        return
    rec = records.load_record(path)
    print(_summary(rec, path), flush=True)
    if cfg.leaderboard:
        out = leaderboard.regenerate(Path(cfg.results_dir) / "runs", Path(cfg.results_dir), highlight=Path(path))
        print(out["row_line"], flush=True)


def leaderboard_main(argv: list[str] | None = None) -> int:
    from benchmark import leaderboard

    ap = argparse.ArgumentParser(prog="clbench-leaderboard", description="Regenerate the leaderboard from run records.")
    ap.add_argument("runs", nargs="?", default="results/runs", help="folder of run records (default results/runs)")
    ap.add_argument("--out", default=None, help="output folder (default: the parent of RUNS)")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    if not runs.is_dir():
        print(f"clbench-leaderboard: error: no run-record folder at {runs}", file=sys.stderr)
        return 2
    out = leaderboard.regenerate(runs, Path(args.out) if args.out else runs.parent)
    print(out["summary"])
    return 0


if __name__ == "__main__":
    main()
