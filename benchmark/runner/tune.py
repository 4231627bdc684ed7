"""`clbench-tune`: equal-budget hyperparameter search on validation data (issue 24).

A study samples the strategy's search space (conf/tune/spaces.yaml) with Optuna's TPE sampler, seeded, through
its ask-and-tell API; every trial is a whole run composed exactly as `clbench-run` composes it, with
`eval.split=val` (the test split is never scored), at the same training seeds for every strategy; the objective
is a record metric (AA by default) in its own direction. The study (every trial's values, objective and record)
goes to <out>/study-<name>.json, and the best values to conf/tuned/<name>.yaml, which `clbench-run
+tuned=<name>` loads; its records carry the tuning provenance (config.tuning, bookkeeping: not part of the
identity, since the values themselves are).

`jobs` > 1 asks that many trials at a time and runs them side by side, each in a fresh process (a run owns torch's
global state): a study of N trials takes about N / jobs run times. The sampler then proposes a batch from the
trials finished before it, so a study is reproducible for a given `jobs`, which its provenance records.

Why not hydra-optuna-sweeper: its current release pins optuna<3, which would drag an old Optuna (and its old
SQLAlchemy API) into the lock; driving current Optuna here is a few lines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from benchmark.config import compose, config_dict
from benchmark.errors import ClbenchError
from benchmark.fileio import atomic_write
from benchmark.records.metrics import METRICS

CONF = Path(__file__).resolve().parents[2] / "conf"
SPACES = CONF / "tune" / "spaces.yaml"
TUNED = CONF / "tuned"
DEFAULT_VAL_PER_CLASS = 8


class TuneError(ClbenchError, ValueError):
    pass


def space_for(strategy_yaml: str, spaces_file: Path = SPACES) -> dict[str, dict[str, Any]]:
    """{dotted key: its range} for a strategy YAML: the `all` entries, then the strategy's own (a key set to null
    there drops the `all` entry: a soft prompt trains nothing at trainer.lr)."""
    doc = yaml.safe_load(Path(spaces_file).read_text(encoding="utf-8")) or {}
    space = {**(doc.get("all") or {}), **((doc.get("strategies") or {}).get(strategy_yaml) or {})}
    space = {k: v for k, v in space.items() if v is not None}
    for key, spec in space.items():
        ok = isinstance(spec, dict) and (("choices" in spec and isinstance(spec["choices"], list) and spec["choices"])
                                         or ({"low", "high"} <= set(spec) and spec["low"] < spec["high"]))
        if not ok:
            raise TuneError(f"{spaces_file}: {key} needs low < high or a non-empty list of choices, got {spec!r}")
    return space


def _suggest(trial, key: str, spec: dict[str, Any]):
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if spec.get("int"):
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _strategy_yaml(overrides: list[str]) -> str:
    found = [o.split("=", 1)[1] for o in overrides if o.startswith("strategy=")]
    return found[-1] if found else "seq_lora"


def run_in_process(overrides: list[str]) -> str:
    """One trial run from its overrides, in this process: the record's path (a worker of a parallel study)."""
    from benchmark.runner import recipe

    return str(recipe.run(compose(overrides)))


def _record_paths(jobs_overrides: list[list[str]], jobs: int, run) -> list[Path]:
    """The record of each override list: in this process one after another (`run` takes a composed config), or
    `jobs` at a time in fresh processes (spawned: a forked torch would share its threads' state)."""
    if jobs == 1:
        return [Path(run(compose(o))) for o in jobs_overrides]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [Path(p) for p in pool.map(run_in_process, jobs_overrides)]


