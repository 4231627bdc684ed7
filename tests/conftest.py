import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("CLBENCH_TEST_THREADS", "2")))  # 1 when sharing the cores


def compose_cfg(overrides: list[str]):
    """A RunConfig composed from the real conf/ tree, exactly as clbench-run would build it."""
    from benchmark.config import compose

    return compose(overrides, str(CONF))


# a random tiny model's generations are noise: 4 new tokens test the path at a fraction of the papers' 50 (tests
# about generation itself set their own limit)
TINY_RUN = ["model=tiny", "data.train_per_class=4", "data.test_per_class=2", "eval.general_passages=2",
            "eval.general_tokens=32", "trainer.batch_size=4", "trainer.max_prompt_tokens=64", "leaderboard=false",
            "eval.max_new_tokens=4"]
# batch 2 and accumulation 2 on 2 examples per class: amazon (5 micro-batches) and MTL's joint stage (23) leave
# odd remainders, so every strategy's accumulation path is exercised
ACCUM = ["trainer.batch_size=2", "trainer.grad_accum=2", "data.train_per_class=2"]


def strategy_yamls() -> dict[str, list[str]]:
    """{registered strategy name: the conf/strategy YAMLs that run it}; a global-package file (olora_long) nests
    the strategy under `strategy:`."""
    import yaml

    out: dict[str, list[str]] = {}
    for p in sorted((CONF / "strategy").glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        out.setdefault(doc.get("strategy", doc)["name"], []).append(p.stem)
    return out


def strategy_run_cfg(yaml_name: str, results: Path, *extra: str):
    return compose_cfg(TINY_RUN + ACCUM + [f"strategy={yaml_name}", f"results_dir={results}", *extra])


@pytest.fixture(scope="session")
def strategy_runs(tmp_path_factory):
    """One clean spied run per strategy YAML (TINY_RUN + ACCUM), made once per session and shared by the contract
    suite and the smoke checks: {"record", "path", "strategy", "seen", "cfg"}."""
    from benchmark.records.store import load_record
    from benchmark.runner import recipe
    from strategies.base import build

    cache: dict[str, dict] = {}

    def get(yaml_name: str) -> dict:
        if yaml_name in cache:
            return cache[yaml_name]
        out = tmp_path_factory.mktemp(yaml_name)
        cfg = strategy_run_cfg(yaml_name, out)
        s = build(dict(cfg.strategy))
        seen: dict = {"grads_left": [], "eval_changed": [], "general_changed": [], "ctx": None}
        orig_after = s.after_stage

        def after_stage(ctx, _orig=orig_after):
            _orig(ctx)
            seen["grads_left"].append([n for n, p in ctx.model.named_parameters() if p.grad is not None])
            before = model_state(ctx.model)
            with s.eval_model(ctx):
                for task in ctx.stream.task_names:  # a strategy that uses task identity switches per task
                    with s.eval_task(ctx, task):
                        pass
            seen["eval_changed"].append(not same_model_state(before, model_state(ctx.model)))
            if ctx.stage == 1:  # lm-eval on the model as evaluated (two MMLU questions: the path, not the score)
                from benchmark.runner import general
                from task_streams import mmlu

                general.run_lm_eval(ctx, s, [general.local_task("mmlu", mmlu.questions()[:2])], ctx.cfg.general)
                seen["general_changed"].append(not same_model_state(before, model_state(ctx.model)))
            seen["ctx"] = ctx

        s.after_stage = after_stage
        path = recipe.run(cfg, s)
        cache[yaml_name] = {"record": load_record(path), "path": path, "strategy": s, "seen": seen, "cfg": cfg}
        return cache[yaml_name]

    return get


def model_state(model) -> dict:
    from peft import PeftModel

    return {"training": model.training,
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "values": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "adapters": list(model.active_adapters) if isinstance(model, PeftModel) else []}


def same_model_state(a: dict, b: dict) -> bool:
    return (a["training"] == b["training"] and a["requires_grad"] == b["requires_grad"] and a["adapters"] == b["adapters"]
            and all(torch.equal(a["values"][k], b["values"][k]) for k in a["values"]))


@pytest.fixture
def tiny_run(tmp_path):
    """Run the real runner on the tiny model and a 3-task real stream; returns the loaded record."""
    from benchmark.records.store import load_record
    from benchmark.runner import run

    def go(*overrides: str, results: Path | None = None, strategy=None):
        cfg = compose_cfg(TINY_RUN + [f"results_dir={results or tmp_path}"] + list(overrides))
        return load_record(run(cfg, strategy))

    return go


@pytest.fixture
def data_cfg():
    from task_streams import DataConfig

    return DataConfig(train_per_class=2, test_per_class=2)


@pytest.fixture(scope="session")
def two_task_run(tmp_path_factory):
    """(record path, record) of one finished tiny run over dbpedia -> agnews with both scores, its predictions
    beside it; shared by the tests that read records, since it takes a few seconds."""
    import json

    from benchmark.runner import recipe as runner

    out = tmp_path_factory.mktemp("two_task_run")
    cfg = compose_cfg(["model=tiny", f"results_dir={out}", "stream.tasks=[dbpedia,agnews]", "data.train_per_class=2",
                       "data.test_per_class=2", "trainer.batch_size=4", "eval.max_new_tokens=6",
                       "eval.general_passages=2", "eval.general_tokens=32", "leaderboard=false"])
    path = runner.run(cfg)
    return path, json.loads(path.read_text())


# a real record of the current schema (committed, with its prediction files beside it)
TEMPLATE_RECORD = next(iter(sorted((ROOT / "results" / "examples" / "long_repro_cpu" / "runs").glob("*.json"))))


def schema_record(run_id: str = "r", seed: int = 1, config_hash: str | None = None) -> dict:
    """A record that passes the schema (a committed real one under another name), for tests of writing records.
    It names prediction files it does not carry: for the writer, not for the leaderboard."""
    import json

    rec = json.loads(TEMPLATE_RECORD.read_text())
    rec["run_id"], rec["seed"], rec["config"]["seed"] = run_id, seed, seed
    rows, tasks = rec["matrix"]["rows"], rec["matrix"]["columns"]
    # the template was made before records described their evaluations: a full schedule, as its matrix shows
    rec["evaluation"] = {"schedule": "full", "every_k": 2, "cells": len(rows) * len(tasks),
                         "full_cells": len(rows) * len(tasks), "eval_s": 1.0, "estimate_s": None, "unavailable": {},
                         "rows": [{"after": r, "cells": len(tasks), "prompts": 1, "generated_tokens": 0, "seconds": 0.1}
                                  for r in rows]}
    rec.setdefault("identity", {})  # made before records kept their content facts: it had none
    if config_hash is not None:
        rec["config_hash"] = config_hash
    return rec


def write_raw(runs: Path, rec: dict, name: str | None = None) -> Path:
    """A record file written as given, without the writer's schema check: how hand-made, older or hostile
    records reach a runs folder."""
    import json

    runs.mkdir(parents=True, exist_ok=True)
    path = runs / (name or f"{rec['run_id']}.json")
    path.write_text(json.dumps(rec, indent=1, sort_keys=True), encoding="utf-8")
    return path


def older(rec: dict) -> dict:
    """The record as one written before runs kept prediction files: the leaderboard can check it for consistency
    but not re-score it, and shows it as unverified (synthetic leaderboard tests have no prediction files)."""
    from benchmark.records.schema import LATER_KEYS

    return {k: v for k, v in rec.items() if k not in LATER_KEYS}
