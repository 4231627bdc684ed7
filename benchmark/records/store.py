"""Run records: identity, provenance, one JSON file per run written atomically and never overwritten (after
`problems` finds nothing), and strict reading."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmark.errors import ClbenchError
from benchmark.fileio import atomic_write, is_temp_name, read_json_strict  # noqa: F401  (is_temp_name: for readers)
from benchmark.records.schema import REQUIRED_ALWAYS, SCHEMA, SCORE_MODES, RunRecord, problems

# what a stored record must have to be read at all (the schema's keys but those added later: see `upgrade`)
REQUIRED = tuple(sorted(REQUIRED_ALWAYS))
PACKAGES = ("torch", "transformers", "peft", "accelerate", "hydra-core", "avalanche-lib", "wandb", "clbench", "numpy",
            "lm_eval")
LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"  # the checkout's root, beside pyproject.toml


class RecordError(ClbenchError, ValueError):
    """A file under results/ that is not a readable run record of this schema; the message names it.
    Still a ValueError, so that callers written before ClbenchError existed keep catching it."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


# keys that do not change results; seed too, so that runs differing only in seed share a hash (a leaderboard row)
BOOKKEEPING = ("seed", "results_dir", "resume", "keep_checkpoints", "leaderboard", "logger", "tuning")
# settings that say where things sit on one machine: never part of a run's identity (the same data or model
# under another path is the same run) and never written into a record (stored as null: a record names no local
# path). The content they point at is identified by hashes instead: see CONTENT_FACTS
LOCATIONS: tuple[tuple[str, ...], ...] = (("results_dir",), ("data", "data_dir"), ("data", "extra_tasks"),
                                          ("model", "cache_dir"), ("logger", "dir"))
# what identifies a run's results beside its configuration, computed when it runs and stored in its record's
# `identity` block (each only when it holds something, so that records made before it keep their hashes):
#   strategy_versions  {strategy: version} of the strategies run whose objective version is not 1 (strategies.base)
#   data_files         {file: sha256} of the data files read whose bytes are not the release manifest's
#                      (task_streams/release.json): a modified release, or a user's own task
#   user_tasks         {task: declaration} of the user's own tasks (data.extra_tasks)
#   model_weights      sha256 of a local model folder's files, which then stands for model.name
CONTENT_FACTS = ("strategy_versions", "data_files", "user_tasks", "model_weights")
# settings that decide which cells are evaluated, not what any evaluated cell or defined metric is: runs that
# differ only in them are one configuration, pooled on the metrics they both define
NOT_IDENTITY: tuple[tuple[str, ...], ...] = (("eval", "schedule"), ("eval", "every_k"))
# settings added after records were published, with the default that keeps the earlier behaviour: a config that
# holds the default is identified as one without the key, so a new setting does not split existing groups
LATER_DEFAULTS: dict[tuple[str, ...], Any] = {("trainer", "epochs_per_task"): {},
                                               ("trainer", "gradient_checkpointing"): False,
                                               ("dry_run",): False,  # a dry run writes no record
                                               ("eval", "batch_tokens"): 0,
                                               ("data", "extra_tasks"): None,
                                               ("data", "val_per_class"): None,
                                               ("eval", "split"): "test",
                                               # progprompt's records before the option scored with all prompts
                                               ("strategy", "task_prompts"): False,
                                               # every record before it tokenised prompts in pieces
                                               ("data", "prompt_encoding"): 1,
                                               # no lm-eval task: the runs before general ability through lm-eval
                                               ("general",): {"tasks": [], "per_subject": 5, "limit": None,
                                                              "num_fewshot": 0, "batch_size": 8, "seed": 1234,
                                                              "rows": "all"}}


# every task was at version 1 when versions were introduced (task_streams/tasks.yaml): only other versions enter
# the identity, so that the hashes of the records made before stay what they are
FIRST_TASK_VERSION = 1


def stream_task_versions(config: dict[str, Any]) -> dict[str, int]:
    """{task: version} of the tasks of the config's stream, from task_streams/tasks.yaml and streams.yaml
    (stream.tasks when set, else the published order stream.name); reads no data."""
    from task_streams.registry import stream_tasks, task_versions

    stream = config.get("stream")
    if not isinstance(stream, dict):
        return {}
    tasks = stream.get("tasks") or (stream_tasks(stream["name"]) if isinstance(stream.get("name"), str) else [])
    return task_versions([t for t in tasks if isinstance(t, str)])


def recorded_task_versions(record: dict[str, Any]) -> dict[str, int]:
    """{task: version} that a record's run used (stream.splits.<task>.version; records made before versions
    existed used version 1). For a stored record these, not today's tasks.yaml, identify its data."""
    splits = (record.get("stream") or {}).get("splits") or {}
    return {t: int(s.get("version", FIRST_TASK_VERSION)) for t, s in splits.items() if isinstance(s, dict)}


