"""`clbench-tune`: equal-budget hyperparameter search on validation data (issue 24).

A study samples the strategy's search space (conf/tune/spaces.yaml) with Optuna's TPE sampler, seeded, through
its ask-and-tell API; every trial is a whole run composed exactly as `clbench-run` composes it, with
`eval.split=val` (the test split is never scored), at the same training seeds for every strategy; the objective
is a record metric (AA by default) in its own direction. The study (every trial's values, objective and record)
goes to <out>/study-<name>.json, and the best values to conf/tuned/<name>.yaml, which `clbench-run
+tuned=<name>` loads; its records carry the tuning provenance (config.tuning, bookkeeping: not part of the
identity, since the values themselves are).

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


def tune(overrides: list[str], trials: int, *, seeds: tuple[int, ...] = (1,), sampler_seed: int = 0,
         metric: str = "aa", out: Path = Path("results/tuning"), name: str | None = None,
         spaces_file: Path = SPACES, tuned_dir: Path = TUNED, run=None) -> dict[str, Any]:
    """Run the study; returns it (as written to <out>/study-<name>.json). `run`: recipe.run (tests spy on it)."""
    import optuna

    from benchmark.records.store import load_record
    from benchmark.runner import recipe

    run = run or recipe.run
    if trials < 1:
        raise TuneError(f"trials must be >= 1, got {trials}")
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
    for number in range(trials):
        trial = study.ask()
        params = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        values, records = [], []
        for seed in seeds:
            cfg = compose(base + [_override(k, v) for k, v in params.items()]
                          + [f"seed={seed}", f"results_dir={trials_dir}"])
            path = run(cfg)
            rec = load_record(path)
            values.append(rec["metrics"].get(metric))
            records.append(path.name)
        value = None if any(v is None for v in values) else sum(values) / len(values)
        if value is None or not math.isfinite(value):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
        log.append({"number": number, "params": params, "value": value, "per_seed": values, "records": records})
    done = [t for t in log if t["value"] is not None]
    if not done:
        raise TuneError(f"study {name}: no trial gave a value of {metric}")
    best = (max if direction == "maximize" else min)(done, key=lambda t: t["value"])
    provenance = {"study": f"study-{name}.json", "trials": trials, "objective": f"{metric} on val",
                  "val_per_class": config_dict(cfg0)["data"]["val_per_class"], "seeds": list(seeds),
                  "sampler": f"TPE seed {sampler_seed}", "space": space, "best_trial": best["number"]}
    doc = {"name": name, "strategy": strategy, "stream": stream, "overrides": overrides, "metric": metric,
           "direction": direction, "optuna": optuna.__version__, "best": best, "trials": log, "tuning": provenance}
    atomic_write(Path(out) / f"study-{name}.json", json.dumps(doc, indent=1, sort_keys=True))
    tuned = {**_nested(best["params"]), "tuning": provenance}
    header = (f"# @package _global_\n# written by clbench-tune: the best of {trials} trials of {strategy} on {stream}, "
              f"{metric} on validation; load with clbench-run strategy={strategy} +tuned={name}\n")
    atomic_write(Path(tuned_dir) / f"{name}.yaml", header + yaml.safe_dump(tuned, sort_keys=True))
    return doc
