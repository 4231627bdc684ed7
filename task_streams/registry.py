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
from task_streams import release

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DATA_HINT = (
    "put the CL_Benchmark release (folders TC/, SC/, NLI/, ... and instruction_config.json) there, "
    "or point to it with data.data_dir=/path or CLBENCH_DATA=/path, or install it with `clbench-data fetch`, or set "
    "data.hub_repo=<org/name> when online"
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
    val: list[Example] = field(default_factory=list)  # data.val_per_class per class held out of the training file

    def scored(self, split: str) -> list[Example]:
        """The examples an evaluation scores: the test split, or the validation split (eval.split=val)."""
        return {"test": self.test, "val": self.val}[split]


@dataclass
class Stream:
    name: str
    tasks: list[Task]
    skipped: list[str] = field(default_factory=list)
    replaces: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # {file under its data root: sha256} of every file read

    @property
    def unlisted(self) -> dict[str, str]:
        """The files read whose bytes are not the release manifest's (a modified release file, a user's own
        task): their hashes identify the run's data beside its configuration."""
        return release.unlisted(self.files)

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
            "release": {"manifest_sha256": release.manifest_sha256(), "unlisted": self.unlisted},
        }


# how a prompt becomes token ids (data.prompt_encoding; part of a run's identity, since it changes scores):
#   1  chat turn, head, sentence and tail tokenised apart and joined (the records made before 2026-11-30)
#   2  the whole prompt tokenised as one string, as the papers' collators and lm-evaluation-harness do
PROMPT_ENCODINGS = (1, 2)
PROMPT_ENCODING = 2


