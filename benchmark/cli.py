"""`clbench-run` (the Hydra app), `clbench-leaderboard` and `clbench-data`."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

# wandb stays offline unless a user asks otherwise; tokenizers' fork warning is noise under joblib
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from benchmark.config import register_configs  # noqa: E402
from benchmark.errors import PROGRESS, ClbenchError  # noqa: E402
from benchmark.records.metrics import METRICS  # noqa: E402

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """A scheduler's SIGTERM (Slurm's time limit, `kill`) unwinds like Ctrl-C: same message, same exit code."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (some launchers): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(prog: str, e: BaseException) -> None:
    if os.environ.get("CLBENCH_DEBUG"):
        raise e
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)


def _interrupted(e: KeyboardInterrupt) -> None:
    if os.environ.get("CLBENCH_DEBUG"):
        raise e
    print(f"clbench-run: {PROGRESS.interrupted_message()}", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)


def _format_matrix(rec: dict) -> str:
    m = rec["matrix"]
    width = max(10, *(len(c) for c in m["columns"]))
    lines = [" " * 24 + "".join(f"{c:>{width}}" for c in m["columns"])]
    for name, row in zip(m["rows"], m["values"]):
        # a cell the evaluation schedule did not score is shown as a dash
        lines.append(f"{name[:23]:<24}" + "".join(f"{v:>{width}.1f}" if v is not None else f"{'–':>{width}}" for v in row))
    return "\n".join(lines)


def _metric_line(metrics: dict, keys: tuple[str, ...]) -> str:
    return "  ".join(f"{METRICS[k].label} {METRICS[k].text(metrics.get(k))}{' %' if METRICS[k].unit == 'fraction' else ''}"
                     for k in keys)


# what the summary prints after a run, in this order (labels, units and signs from the metric table)
SUMMARY_METRICS = ("aa", "bwt", "fwt", "forgetting", "ppl_rel_change")