# LoRA's target default was [q_proj, v_proj] when records were first published; it is now [auto], which tries
# q_proj/v_proj first. On every model where [q_proj, v_proj] can run, [auto] picks exactly those, and on a model
# without them [q_proj, v_proj] cannot run at all: identifying [auto] as [q_proj, v_proj] keeps every hash and
# never joins different runs.
EARLIER_TARGETS = ["q_proj", "v_proj"]


def _same_targets_as_before(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("target_modules") == ["auto"]:
            node["target_modules"] = list(EARLIER_TARGETS)
        for v in node.values():
            _same_targets_as_before(v)
    elif isinstance(node, list):
        for v in node:
            _same_targets_as_before(v)


def parent_of(config: Any, path: tuple[str, ...] | list[str]) -> tuple[dict | None, str]:
    """(the mapping that holds the last key of a dotted path, that key); (None, key) where the path breaks off."""
    *parents, key = path
    node = config
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), key


def without_locations(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config with every LOCATIONS key that it holds set to null: what a record stores."""
    cleaned = json.loads(canonical_json(config))
    for path in LOCATIONS:
        node, key = parent_of(cleaned, path)
        if node is not None and key in node:
            node[key] = None
    return cleaned


def recorded_content(record: dict[str, Any]) -> dict[str, Any]:
    """The CONTENT_FACTS a stored record's run computed ({} for records made before they existed)."""
    block = record.get("identity")
    return {k: block[k] for k in CONTENT_FACTS if k in block} if isinstance(block, dict) else {}


def current_strategy_versions(config: dict[str, Any]) -> dict[str, int]:
    """The objective versions other than 1 of the config's strategies, as the installed code defines them."""
    from strategies.base import versions_of  # imports torch: only for a config about to run

    return versions_of(config.get("strategy") or {})


def identity_config(config: dict[str, Any], task_versions: dict[str, int] | None = None,
                    content: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of a run's config that identifies its results (a copy): no bookkeeping, no locations, with the
    versions of its stream's tasks that are not 1 (`task_versions`: the versions to use, e.g.
    recorded_task_versions of a stored record; default: those of task_streams/tasks.yaml now) and the content
    facts (`content`: CONTENT_FACTS as a run computes them or recorded_content of a record; default: the
    strategies' current objective versions, all a config tells before its data and model are read)."""
    cleaned = without_locations({k: v for k, v in config.items() if k not in BOOKKEEPING})
    for path in NOT_IDENTITY:
        node, key = parent_of(cleaned, path)
        if node is not None:
            node.pop(key, None)
    for path, default in LATER_DEFAULTS.items():
        node, key = parent_of(cleaned, path)
        if node is not None and key in node and node[key] == default:
            del node[key]
    _same_targets_as_before(cleaned.get("strategy"))
    versions = stream_task_versions(config) if task_versions is None else task_versions
    changed = {t: v for t, v in sorted(versions.items()) if v != FIRST_TASK_VERSION}
    if changed:
        cleaned["task_versions"] = changed
    content = {"strategy_versions": current_strategy_versions(config)} if content is None else content
    for key in CONTENT_FACTS:
        if content.get(key):
            cleaned[key] = content[key]
    if content.get("model_weights") and isinstance(cleaned.get("model"), dict):
        cleaned["model"].pop("name", None)  # the weights are the model; the folder's name is a label
    return cleaned


def record_identity(record: dict[str, Any]) -> dict[str, Any]:
    """identity_config of a stored record, from what its run used (task versions and content facts)."""
    return identity_config(record["config"], recorded_task_versions(record), recorded_content(record))


def config_hash(config: dict[str, Any], task_versions: dict[str, int] | None = None,
                content: dict[str, Any] | None = None) -> str:
    """Identity of a run's configuration: a hash of identity_config."""
    return hashlib.sha256(canonical_json(identity_config(config, task_versions, content)).encode()).hexdigest()[:12]


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
    return dict(_package_versions())


@functools.cache  # a scan of every installed distribution: once per process
def _package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def _static_hardware() -> tuple[tuple[str, Any], ...]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    info["cpu_model"] = _cpu_model()
    return tuple(info.items())


def hardware() -> dict[str, Any]:
    import torch

    # the platform facts once per process; the thread count and the GPUs as they are now
    static = dict(_static_hardware())
    info: dict[str, Any] = {**{k: static[k] for k in ("platform", "machine", "python", "cpu_count")},
                            "torch_threads": torch.get_num_threads()}
    info.update({k: static[k] for k in ("memory_gb", "cpu_model") if k in static})
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
        info["gpu_driver"] = _gpu_driver()
    return info


def _cpu_model() -> str | None:
    """The CPU's model name: results can differ across CPU types (vector units, thread counts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    """The code (git state, per run), the packages, the machine and whether the environment is the locked one."""
    return {"git": git_commit(), "packages": package_versions(), "hardware": hardware(),
            "environment": environment_lock()}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: hydra_core, Hydra-Core and hydra.core are one package


@functools.cache  # a scan of every installed distribution: once per process
def _installed() -> dict[str, str]:
    return {_normalise(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions()}


def lock_differences(lock_file: Path = LOCK_FILE) -> list[str] | None:
    """Packages whose installed version differs from requirements.lock ('name lock-version -> installed'),
    [] when all match, None when there is no lock file (an installed wheel rather than a checkout)."""
    try:
        lines = Path(lock_file).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    diffs = []
    for line in lines:
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" not in line:
            continue
        name, want = (x.strip() for x in line.split("==", 1))
        name = name.split("[", 1)[0]
        have = _installed().get(_normalise(name))
        if have != want:
            diffs.append(f"{name} {want} -> {have or 'not installed'}")
    return diffs


def environment_lock(lock_file: Path = LOCK_FILE) -> dict[str, Any]:
    """For provenance: whether the run used exactly the locked package set, and if not, what differed."""
    diffs = lock_differences(lock_file)
    # a handful is enough to see why; the full package list is in `packages` and pip freeze
    return {"lock": lock_file.name, "locked": diffs == [], "differs": None if diffs is None else diffs[:10]}


def _child_path(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def nonfinite_path(obj: Any, path: str = "") -> str | None:
    """The key path of the first NaN or infinity in a JSON-like object ('metrics.bwt', 'matrix.values[2][0]')."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "<top level>")
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = nonfinite_path(value, _child_path(path, key))
        if found:
            return found
    return None


def _strict_json(record: dict[str, Any]) -> str:
    # NaN and Infinity are not JSON: other readers (browsers, jq, pandas' strict mode) reject such a file
    try:
        return json.dumps(record, indent=1, sort_keys=True, default=str, allow_nan=False)
    except ValueError:
        where = nonfinite_path(record)
        raise RecordError(f"record {record.get('run_id')!r}: {where or 'a value'} is not a finite number; "
                          "records hold strict JSON (mark a diverged run and store null)") from None


def write_record(record: RunRecord, runs_dir: Path) -> Path:
    """Write runs_dir/<run_id>.json atomically after checking it against the schema; an existing file of that
    name is never replaced."""
    found = problems(record)
    if found:
        raise RecordError(f"record {record.get('run_id')!r} does not match the schema: {'; '.join(found[:3])}"
                          + (f" (and {len(found) - 3} more)" if len(found) > 3 else ""))
    text = _strict_json(record)  # before anything touches the disk
    final = runs_dir / f"{record['run_id']}.json"
    try:
        atomic_write(final, text, no_clobber=True)
    except FileExistsError:
        raise RecordError(f"{final} already exists; run records are never overwritten") from None
    return final


def load_record(path: Path) -> dict[str, Any]:
    """A record file, strictly: readable strict JSON, this schema, the keys every record has, a rectangular
    matrix; raises RecordError naming the file."""
    try:
        rec = read_json_strict(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise RecordError(f"{path}: not a readable JSON run record ({e}{_where_nonfinite(path, e)})") from None
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


def _where_nonfinite(path: Path, error: Exception) -> str:
    """', at metrics.aa' when the strict reader refused a bare NaN or Infinity: a lenient re-read names the field."""
    if "is not a JSON number" not in str(error):
        return ""
    try:
        where = nonfinite_path(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return ""
    return f", at {where}" if where else ""


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """A record written before a key existed, read as the current schema says wherever the old record implies
    the value (a copy; nothing is invented): `primary_mode` and `scores` from its one evaluation mode
    (eval_mode; the records before both modes were kept scored one); `predictions`, `anatomy`, `prompt_format`
    stay absent (those runs kept no prediction files, and readers show them as unverified / n/a)."""
    rec = dict(rec)
    if "scores" not in rec and rec.get("eval_mode") in SCORE_MODES:
        rec["scores"] = {rec["eval_mode"]: {"values": rec["matrix"]["values"], "metrics": rec["metrics"]}}
    if "primary_mode" not in rec and rec.get("eval_mode") in SCORE_MODES:
        rec["primary_mode"] = rec["eval_mode"]
    return rec


def load_records(runs_dir: Path, reader=None) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """(records, problems): every *.json under runs_dir but temp files, sorted by name, read with `reader`
    (load_record by default); unreadable ones reported, not dropped silently."""
    reader = reader or load_record
    good, bad = [], []
    for p in sorted(Path(runs_dir).glob("*.json")):
        if is_temp_name(p.name):
            continue
        try:
            good.append((p, reader(p)))
        except RecordError as e:
            bad.append(str(e))
    return good, bad


def find_finished(runs_dir: Path, config_hash: str, seed: int) -> Path | None:
    """The newest readable record of this configuration and seed under runs_dir, or None: lets a rerun of a
    finished command point at its record instead of silently training again."""
    found = None
    for p, rec in load_records(Path(runs_dir))[0]:  # sorted by name, which starts with the creation time
        if rec.get("config_hash") == config_hash and rec.get("seed") == seed:
            found = p
    return found
