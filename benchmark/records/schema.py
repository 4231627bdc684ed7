"""The run record (schema `clbench.run/1`) as types: every key of a record, with the type of its value, in one
place (as lm-evaluation-harness's result_schema.py does for its results). The producer is typed with it
(benchmark/records/build.py `build_record(...) -> RunRecord`, the runner's `train_stage(...) -> Stage`), and
`write_record` refuses a record for which `problems` finds anything, so the writer and this file cannot drift.

`config` is the run's whole configuration; its schema is benchmark/config.py's RunConfig. Records written before
a key existed lack it (prompt_format, anatomy, scores, primary_mode, predictions, stream.splits.<task>.version):
benchmark/records/store.py `upgrade` says what a reader may assume for each.

No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated annotations only.
"""
import types
import typing
from typing import Any, Literal, NotRequired, Optional, TypedDict, Union, get_args

SCHEMA = "clbench.run/1"
EvalMode = Literal["both", "generate", "loglik"]  # which scores every evaluation computes (eval.mode)
ScoreMode = Literal["generate", "loglik"]  # the scores a record holds
EVAL_MODES: tuple[str, ...] = get_args(EvalMode)
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)

# rows: zero-shot, then one per stage; columns: the stream's tasks; accuracy %; None where the evaluation schedule
# scored no cell (benchmark/runner/schedule.py)
Matrix = list[list[Optional[float]]]


class Metrics(TypedDict):
    aa: float
    bwt: Optional[float]  # None where undefined (one task; MTL's two-row matrix)
    fwt: Optional[float]
    forgetting: Optional[float]
    learning_accuracy: Optional[float]
    avg_incremental_accuracy: Optional[float]
    zero_shot_aa: float
    ppl_before: Optional[float]  # general-ability perplexity; None when eval.general_passages=0
    ppl_after: Optional[float]
    ppl_rel_change: Optional[float]
    fwt_vs_single_task: NotRequired[Optional[float]]  # only with single-task reference accuracies
    # general ability through lm-eval (record `general`): the mean over its tasks of their score in points before
    # training, after the last stage, and the change; absent in runs without lm-eval tasks
    general_before: NotRequired[Optional[float]]
    general_after: NotRequired[Optional[float]]
    general_change: NotRequired[Optional[float]]


class Split(TypedDict):
    # the file under its data root (user:<file> for a user's own task, hub:<repo>/<file>); absolute local paths in
    # records made before the release manifest
    source: str
    sha256: NotRequired[str]  # the file's bytes (absent in records made before the release manifest)
    records: int
    used: int
    ids_sha256: str  # the exact records used, in order
    derived: NotRequired[str]  # a split held out of another (tasks.yaml derive_from)
    note: NotRequired[str]  # the split another was held out of
    dropped: NotRequired[str]  # records removed by tasks.yaml drop_labels


class Subsample(TypedDict):
    train_per_class: Optional[int]
    test_per_class: Optional[int]
    seed: int
    val_per_class: NotRequired[int]


class TaskProvenance(TypedDict):
    train: Split
    test: Split
    val: NotRequired[Split]  # data.val_per_class: held out of the training file
    subsample: Subsample
    version: int  # the task's version in task_streams/tasks.yaml
    declared: NotRequired[dict[str, Any]]  # a user's own task (data.extra_tasks): its declaration


class Stream(TypedDict):
    name: str  # a published order, or custom:<task>+<task>... for stream.tasks
    tasks: list[str]  # the tasks run, in order
    skipped: list[str]  # tasks of the order without data (missing: skip)
    replaces: dict[str, str]
    splits: dict[str, TaskProvenance]
    release: NotRequired["Release"]  # absent in records made before the release manifest


class Release(TypedDict):
    manifest_sha256: str  # task_streams/release.json's {file: sha256} list, hashed
    unlisted: dict[str, str]  # {file: sha256} of the files read whose bytes are not the manifest's


class Identity(TypedDict, total=False):
    """What identifies the run's results beside its config (benchmark/records/store.py CONTENT_FACTS); each key
    only when it holds something."""
    strategy_versions: dict[str, int]
    data_files: dict[str, str]
    user_tasks: dict[str, dict[str, Any]]
    model_weights: str


