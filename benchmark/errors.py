"""The one base class of user-facing errors, and how far a run has got (for the interrupt message).

`clbench-run` prints a ClbenchError as one line and exits 2; any other exception is a bug and keeps its
traceback. So raise a ClbenchError (or a subclass) only when the message alone tells the user what to fix.
"""
from __future__ import annotations

from dataclasses import dataclass


class ClbenchError(Exception):
    """A mistake of the user or of their inputs; the message names the culprit (a key, a file, a process)."""


@dataclass
class Progress:
    """What a rerun of an interrupted command will pick up: the runner updates it, the CLI reports it.

    A module-level object rather than a value carried by the exception, because an interrupt (Ctrl-C, SIGTERM)
    can arrive anywhere, including in library code that knows nothing of stages.
    """

    run_key: str | None = None
    stages: int | None = None  # stages of the run, once known
    saved: int = 0  # the last stage whose checkpoint is on disk: a rerun resumes after it
    resume: bool = True  # whether the same command resumes (config key `resume`)

    def reset(self) -> None:
        self.start(None, None)

    def start(self, run_key: str | None, stages: int | None, saved: int = 0, resume: bool = True) -> None:
        self.run_key, self.stages, self.saved, self.resume = run_key, stages, saved, resume

    def stage_saved(self, stage: int) -> None:
        self.saved = stage

    def interrupted_message(self) -> str:
        if self.run_key is None:
            return "interrupted before the run started; rerun the same command to start it"
        of = f" of {self.stages}" if self.stages else ""
        if self.saved == 0:
            return f"interrupted before stage 1{of} finished; rerun the same command to start again"
        if not self.resume:
            return f"interrupted after stage {self.saved}{of}; rerun it with resume=true to resume"
        return f"interrupted after stage {self.saved}{of}; rerun the same command to resume"


PROGRESS = Progress()