def tune(overrides: list[str], trials: int, *, seeds: tuple[int, ...] = (1,), sampler_seed: int = 0,
         metric: str = "aa", out: Path = Path("results/tuning"), name: str | None = None,
         spaces_file: Path = SPACES, tuned_dir: Path = TUNED, run=None, jobs: int = 1) -> dict[str, Any]:
    """Run the study; returns it (as written to <out>/study-<name>.json). `run`: recipe.run (tests spy on it; used
    when jobs is 1). `jobs`: trials run side by side, each in its own process."""
    import optuna

    from benchmark.records.store import load_record
    from benchmark.runner import recipe

    run = run or recipe.run  # jobs == 1
    if trials < 1:
        raise TuneError(f"trials must be >= 1, got {trials}")
    if jobs < 1:
        raise TuneError(f"jobs must be >= 1, got {jobs}")
    if metric not in METRICS or not METRICS[metric].quality:
        raise TuneError(f"metric must be one of {', '.join(k for k, m in METRICS.items() if m.quality)}, got {metric!r}")
    strategy = _strategy_yaml(overrides)
    space = space_for(strategy, spaces_file)
    base = [o for o in overrides if not o.startswith(("results_dir=", "seed=", "eval.split=", "leaderboard="))]
    if not any(o.startswith("data.val_per_class=") for o in base):
        base.append(f"data.val_per_class={DEFAULT_VAL_PER_CLASS}")
    base += ["eval.split=val", "leaderboard=false"]
    # every setting of the space at both ends, composed before any trial runs: an unknown key or a value its
    # config refuses stops the study here, naming it
    for key, spec in space.items():
        for value in spec.get("choices") or (spec["low"], spec["high"]):
            try:
                compose(base + [_override(key, value)])
            except Exception as e:  # Hydra's own errors (an unknown key) are not ClbenchErrors
                raise TuneError(f"search space of {strategy}: {key}={value!r} does not compose "
                                f"({str(e).splitlines()[0]})") from None
    cfg0 = compose(base)
    stream = cfg0.stream.name if cfg0.stream.tasks is None else "custom:" + "+".join(cfg0.stream.tasks)
    name = name or f"{strategy}-{stream.replace(':', '_').replace('+', '_')}"
    trials_dir = Path(out) / name
    direction = "maximize" if METRICS[metric].higher_is_better else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    log = []
    for start in range(0, trials, jobs):
        batch = [study.ask() for _ in range(min(jobs, trials - start))]
        params = [{key: _suggest(trial, key, spec) for key, spec in space.items()} for trial in batch]
        runs = [base + [_override(k, v) for k, v in p.items()] + [f"seed={seed}", f"results_dir={trials_dir}"]
                for p in params for seed in seeds]
        paths = iter(_record_paths(runs, jobs, run))
        for trial, p in zip(batch, params):
            mine = [next(paths) for _ in seeds]
            values = [load_record(path)["metrics"].get(metric) for path in mine]
            value = None if any(v is None for v in values) else sum(values) / len(values)
            if value is None or not math.isfinite(value):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
            log.append({"number": trial.number, "params": p, "value": value, "per_seed": values,
                        "records": [path.name for path in mine]})
    done = [t for t in log if t["value"] is not None]
    if not done:
        raise TuneError(f"study {name}: no trial gave a value of {metric}")
    best = (max if direction == "maximize" else min)(done, key=lambda t: t["value"])
    provenance = {"study": f"study-{name}.json", "trials": trials, "objective": f"{metric} on val",
                  "val_per_class": config_dict(cfg0)["data"]["val_per_class"], "seeds": list(seeds),
                  "sampler": f"TPE seed {sampler_seed}", "space": space, "best_trial": best["number"],
                  **({"jobs": jobs} if jobs > 1 else {})}
    doc = {"name": name, "strategy": strategy, "stream": stream, "overrides": overrides, "metric": metric,
           "direction": direction, "optuna": optuna.__version__, "best": best, "trials": log, "tuning": provenance}
    atomic_write(Path(out) / f"study-{name}.json", json.dumps(doc, indent=1, sort_keys=True))
    tuned = {**_nested(best["params"]), "tuning": provenance}
    header = (f"# @package _global_\n# written by clbench-tune: the best of {trials} trials of {strategy} on {stream}, "
              f"{metric} on validation; load with clbench-run strategy={strategy} +tuned={name}\n")
    atomic_write(Path(tuned_dir) / f"{name}.yaml", header + yaml.safe_dump(tuned, sort_keys=True))
    return doc
