"""Run records: one JSON file per run, with full provenance, written atomically and never overwritten."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = "clbench.run/1"
REQUIRED = ("schema", "run_id", "config", "seed", "stream", "strategy", "model", "matrix", "metrics", "provenance")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "hydra-core", "avalanche-lib", "wandb", "clbench", "numpy")


class RecordError(ValueError):
    """A file under results/ that is not a readable run record of this schema; the message names it."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict[str, Any]) -> str:
    """Identity of a run's configuration, without the bookkeeping keys that do not change results."""
    # seed excluded: runs that differ only in seed share a hash, which is how the leaderboard groups them
    cleaned = {k: v for k, v in config.items()
               if k not in ("seed", "results_dir", "resume", "keep_checkpoints", "leaderboard", "logger")}
    return hashlib.sha256(canonical_json(cleaned).encode()).hexdigest()[:12]


def git_commit(cwd: Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def provenance() -> dict[str, Any]:
    return {"git": git_commit(), "packages": package_versions(), "hardware": hardware()}


def write_record(record: dict[str, Any], runs_dir: Path) -> Path:
    """Write runs_dir/<run_id>.json atomically; an existing file of that name is never replaced."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordError(f"record {record.get('run_id')!r} lacks {missing}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    final = runs_dir / f"{record['run_id']}.json"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=runs_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the name exists: atomic and no-clobber, unlike rename(), which would replace it
        os.link(tmp, final)
    except FileExistsError:
        raise RecordError(f"{final} already exists; run records are never overwritten") from None
    finally:
        os.unlink(tmp)
    return final


def load_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a readable JSON run record ({e})") from None
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        found = rec.get("schema") if isinstance(rec, dict) else type(rec).__name__
        raise RecordError(f"{path}: schema {found!r} is not {SCHEMA!r}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise RecordError(f"{path}: record lacks {', '.join(missing)}")
    R = rec["matrix"].get("values") if isinstance(rec["matrix"], dict) else None
    if not (isinstance(R, list) and R and all(isinstance(r, list) and len(r) == len(R[0]) for r in R)):
        raise RecordError(f"{path}: accuracy matrix is missing or ragged")
    return rec


def load_records(runs_dir: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """(records, problems): every *.json under runs_dir, sorted by name; unreadable ones reported, not dropped silently."""
    good, bad = [], []
    for p in sorted(Path(runs_dir).glob("*.json")):
        try:
            good.append((p, load_record(p)))
        except RecordError as e:
            bad.append(str(e))
    return good, bad
