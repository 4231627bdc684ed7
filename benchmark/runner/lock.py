"""One process per run configuration: two processes training the same run would interleave their checkpoints.

An flock() lock dies with its process, so the lock of a killed run never blocks the rerun that resumes it;
the pid and host written into the file only serve the message of the process that is refused.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from benchmark.errors import ClbenchError

LOCK_NAME = "run.lock"
ATTEMPTS = 10  # against a holder that removes the folder (a finished run) between our open() and flock()


class RunLock:
    """`with RunLock(checkpoint_folder):` holds an exclusive lock on `<folder>/run.lock` or raises ClbenchError.

    On release, a folder that holds nothing but the lock (a run that stopped before its first checkpoint, or
    found its record already written) is removed. A process that opened the lock file just before that
    deletion and then locks the orphaned inode notices and retries on the new file (_still_named), so two
    processes never both hold the run.
    """

    def __init__(self, folder: Path, key: str | None = None):
        self.folder = Path(folder)
        self.key = key or self.folder.name
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        for _ in range(ATTEMPTS):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise ClbenchError(f"run {self.key} is already running in process {holder.get('pid', '?')} on "
                                   f"{holder.get('host', '?')} (lock {self.path})") from None
            if _still_named(fd, self.path):
                self.fd = fd
                _write_holder(fd)
                return self
            os.close(fd)  # we locked a file that its holder had just removed: lock the current one instead
        raise ClbenchError(f"could not lock {self.path}: the file kept being replaced")

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            self._remove_if_alone()
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def _remove_if_alone(self) -> None:
        try:
            if [p.name for p in self.folder.iterdir()] == [LOCK_NAME] and _still_named(self.fd, self.path):
                self.path.unlink()
                self.folder.rmdir()  # fails harmlessly if another process has just created its own lock file
        except OSError:
            pass  # the folder went away with the run's checkpoints, or is no longer empty: nothing to tidy


def _still_named(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)


def _holder(fd: int) -> dict:
    # the holder may not have written its name yet: then the message says '?'
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
