"""Loading, validating, splitting and subsampling the benchmark tasks described in tasks.yaml/streams.yaml."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from benchmark.errors import ClbenchError

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DATA_HINT = (
    "put the CL_Benchmark release (folders TC/, SC/, NLI/, ... and instruction_config.json) there, "
    "or point to it with data.data_dir=/path or CLBENCH_DATA=/path, or set data.hub_repo=<org/name> when online"
)


CHAT_TEMPLATE_MODES = ("auto", "on", "off")
MISSING_POLICIES = ("error", "skip")  # what a stream does with a task that has no data in the release


class TaskDataError(ClbenchError, ValueError):
    """A task's data is missing or malformed; the message names the file and record."""


@dataclass(frozen=True)
class Example:
    """One prompt, split so that only the sentence is truncated when it is too long."""

    head: str  # task/dataset prefixes, instruction and options
    sentence: str
    tail: str  # "\nAnswer:"
    label: str
    id: str = ""  # "<file in the release>#<record index>": which record this is, for predictions and split hashes

    @property
    def prompt(self) -> str:
        return self.head + self.sentence + self.tail


@dataclass
class Task:
    name: str
    family: str
    labels: list[str]
    train: list[Example]
    test: list[Example]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stream:
    name: str
    tasks: list[Task]
    skipped: list[str] = field(default_factory=list)
    replaces: dict[str, str] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def describe(self) -> dict[str, Any]:
        """The stream as it goes into a run record: order, skipped tasks, and how each split was made."""
        return {
            "name": self.name,
            "tasks": self.task_names,
            "skipped": list(self.skipped),
            "replaces": dict(self.replaces),
            "splits": {t.name: t.provenance for t in self.tasks},
        }


