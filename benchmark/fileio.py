"""Writing and reading files safely: the one atomic writer, the one strict JSON reader, and the random-state
(de)serialiser every checkpoint and strategy uses. Pure Python: the records and leaderboard rooms use it too."""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (model weights do not fit a read_bytes comfortably)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    """A rename is durable only once the folder holding the name is flushed too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, a race with other
    threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes, *, no_clobber: bool = False) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part: a temp file
    beside it, flushed to disk, then renamed over it (or, with `no_clobber`, linked to the name, which fails
    with FileExistsError if the name exists: atomic and never replacing a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would have given it
        if no_clobber:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    fsync_dir(path.parent)


def is_temp_name(name: str) -> bool:
    """What atomic_write and the checkpointer stage files as: in flight, or left behind by a crash."""
    return name.startswith(".tmp-") or name.endswith(".tmp")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json_strict(path: Path) -> Any:
    """Parse a JSON file, refusing the NaN and Infinity that Python's json module accepts by default (other
    readers, browsers and jq among them, reject them). Raises OSError, UnicodeDecodeError or ValueError."""
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_reject_constant)


def rng_to_json(rng: random.Random | None = None) -> list:
    """A Python random state (the global one by default) as JSON data."""
    version, state, gauss = (rng or random).getstate()
    return [version, list(state), gauss]


def rng_from_json(data: list, rng: random.Random | None = None) -> None:
    """Restore what rng_to_json saved into `rng` (the global random state by default)."""
    version, state, gauss = data
    (rng or random).setstate((version, tuple(state), gauss))