class Strategy(TypedDict):
    name: str  # the strategy actually run (a composition: its parts joined by '+')
    config: dict[str, Any]
    # evaluation knew each example's task (PerTaskFT's own adapter per task); absent in records made before: False
    task_identity: NotRequired[bool]


class Model(TypedDict):
    name: str
    source: str
    dtype: str
    load_s: float
    parameters: int
    chat_template: bool  # what data.chat_template resolved to for this tokenizer
    architecture: NotRequired[Literal["decoder-only", "encoder-decoder"]]  # absent in records made before T5
    lora_targets: NotRequired[list[str]]  # the modules LoRA adapted (what target_modules [auto] resolved to)
    weights_sha256: NotRequired[str]  # a model loaded from a local folder: its files' hash


class MatrixBlock(TypedDict):
    rows: list[str]
    columns: list[str]
    values: Matrix
    unit: str


class PromptFormat(TypedDict):
    chat_template: str  # as asked: auto | on | off
    applied: bool


class GenerationStats(TypedDict):
    mean_tokens: float
    at_limit: float  # share of rows that reached max_new_tokens without EOS


class Generation(TypedDict):
    max_new_tokens: int
    rows: list[Optional[dict[str, GenerationStats]]]  # per evaluation, per task; None without generation


class TaskAnatomy(TypedDict):
    examples: int
    wrong: int
    same_task_label: int
    other_task_label: int
    just_trained: int
    no_label: int
    empty: int
    over_long: int
    malformed: int
    other_tasks: dict[str, int]


class AnatomySummary(TypedDict):
    tasks: list[str]
    wrong: int
    other_task_label_pct: Optional[float]
    same_task_label_pct: Optional[float]
    no_label_pct: Optional[float]
    just_trained_pct: Optional[float]


class Anatomy(TypedDict):
    rows: list[Optional[dict[str, TaskAnatomy]]]
    summary: Optional[AnatomySummary]


class Resumed(TypedDict):
    after_stages: list[int]
    attempts: int


class Cost(TypedDict):
    wall_s: float  # every attempt of a resumed run together
    train_s: float
    answer_tokens_per_s: Optional[float]
    peak_memory_mb: float
    trainable_params: int
    processes: int
    device: str
    mixed_precision: str


class Stage(TypedDict):
    tasks: list[str]
    steps: int
    micro_batches: int
    epochs: int
    seconds: float
    answer_tokens: int
    padded_tokens: int
    answer_tokens_per_s: Optional[float]
    padded_tokens_per_s: Optional[float]
    mean_loss: float
    examples: int


class EvaluationRow(TypedDict):
    after: str  # zero-shot, or the stage's tasks
    cells: int  # tasks scored
    prompts: int  # test examples scored
    generated_tokens: int  # new tokens generated (0 without generation)
    seconds: float


class Evaluation(TypedDict):
    schedule: Literal["full", "papers", "every_k"]  # what ran (eval.schedule auto resolved)
    every_k: int
    cells: int  # scored cells of the accuracy matrix; a cell not scored is null in every matrix
    full_cells: int  # (rows) x (tasks): what the full schedule scores
    rows: list[EvaluationRow]
    eval_s: float  # seconds in evaluation (this attempt's rows and the resumed ones), general perplexity included
    estimate_s: Optional[float]  # the run's wall time as predicted after its first stage (None: one stage)
    unavailable: dict[str, str]  # metric: why it is null (cells this schedule did not score)


class Setup(TypedDict):
    world_size: int
    per_device_batch: int
    grad_accum: int
    effective_batch: int
    model_dtype: str
    mixed_precision: str
    deterministic_algorithms: bool
    engine: str


class Git(TypedDict):
    commit: Optional[str]  # None outside a git checkout
    dirty: Optional[bool]


class Hardware(TypedDict):
    platform: str
    machine: str
    python: str
    cpu_count: Optional[int]
    torch_threads: int
    memory_gb: NotRequired[float]
    cpu_model: Optional[str]
    # the vector instructions torch's CPU kernels use (AVX512, AVX2, ...): CPU float sums, and so seeded CPU
    # runs, are identical only between machines of the same capability; absent in records made before it
    cpu_capability: NotRequired[str]
    gpus: NotRequired[list[str]]  # with CUDA only
    cuda: NotRequired[Optional[str]]
    gpu_driver: NotRequired[Optional[str]]