@dataclass
class DataConfig:
    """The data settings of a run (`data.*` on the command line): one class, its defaults the only ones."""

    data_dir: Optional[str] = None
    hub_repo: Optional[str] = None  # a hub dataset repo laid out like the release, used when data_dir is absent
    train_per_class: Optional[int] = None  # None: the full training split
    test_per_class: Optional[int] = None  # None: the full test split
    seed: int = 0  # subsampling seed (independent of the training seed so that all runs see the same data)
    task_prefix: bool = True  # keep the "Task:/Dataset:" lines of the O-LoRA prompt
    # wrap each prompt as the user turn and the answer as the assistant turn of the tokenizer's chat template:
    # auto = when the tokenizer has one (SmolLM2-Instruct does), on = required, off = plain text
    chat_template: str = "auto"

    def __post_init__(self):
        problems = [
            None if self.chat_template in CHAT_TEMPLATE_MODES else
            f"data.chat_template must be one of {'|'.join(CHAT_TEMPLATE_MODES)}, got {self.chat_template!r}",
            None if self.train_per_class is None or self.train_per_class >= 1 else
            f"data.train_per_class must be >= 1 or null, got {self.train_per_class}",
            None if self.test_per_class is None or self.test_per_class >= 1 else
            f"data.test_per_class must be >= 1 or null, got {self.test_per_class}",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise ClbenchError("; ".join(problems))


def _read_yaml(name: str) -> dict[str, Any]:
    with open(HERE / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


def available_tasks() -> list[str]:
    return list(_read_yaml("tasks.yaml")["tasks"])


@functools.lru_cache(maxsize=8)
def _read_yaml_at(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _read_yaml_cached(name: str) -> dict[str, Any]:
    # the leaderboard hashes every record's config: parse the files once, again only when they change
    path = HERE / name
    st = path.stat()
    return _read_yaml_at(path, st.st_mtime_ns, st.st_size)


def task_version(spec: dict[str, Any]) -> int:
    return int(spec.get("version", 1))


def task_versions(tasks: list[str]) -> dict[str, int]:
    """{task: its version in tasks.yaml} for the known tasks among `tasks`; no data is read."""
    specs = _read_yaml_cached("tasks.yaml")["tasks"]
    return {t: task_version(specs[t]) for t in tasks if t in specs}


def stream_tasks(name: str) -> list[str]:
    """The tasks of a published stream in streams.yaml ([] for an unknown name); no data is read."""
    spec = _read_yaml_cached("streams.yaml")["streams"].get(name)
    return list(spec["tasks"]) if spec else []


def available_streams() -> list[str]:
    return list(_read_yaml("streams.yaml")["streams"])


def resolve_data_dir(data_dir: str | None = None) -> Path:
    """data_dir if given, else $CLBENCH_DATA if set (either must hold the release), else the first of
    ../shared/data/cl_benchmark beside the checkout, the same relative to the cwd, and ./data/cl_benchmark."""
    explicit = data_dir or os.environ.get("CLBENCH_DATA")
    candidates = [explicit] if explicit else [str(REPO_ROOT.parent / "shared/data/cl_benchmark"),
                                              "../shared/data/cl_benchmark", "data/cl_benchmark"]
    for c in candidates:
        if (Path(c) / "instruction_config.json").is_file():
            return Path(c).resolve()
    raise TaskDataError(f"benchmark data folder not found at {candidates[0]}: {DATA_HINT}")


class _Files:
    """Resolves release-relative paths from a local folder or, when online, from a hub dataset repo."""

    def __init__(self, cfg: DataConfig):
        self.hub_repo = None
        try:
            self.root = resolve_data_dir(cfg.data_dir)
        except TaskDataError:
            if not cfg.hub_repo:
                raise
            self.root, self.hub_repo = None, cfg.hub_repo

    def path(self, rel: str) -> Path | None:
        if self.root is not None:
            p = self.root / rel
            return p if p.is_file() else None
        from huggingface_hub import hf_hub_download  # only when online and asked for
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(self.hub_repo, rel, repo_type="dataset"))
        except EntryNotFoundError:
            return None

    def describe(self, rel: str) -> str:
        return str(self.root / rel) if self.root is not None else f"hub:{self.hub_repo}/{rel}"


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # unreadable: permissions, a folder where a file should be, I/O errors
        raise TaskDataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _validate_records(records: Any, labels: list[str], path: Path) -> list[dict[str, str]]:
    if not isinstance(records, list):
        raise TaskDataError(f"{path}: expected a JSON list of {{'sentence', 'label'}} records, got {type(records).__name__}")
    if not records:
        raise TaskDataError(f"{path}: the split is empty")
    label_set = set(labels)
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("sentence"), str) or not isinstance(r.get("label"), str):
            raise TaskDataError(f"{path}: record {i} is malformed (needs string fields 'sentence' and 'label'): {str(r)[:120]}")
        if r["label"] not in label_set:
            raise TaskDataError(f"{path}: record {i} has unknown label {r['label']!r} (labels.json: {labels})")
    return records


def _per_class(records: list[dict[str, str]], k: int | None, rng: random.Random) -> list[dict[str, str]]:
    """Up to k records of each label, drawn with rng, in a shuffled but deterministic order."""
    if k is None:
        return list(records)
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    picked: list[dict[str, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        picked += rng.sample(group, min(k, len(group)))
    rng.shuffle(picked)
    return picked


def _render(task: str, family: str, instruction: str, labels: list[str], prefix: bool, r: dict[str, str]) -> Example:
    head = f"Task:{family}\nDataset:{task}\n" if prefix else ""
    if instruction:  # COPA has none: its sentence already states the choice
        head += f"{instruction}Option: {', '.join(labels)} \n"
    return Example(head=head, sentence=r["sentence"], tail="\nAnswer:", label=r["label"], id=r.get("_id", ""))


def load_task(name: str, cfg: DataConfig | None = None, files: _Files | None = None) -> Task:
    cfg = cfg or DataConfig()
    spec_all = _read_yaml("tasks.yaml")
    if name not in spec_all["tasks"]:
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(spec_all['tasks'])}")
    spec, defaults = spec_all["tasks"][name], spec_all["defaults"]
    files = files or _Files(cfg)
    instr_path = files.path("instruction_config.json")
    if instr_path is None:
        raise TaskDataError(f"{files.describe('instruction_config.json')} is missing: {DATA_HINT}")
    instructions = _load_json(instr_path)
    family = spec["family"]
    instruction = instructions[family][0]["instruction"] if family in instructions else ""

    labels_rel = f"{spec['path']}/labels.json"
    labels_path = files.path(labels_rel)
    if labels_path is None:
        raise TaskDataError(f"task {name!r}: {files.describe(labels_rel)} is missing: {DATA_HINT}")
    labels = _load_json(labels_path)
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise TaskDataError(f"{labels_path}: expected a non-empty JSON list of label strings")

    raw: dict[str, list[dict[str, str]]] = {}
    prov: dict[str, Any] = {}
    for split in ("train", "test"):
        rule = spec["splits"][split]
        if rule == "missing":
            raise TaskDataError(
                f"task {name!r} has no data in this release ({files.describe(spec['path'])} holds only labels.json); "
                f"add train.json/test.json there or use a stream variant that replaces it (e.g. stream=standard_order1_yelp)"
            )
        if "file" in rule:
            rel = f"{spec['path']}/{rule['file']}.json"
            p = files.path(rel)
            if p is None:
                raise TaskDataError(f"task {name!r}: split file {files.describe(rel)} is missing: {DATA_HINT}")
            records = _load_json(p)
            if isinstance(records, list):  # ids before any filtering, so that they are record indices in the file
                records = [dict(r, _id=f"{rel}#{i}") if isinstance(r, dict) else r for i, r in enumerate(records)]
            prov[split] = {"source": files.describe(rel)}
            if spec.get("drop_labels") and isinstance(records, list):
                kept = [r for r in records if not (isinstance(r, dict) and r.get("label") in spec["drop_labels"])]
                if len(kept) < len(records):
                    prov[split]["dropped"] = f"{len(records) - len(kept)} records with label(s) {spec['drop_labels']}"
                records = kept
            raw[split] = _validate_records(records, labels, p)
            prov[split]["records"] = len(raw[split])
    for split in ("train", "test"):  # derived splits after the file-backed ones exist
        rule = spec["splits"][split]
        if "derive_from" not in rule:
            continue
        src, n = rule["derive_from"], int(rule["holdout"])
        seed = int(rule.get("seed", defaults["derive_seed"]))
        order = list(range(len(raw[src])))
        random.Random(seed).shuffle(order)
        held, kept = sorted(order[:n]), sorted(order[n:])
        raw[split] = [raw[src][i] for i in held]
        raw[src] = [raw[src][i] for i in kept]
        prov[split] = {"source": prov[src]["source"], "derived": f"{n} records held out of {src} with seed {seed}", "records": n}
        prov[src] = {**prov[src], "records": len(kept), "note": f"{n} records removed for the derived {split} split"}

    # one rng per task and split, so a task's subset is the same whichever stream it appears in
    rng = {s: random.Random(f"{cfg.seed}:{name}:{s}") for s in ("train", "test")}
    train = _per_class(raw["train"], cfg.train_per_class, rng["train"])
    test = _per_class(raw["test"], cfg.test_per_class, rng["test"])
    prov["train"]["used"], prov["test"]["used"] = len(train), len(test)
    for split, used in (("train", train), ("test", test)):
        # the exact records and their order: two runs or machines with equal hashes saw the same data
        prov[split]["ids_sha256"] = hashlib.sha256("\n".join(r["_id"] for r in used).encode()).hexdigest()
    prov["subsample"] = {"train_per_class": cfg.train_per_class, "test_per_class": cfg.test_per_class, "seed": cfg.seed}
    prov["version"] = task_version(spec)
    render = lambda r: _render(name, family, instruction, labels, cfg.task_prefix, r)  # noqa: E731
    return Task(name, family, labels, [render(r) for r in train], [render(r) for r in test], prov)


def load_stream(name: str, cfg: DataConfig | None = None, tasks: list[str] | None = None, missing: str | None = None) -> Stream:
    """A published order by name, or a custom one when `tasks` is given."""
    cfg = cfg or DataConfig()
    streams = _read_yaml("streams.yaml")["streams"]
    if tasks is None:
        if name not in streams:
            raise TaskDataError(f"unknown stream {name!r}; known streams: {', '.join(streams)}")
        spec = streams[name]
    else:
        # a custom order is its own stream: named after its tasks, never ranked as the stream it was derived from
        spec = {"tasks": list(tasks), "missing": "error"}
        name = "custom:" + "+".join(tasks)
    missing = missing or spec.get("missing", "error")
    if missing not in MISSING_POLICIES:
        raise TaskDataError(f"stream {name!r}: missing must be one of {'|'.join(MISSING_POLICIES)}, got {missing!r}")
    files = _Files(cfg)
    loaded, skipped = [], []
    for t in spec["tasks"]:
        try:
            loaded.append(load_task(t, cfg, files))
        except TaskDataError as e:
            if missing != "skip" or "has no data in this release" not in str(e):
                raise
            skipped.append(t)
            warnings.warn(f"stream {name}: task {t!r} skipped, its data is absent from the release (recorded in the run)")
    if not loaded:
        raise TaskDataError(f"stream {name!r}: no task has data")
    return Stream(name, loaded, skipped, dict(spec.get("replaces", {})))
