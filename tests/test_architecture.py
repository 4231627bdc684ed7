"""The rules of the house (docs/architecture.md), each a test: the reporting rooms and the config schema import no
torch, strategies reach benchmark only through benchmark.api, and facts stated once stay consistent."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from benchmark.records import schema
from benchmark.records.metrics import METRICS
from tests.conftest import ROOT


@pytest.mark.parametrize("module", ["benchmark.leaderboard", "benchmark.records", "benchmark.records.store",
                                    "benchmark.records.build", "benchmark.records.predictions", "benchmark.config",
                                    "benchmark.cli"])
def test_reading_records_and_the_config_schema_import_no_torch(module):
    # a fresh interpreter: this one has torch loaded by other tests
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"importing {module} loads {out.stdout.strip()}"


def _benchmark_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "benchmark":
            names.append(node.module if node.module != "benchmark" else f"benchmark.{node.names[0].name}")
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "benchmark"]
    return names


def test_strategies_import_benchmark_only_through_its_api():
    files = sorted((ROOT / "strategies").rglob("*.py")) + sorted((ROOT / "tests" / "toy").glob("*.py"))
    assert len(files) > 10
    offenders = {str(p.relative_to(ROOT)): m for p in files for m in _benchmark_imports(p) if m != "benchmark.api"}
    assert offenders == {}


def test_the_api_reexports_only():
    tree = ast.parse((ROOT / "benchmark" / "api.py").read_text())
    defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    assert defined == []
    import benchmark.api as api

    assert all(hasattr(api, name) for name in api.__all__)


def test_the_metric_table_is_the_schema_of_the_metrics():
    assert set(METRICS) == set(typing.get_type_hints(schema.Metrics))
    for m in METRICS.values():
        assert m.unit in ("points", "fraction", "perplexity") and m.label
        assert not m.paired or m.quality  # a paired metric is shown, so it has a column


def test_every_logger_name_has_a_logger():
    from benchmark.config import LOGGERS
    from benchmark.runner.loggers import LOGGERS as CLASSES

    assert set(CLASSES) == set(LOGGERS)


def test_the_record_writer_refuses_a_record_that_fails_the_schema(two_task_run, tmp_path):
    from benchmark.records.store import RecordError, write_record

    path, rec = two_task_run
    assert schema.problems(rec) == []
    broken = json.loads(json.dumps(rec))
    broken["run_id"] = "broken"
    broken["cost"]["wall_s"] = "fast"
    with pytest.raises(RecordError, match=r"record 'broken' does not match the schema: record.cost.wall_s: expected float"):
        write_record(broken, tmp_path)
    extra = json.loads(json.dumps(rec)) | {"run_id": "extra", "status": "ok"}
    with pytest.raises(RecordError, match="record.status: not in the schema"):
        write_record(extra, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing reached the disk
    ok = json.loads(json.dumps(rec)) | {"run_id": "ok"}
    assert write_record(ok, tmp_path).name == "ok.json"


def test_older_records_are_read_through_one_upgrade():
    from benchmark.records.store import upgrade

    old = {"eval_mode": "loglik", "matrix": {"values": [[1.0], [2.0]]}, "metrics": {"aa": 2.0}}
    new = upgrade(old)
    assert new["primary_mode"] == "loglik" and new["scores"] == {"loglik": {"values": [[1.0], [2.0]], "metrics": {"aa": 2.0}}}
    assert "scores" not in old  # a copy
    assert schema.LATER_KEYS < set(schema.RunRecord.__required_keys__)
