"""Task streams declared as data: `tasks.yaml` defines the tasks, `streams.yaml` the published orders.

`load_stream("standard_order1", DataConfig(...))` returns a `Stream` of `Task`s, each holding rendered prompts
and label strings, plus the provenance of every split (file, derived hold-out, subsample) for the run record.
"""
from task_streams.registry import (  # noqa: F401
    DataConfig,
    Example,
    Stream,
    Task,
    TaskDataError,
    available_streams,
    available_tasks,
    load_stream,
    load_task,
    resolve_data_dir,
)