class EnvironmentLock(TypedDict):
    lock: str
    locked: bool
    differs: Optional[list[str]]  # None without a lock file


class Provenance(TypedDict):
    git: Git
    packages: dict[str, Optional[str]]
    hardware: Hardware
    environment: EnvironmentLock


class Score(TypedDict):
    values: Matrix
    metrics: Metrics


class GeneralRow(TypedDict):
    """One lm-eval task scored after one evaluation row."""
    row: int  # the accuracy matrix's row (0 = zero-shot)
    after: str
    score: float  # the task's metric in points (accuracy %)
    stderr: float  # lm-eval's standard error of it, in points
    n: int  # documents scored
    file: str  # the per-sample log in the predictions folder (gzip JSON lines; one line per document)
    sha256: str


class GeneralTask(TypedDict):
    """An lm-eval task run after every evaluation row (general.rows all) or the first and last (ends)."""
    metric: str  # lm-eval's metric the score is (acc)
    version: Optional[str]  # lm-eval's version of the task
    config_sha256: str  # lm-eval's config of the task as it ran, hashed
    documents: int  # documents scored per row
    ids_sha256: str  # which documents, in order
    source: str  # local:<file> and its sha256, or hub:<dataset>
    rows: list[GeneralRow]


class PredictionFile(TypedDict):
    row: int
    after: str
    file: str
    sha256: str


class Predictions(TypedDict):
    folder: str  # beside the record
    files: list[PredictionFile]


class RunRecord(TypedDict):
    schema: Literal["clbench.run/1"]  # SCHEMA
    run_id: str
    created_utc: str
    config: dict[str, Any]
    config_hash: str
    seed: int
    stream: Stream
    strategy: Strategy
    model: Model
    eval_mode: EvalMode
    matrix: MatrixBlock  # the primary mode's scores (primary_mode)
    metrics: Metrics
    prompt_format: PromptFormat
    generation: Generation
    anatomy: Anatomy
    resumed: Resumed
    cost: Cost
    stages: list[Stage]
    setup: Setup
    provenance: Provenance
    scores: dict[ScoreMode, Score]  # every mode computed
    primary_mode: ScoreMode
    predictions: Predictions
    evaluation: Evaluation
    identity: Identity
    general: NotRequired[dict[str, GeneralTask]]  # only in runs with lm-eval tasks (config general.tasks)


# keys the runner began to write after the first published records: a record without them is read through
# benchmark/records/store.py `upgrade`; every other key of RunRecord is required of every record ever written
LATER_KEYS = frozenset({"prompt_format", "generation", "anatomy", "resumed", "setup", "scores", "primary_mode",
                        "predictions", "evaluation", "identity"})
REQUIRED_ALWAYS = frozenset(RunRecord.__required_keys__ - LATER_KEYS)


def problems(value: Any, tp: Any = RunRecord, path: str = "record") -> list[str]:
    """Where `value` differs from type `tp`: '<key path>: <what>' for each missing or unexpected TypedDict key
    and each value of the wrong type ([] when it conforms). JSON numbers: an int is accepted where a float is
    declared, a bool never counts as a number."""
    if tp is Any:
        return []
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        hints = typing.get_type_hints(tp)
        out = [f"{path}.{k}: missing" for k in sorted(tp.__required_keys__ - set(value))]
        out += [f"{path}.{k}: not in the schema" for k in sorted(set(value) - set(hints), key=str)]
        for k, sub in hints.items():
            if k in value:
                out += problems(value[k], sub, f"{path}.{k}")
        return out
    if origin in (Union, types.UnionType):
        found = [problems(value, a, path) for a in args]
        return [] if any(not f for f in found) else min(found, key=len)
    if origin is Literal:
        return [] if value in args else [f"{path}: expected one of {list(args)}, got {value!r}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in problems(v, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        out = []
        for k, v in value.items():
            out += problems(k, args[0], f"{path} key {k!r}")
            out += problems(v, args[1], f"{path}.{k}")
        return out
    if value is None:
        return [] if tp is type(None) else [f"{path}: expected {tp.__name__}, got null"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    return [] if ok else [f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}"[:200]]