@dataclass
class DataConfig:
    """The data settings of a run (`data.*` on the command line): one class, its defaults the only ones."""

    data_dir: Optional[str] = None
    # a YAML of the user's own tasks (and streams) beside the release's, their files under its data_dir (docs/streams.md)
    extra_tasks: Optional[str] = None
    hub_repo: Optional[str] = None  # a hub dataset repo laid out like the release, used when data_dir is absent
    train_per_class: Optional[int] = None  # None: the full training split
    test_per_class: Optional[int] = None  # None: the full test split
    # held out of each task's training file before the training subsample, per class (tuning scores it with
    # eval.split=val; the test split is then never scored); None: no validation split
    val_per_class: Optional[int] = None
    seed: int = 0  # subsampling seed (independent of the training seed so that all runs see the same data)
    task_prefix: bool = True  # keep the "Task:/Dataset:" lines of the O-LoRA prompt
    # wrap each prompt as the user turn and the answer as the assistant turn of the tokenizer's chat template:
    # auto = when the tokenizer has one (SmolLM2-Instruct does), on = required, off = plain text
    chat_template: str = "auto"
    # how a prompt becomes token ids (PROMPT_ENCODINGS; benchmark/modeling/data.py Encoder)
    prompt_encoding: int = PROMPT_ENCODING

    def __post_init__(self):
        problems = [
            None if self.prompt_encoding in PROMPT_ENCODINGS else
            f"data.prompt_encoding must be one of {'|'.join(map(str, PROMPT_ENCODINGS))}, got {self.prompt_encoding!r}",
            None if self.chat_template in CHAT_TEMPLATE_MODES else
            f"data.chat_template must be one of {'|'.join(CHAT_TEMPLATE_MODES)}, got {self.chat_template!r}",
            None if self.train_per_class is None or self.train_per_class >= 1 else
            f"data.train_per_class must be >= 1 or null, got {self.train_per_class}",
            None if self.test_per_class is None or self.test_per_class >= 1 else
            f"data.test_per_class must be >= 1 or null, got {self.test_per_class}",
            None if self.val_per_class is None or self.val_per_class >= 1 else
            f"data.val_per_class must be >= 1 or null, got {self.val_per_class}",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise ClbenchError("; ".join(problems))


@functools.lru_cache(maxsize=8)
def _read_yaml_at(path: Path, mtime_ns: int, size: int) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise TaskDataError(f"{path}: not a readable YAML file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _read_yaml_cached(path: Path) -> Any:
    # the leaderboard hashes every record's config: parse the files once, again only when they change
    try:
        st = path.stat()
    except OSError as e:
        raise TaskDataError(f"{path}: cannot be read ({e.strerror or e})") from None
    return _read_yaml_at(path, st.st_mtime_ns, st.st_size)


USER_PREFIX = "user:"  # the sources and file keys of a user's own tasks, apart from the release's
USER_TASK_KEYS = {"version", "path", "family", "splits", "drop_labels", "instruction"}


@dataclass(frozen=True)
class Catalog:
    """The tasks and streams a run can name: the package's tasks.yaml and streams.yaml, plus a user's own YAML
    (data.extra_tasks) whose tasks read their files under `user_root`."""

    tasks: dict[str, dict[str, Any]]
    streams: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    user_root: Optional[Path] = None
    user_tasks: frozenset = frozenset()


def catalog(extra_tasks: str | None = None) -> Catalog:
    tasks_yaml, streams_yaml = _read_yaml_cached(HERE / "tasks.yaml"), _read_yaml_cached(HERE / "streams.yaml")
    tasks, streams = dict(tasks_yaml["tasks"]), dict(streams_yaml["streams"])
    if not extra_tasks:
        return Catalog(tasks, streams, tasks_yaml["defaults"])
    path = Path(extra_tasks).expanduser()
    user = _read_yaml_cached(path)
    if not isinstance(user, dict) or not isinstance(user.get("tasks"), dict) or not user["tasks"]:
        raise TaskDataError(f"{path}: data.extra_tasks must be a YAML mapping with a non-empty `tasks:` mapping "
                            "(see docs/streams.md)")
    unknown_top = set(user) - {"tasks", "streams", "data_dir"}
    if unknown_top:
        raise TaskDataError(f"{path}: unknown key {sorted(unknown_top)[0]!r} (allowed: tasks, streams, data_dir)")
    for name, spec in user["tasks"].items():
        problem = _user_task_problem(name, spec, tasks)
        if problem:
            raise TaskDataError(f"{path}: task {name!r}: {problem}")
    tasks.update(user["tasks"])
    for name, spec in (user.get("streams") or {}).items():
        if name in streams:
            raise TaskDataError(f"{path}: stream {name!r} is already a published stream; give yours another name")
        named = spec.get("tasks") if isinstance(spec, dict) else None
        if not (isinstance(named, list) and named and all(isinstance(t, str) and t in tasks for t in named)):
            raise TaskDataError(f"{path}: stream {name!r} needs `tasks:`, a list of known task names")
        streams[name] = spec
    root = (path.parent / str(user.get("data_dir", "."))).resolve()
    return Catalog(tasks, streams, tasks_yaml["defaults"], root, frozenset(user["tasks"]))


def _user_task_problem(name: Any, spec: Any, known: dict[str, Any]) -> str | None:
    if not isinstance(name, str) or name in known:
        return "is already a task of the release; give yours another name" if name in known else "names must be text"
    if not isinstance(spec, dict):
        return "must be a mapping (path, family, splits)"
    extra = set(spec) - USER_TASK_KEYS
    if extra:
        return f"unknown key {sorted(extra)[0]!r} (allowed: {', '.join(sorted(USER_TASK_KEYS))})"
    if not isinstance(spec.get("path"), str) or Path(spec["path"]).is_absolute() or ".." in Path(spec["path"]).parts:
        return "needs `path:`, a folder relative to the file's data_dir"
    if not isinstance(spec.get("family"), str):
        return "needs `family:` (a family of instruction_config.json, or any name with `instruction:`)"
    splits = spec.get("splits")
    if not (isinstance(splits, dict) and set(splits) == {"train", "test"}):
        return "needs `splits:` with train and test rules (as in task_streams/tasks.yaml)"
    return None


def available_tasks(extra_tasks: str | None = None) -> list[str]:
    return list(catalog(extra_tasks).tasks)


def task_version(spec: dict[str, Any]) -> int:
    return int(spec.get("version", 1))


def task_versions(tasks: list[str], extra_tasks: str | None = None) -> dict[str, int]:
    """{task: its declared version} for the known tasks among `tasks`; no data is read."""
    specs = catalog(extra_tasks).tasks
    return {t: task_version(specs[t]) for t in tasks if t in specs}


def stream_tasks(name: str, extra_tasks: str | None = None) -> list[str]:
    """The tasks of a published (or user-declared) stream ([] for an unknown name); no data is read."""
    spec = catalog(extra_tasks).streams.get(name)
    return list(spec["tasks"]) if spec else []


def available_streams(extra_tasks: str | None = None) -> list[str]:
    return list(catalog(extra_tasks).streams)


def resolve_data_dir(data_dir: str | None = None) -> Path:
    """data_dir if given, else $CLBENCH_DATA if set (either must hold the release), else the first of
    ../shared/data/cl_benchmark beside the checkout, the same relative to the cwd, ./data/cl_benchmark and the
    user cache that `clbench-data fetch` installs into."""
    explicit = data_dir or os.environ.get("CLBENCH_DATA")
    candidates = [explicit] if explicit else [str(REPO_ROOT.parent / "shared/data/cl_benchmark"),
                                              "../shared/data/cl_benchmark", "data/cl_benchmark",
                                              str(release.default_dest())]  # where `clbench-data fetch` installs
    for c in candidates:
        if (Path(c) / "instruction_config.json").is_file():
            return Path(c).resolve()
    raise TaskDataError(f"benchmark data folder not found at {candidates[0]}: {DATA_HINT}")


class _Files:
    """Resolves data-root-relative paths from a local folder or, when online, from a hub dataset repo, and keeps
    the sha256 of every file read (`read`, keyed by `prefix` + path): the content that identifies the data."""

    def __init__(self, root: Path | None, hub_repo: str | None = None, prefix: str = ""):
        self.root, self.hub_repo, self.prefix = root, hub_repo, prefix
        self.read: dict[str, str] = {}

    @classmethod
    def release(cls, cfg: DataConfig) -> _Files:
        try:
            return cls(resolve_data_dir(cfg.data_dir))
        except TaskDataError:
            if not cfg.hub_repo:
                raise
            return cls(None, cfg.hub_repo)

    def path(self, rel: str) -> Path | None:
        found = self._find(rel)
        if found is not None:
            self.read[self.prefix + rel] = release.file_sha256(found)
        return found

    def _find(self, rel: str) -> Path | None:
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
        """The file for an error message: where it was looked for on this machine."""
        return str(self.root / rel) if self.root is not None else f"hub:{self.hub_repo}/{rel}"

    def source(self, rel: str) -> str:
        """The file for a record: relative to its data root, since where the data sits is no part of a run."""
        return self.prefix + rel if self.root is not None else f"hub:{self.hub_repo}/{rel}"


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


class _Data:
    """The catalog of a run's tasks and the files behind them: the release's (opened when first needed, so that
    a stream of the user's own tasks with their own instructions needs no release) and the user's."""

    def __init__(self, cfg: DataConfig):
        self.cfg, self.catalog = cfg, catalog(cfg.extra_tasks)
        self._release: _Files | None = None
        self.user = _Files(self.catalog.user_root, prefix=USER_PREFIX) if self.catalog.user_root else None

    @property
    def release(self) -> _Files:
        if self._release is None:
            self._release = _Files.release(self.cfg)
        return self._release

    def files_for(self, task: str) -> _Files:
        return self.user if task in self.catalog.user_tasks else self.release

    def read(self) -> dict[str, str]:
        """{file: sha256} of every file read so far (user files prefixed with USER_PREFIX)."""
        return {**(self._release.read if self._release else {}), **(self.user.read if self.user else {})}

    def instruction(self, spec: dict[str, Any]) -> str:
        if "instruction" in spec:  # a user's task may state its own
            return str(spec["instruction"])
        instr_path = self.release.path("instruction_config.json")
        if instr_path is None:
            raise TaskDataError(f"{self.release.describe('instruction_config.json')} is missing: {DATA_HINT}")
        instructions = _load_json(instr_path)
        family = spec["family"]
        return instructions[family][0]["instruction"] if family in instructions else ""


def load_task(name: str, cfg: DataConfig | None = None, data: _Data | None = None) -> Task:
    cfg = cfg or DataConfig()
    data = data or _Data(cfg)
    if name not in data.catalog.tasks:
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(data.catalog.tasks)}")
    spec, defaults = data.catalog.tasks[name], data.catalog.defaults
    files = data.files_for(name)
    instruction = data.instruction(spec)
    family = spec["family"]

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
                records = [dict(r, _id=f"{files.prefix}{rel}#{i}") if isinstance(r, dict) else r
                           for i, r in enumerate(records)]
            # where the file sits is no part of the run: its path under the data root and its bytes' hash
            prov[split] = {"source": files.source(rel), "sha256": files.read[files.prefix + rel]}
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
        prov[split] = {"source": prov[src]["source"], "sha256": prov[src]["sha256"], "derived": f"{n} records held out of {src} with seed {seed}", "records": n}
        prov[src] = {**prov[src], "records": len(kept), "note": f"{n} records removed for the derived {split} split"}

    # one rng per task and split, so a task's subset is the same whichever stream it appears in
    rng = {s: random.Random(f"{cfg.seed}:{name}:{s}") for s in ("train", "test", "val")}
    val = []
    if cfg.val_per_class:  # first, so that no training example is also a validation one
        val = _per_class(raw["train"], cfg.val_per_class, rng["val"])
        held = {r["_id"] for r in val}
        raw["train"] = [r for r in raw["train"] if r["_id"] not in held]
        prov["val"] = {"source": prov["train"]["source"], "sha256": prov["train"]["sha256"], "records": len(val),
                       "derived": f"{cfg.val_per_class} per class held out of train with seed {cfg.seed}"}
    train = _per_class(raw["train"], cfg.train_per_class, rng["train"])
    test = _per_class(raw["test"], cfg.test_per_class, rng["test"])
    prov["train"]["used"], prov["test"]["used"] = len(train), len(test)
    if cfg.val_per_class:
        prov["val"]["used"] = len(val)
    for split, used in (("train", train), ("test", test), ("val", val)):
        if split not in prov:
            continue
        # the exact records and their order: two runs or machines with equal hashes saw the same data
        prov[split]["ids_sha256"] = hashlib.sha256("\n".join(r["_id"] for r in used).encode()).hexdigest()
    prov["subsample"] = {"train_per_class": cfg.train_per_class, "test_per_class": cfg.test_per_class, "seed": cfg.seed}
    if cfg.val_per_class:
        prov["subsample"]["val_per_class"] = cfg.val_per_class
    prov["version"] = task_version(spec)
    if name in data.catalog.user_tasks:  # the declaration itself, since no release defines it
        prov["declared"] = dict(spec)
    render = lambda r: _render(name, family, instruction, labels, cfg.task_prefix, r)  # noqa: E731
    return Task(name, family, labels, [render(r) for r in train], [render(r) for r in test], prov,
                [render(r) for r in val])


def load_stream(name: str, cfg: DataConfig | None = None, tasks: list[str] | None = None, missing: str | None = None) -> Stream:
    """A published order by name, or a custom one when `tasks` is given."""
    cfg = cfg or DataConfig()
    data = _Data(cfg)
    streams = data.catalog.streams
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
    loaded, skipped = [], []
    for t in spec["tasks"]:
        try:
            loaded.append(load_task(t, cfg, data))
        except TaskDataError as e:
            if missing != "skip" or "has no data in this release" not in str(e):
                raise
            skipped.append(t)
            warnings.warn(f"stream {name}: task {t!r} skipped, its data is absent from the release (recorded in the run)")
    if not loaded:
        raise TaskDataError(f"stream {name!r}: no task has data")
    return Stream(name, loaded, skipped, dict(spec.get("replaces", {})), data.read())