def _summary(rec: dict, path: Path) -> str:
    met = rec["metrics"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    mode = rec.get("primary_mode", rec.get("eval_mode"))
    others = "".join(f"\n{m} scores: {_metric_line(s['metrics'], ('aa', 'bwt'))}"
                     for m, s in (rec.get("scores") or {}).items() if m != mode)
    anatomy = ((rec.get("anatomy") or {}).get("summary") or {})
    wrong = (f"\nwrong answers on earlier tasks after the last stage: {fmt(anatomy['other_task_label_pct'])} % another "
             f"task's label, {fmt(anatomy['same_task_label_pct'])} % another label of the task, "
             f"{fmt(anatomy['no_label_pct'])} % no label") if anatomy.get("wrong") else ""
    lm_eval = "".join(f"\n{task} (lm-eval, {len(b['rows'])} rows, {b['documents']} questions): "
                      + " -> ".join(f"{r['score']:.2f} ±{r['stderr']:.2f}" for r in sorted(b["rows"], key=lambda r: r["row"]))
                      for task, b in (rec.get("general") or {}).items())
    return (f"\naccuracy matrix (%, {mode}), {rec['strategy']['name']} on {rec['stream']['name']}, seed {rec['seed']}:\n"
            f"{_format_matrix(rec)}\n"
            f"{_metric_line(met, SUMMARY_METRICS)}  general ppl {fmt(met.get('ppl_before'))} -> "
            f"{fmt(met.get('ppl_after'))}{lm_eval}{others}{wrong}\n"
            f"record: {path}  ({rec['cost']['wall_s']:.0f} s)")


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    execute(cfg)


def main() -> None:
    # here rather than at import: the strategies' defaults import every strategy (torch, peft), which
    # clbench-leaderboard, in this module too, never needs
    register_configs()
    _hydra_main()


def execute(cfg: DictConfig) -> None:
    """The body of clbench-run, callable without Hydra's app machinery (tests)."""
    from benchmark import leaderboard
    from benchmark.records import store
    from benchmark.runner import recipe

    errors = ClbenchError
    PROGRESS.reset()  # the runner fills it in; a stale value from an earlier run in this process must not show
    try:
        with sigterm_as_interrupt():
            path = recipe.run(OmegaConf.to_object(cfg))
    except KeyboardInterrupt as e:
        _interrupted(e)
    except errors as e:  # user-facing errors: one line naming the culprit, no traceback
        _fail("clbench-run", e)
    if path is None:  # not the main process
        return
    try:
        rec = store.load_record(path)
        print(_summary(rec, path), flush=True)
        if cfg.leaderboard:
            out = leaderboard.regenerate(Path(cfg.results_dir) / "runs", Path(cfg.results_dir), highlight=Path(path))
            print(out["row_line"], flush=True)
    except errors as e:
        _fail("clbench-run", e)


def leaderboard_main(argv: list[str] | None = None) -> int:
    from benchmark import leaderboard

    ap = argparse.ArgumentParser(prog="clbench-leaderboard", description="Regenerate the leaderboard from run records.")
    ap.add_argument("runs", nargs="?", default="results/runs", help="folder of run records (default results/runs)")
    ap.add_argument("--out", default=None, help="output folder (default: the parent of RUNS)")
    ap.add_argument("--baseline", default=leaderboard.DEFAULT_BASELINE,
                    help="strategy every row is compared with, paired over seeds (default %(default)s)")
    ap.add_argument("--mode", default=leaderboard.DEFAULT_MODE, choices=leaderboard.MODES,
                    help="which scores the Markdown and CSV tables show (default %(default)s; the HTML page shows both)")
    ap.add_argument("--claims", default=None,
                    help="published claims to judge (benchmark/leaderboard/claims.py; default: claims.yaml beside RUNS, if any)")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    if not runs.is_dir():
        # a fresh checkout has no results/runs until the first clbench-run: point at what exists instead
        print(f"clbench-leaderboard: error: no run-record folder at {runs} (clbench-run writes one; the committed "
              "example sets are results/examples/<name>/runs)", file=sys.stderr)
        return 2
    try:
        out = leaderboard.regenerate(runs, Path(args.out) if args.out else runs.parent, baseline=args.baseline,
                                     mode=args.mode, claims=Path(args.claims) if args.claims else None)
    except ClbenchError as e:
        if os.environ.get("CLBENCH_DEBUG"):
            raise
        print(f"clbench-leaderboard: error: {e}", file=sys.stderr)
        return 2
    print(out["summary"])
    return 0


def tune_main(argv: list[str] | None = None) -> int:
    """`clbench-tune [OVERRIDES ...] --trials N`: an equal-budget study on validation data (benchmark/runner/tune.py)."""
    ap = argparse.ArgumentParser(prog="clbench-tune", description="Tune a strategy's settings on validation data.")
    ap.add_argument("overrides", nargs="*", help="as for clbench-run, e.g. strategy=olora +experiment=long_repro_cpu")
    ap.add_argument("--trials", type=int, default=20, help="trials of the study (the same for every strategy)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="training seeds of every trial (default 1)")
    ap.add_argument("--sampler-seed", type=int, default=0, help="the TPE sampler's seed (default 0)")
    ap.add_argument("--metric", default="aa", help="the objective, a record metric (default aa)")
    ap.add_argument("--out", default="results/tuning", help="study files and trial records (default results/tuning)")
    ap.add_argument("--name", default=None, help="the study's name (default <strategy>-<stream>)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="trials run side by side, each in its own process (default 1; set trainer.num_threads so "
                         "that jobs x threads fits the cores)")
    args = ap.parse_args(argv)
    register_configs()
    from benchmark.runner import tune

    try:
        doc = tune.tune(args.overrides, args.trials, seeds=tuple(args.seeds), sampler_seed=args.sampler_seed,
                        metric=args.metric, out=Path(args.out), name=args.name, jobs=args.jobs)
    except KeyboardInterrupt as e:
        _interrupted(e)
    except Exception as e:  # Hydra's compose errors too: one line
        if isinstance(e, ClbenchError) or type(e).__module__.startswith(("hydra", "omegaconf")):
            _fail("clbench-tune", e)
        raise
    best = doc["best"]
    print(f"clbench-tune: best of {args.trials} trials: {args.metric} {best['value']:.2f} on val with "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
          + f"; run it with: clbench-run {' '.join(args.overrides)} +tuned={doc['name']}")
    return 0


def data_main(argv: list[str] | None = None) -> int:
    """`clbench-data fetch` installs the benchmark release checked against task_streams/release.json;
    `clbench-data verify` checks a data folder against it."""
    from task_streams import release, resolve_data_dir

    source = release.manifest()["source"]
    ap = argparse.ArgumentParser(prog="clbench-data", description="Fetch or verify the benchmark data release.")
    sub = ap.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the release, check every file's sha256, install it")
    fetch.add_argument("--url", default=source["url"],
                       help=f"archive URL (.tar.gz or .zip; default: {source['repository']} at {source['commit'][:12]})")
    fetch.add_argument("--archive", default=None, help="a local archive instead of a download")
    fetch.add_argument("--dest", default=None, help=f"install folder (default {release.default_dest()})")
    verify = sub.add_parser("verify", help="check a data folder against the manifest")
    verify.add_argument("--data-dir", default=None, help="the folder (default: where runs look for it)")
    args = ap.parse_args(argv)
    try:
        if args.command == "fetch":
            dest = release.fetch(url=args.url, archive=Path(args.archive) if args.archive else None,
                                 dest=Path(args.dest) if args.dest else None)
            print(f"clbench-data: {len(release.manifest()['files'])} files checked and installed in {dest} "
                  f"(release {release.manifest_sha256()[:12]})")
            return 0
        folder = Path(args.data_dir) if args.data_dir else resolve_data_dir()
        found = release.verify(folder)
    except ClbenchError as e:
        if os.environ.get("CLBENCH_DEBUG"):
            raise
        print(f"clbench-data: error: {e}", file=sys.stderr)
        return 2
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        print(f"clbench-data: error: {found[0]}{more}", file=sys.stderr)
        return 1
    print(f"clbench-data: {folder}: all {len(release.manifest()['files'])} files match release "
          f"{release.manifest_sha256()[:12]}")
    return 0


if __name__ == "__main__":
    main()
