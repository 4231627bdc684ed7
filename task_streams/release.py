"""The benchmark release identified by content: a committed manifest of sha256 sums (release.json), the hash of
every file a run reads, and the `clbench-data` command that fetches the release from an archive URL (or a local
archive), checks every file against the manifest before anything is installed, and verifies a data folder.

The manifest was made from the release as used here (../shared/data/cl_benchmark), which is O-LoRA's
`CL_Benchmark/` at the pinned commit plus its `configs/instruction_config.json` and licence; each entry names the
archive member it comes from. Files of the upstream archive that the manifest does not list (dev.json, which is
test.json again; the files of 4 MiB or more that this release lacks, see tasks.yaml's `missing` and `derive_from`
rules) are never extracted. Archive members are looked up by name and must be regular files: no path of the
archive decides where anything is written."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from benchmark.errors import ClbenchError
from benchmark.fileio import sha256_file

MANIFEST = Path(__file__).resolve().parent / "release.json"


class ReleaseError(ClbenchError, ValueError):
    """A release archive or data folder that does not match the manifest; the message names the file."""


@functools.cache
def manifest() -> dict[str, Any]:
    with open(MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def manifest_sha256() -> str:
    """The release's identity: a hash of the {file: sha256} list (not of the manifest's prose or URL)."""
    files = {rel: e["sha256"] for rel, e in manifest()["files"].items()}
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@functools.lru_cache(maxsize=512)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, computed once per process while the file is unchanged."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def unlisted(hashes: dict[str, str]) -> dict[str, str]:
    """The entries of {release-relative file: sha256} that are not the manifest's bytes: a modified release
    file, or a file of a user's own task. These enter a run's configuration identity."""
    files = manifest()["files"]
    return {rel: sha for rel, sha in sorted(hashes.items()) if files.get(rel, {}).get("sha256") != sha}


def default_dest() -> Path:
    """Where `clbench-data fetch` installs the release: $CLBENCH_CACHE or the user cache, like the model cache."""
    env = os.environ.get("CLBENCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clbench"
    return base / "data" / "cl_benchmark"


# ----------------------------------------------------------------------------------------------- verify
def verify(folder: Path) -> list[str]:
    """Problems of a data folder against the manifest, one line per file ([] when every file matches)."""
    folder = Path(folder)
    found = []
    for rel, entry in sorted(manifest()["files"].items()):
        p = folder / rel
        if not p.is_file():
            found.append(f"{p}: missing")
        elif file_sha256(p) != entry["sha256"]:
            found.append(f"{p}: sha256 {file_sha256(p)[:12]}... is not the release's {entry['sha256'][:12]}...")
    return found


# ----------------------------------------------------------------------------------------------- fetch
def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310  (http(s) or file URLs by design)
            return r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ReleaseError(f"{url}: could not be downloaded ({reason})") from None


class _Archive:
    """Regular-file members of a .tar(.gz|.bz2|.xz) or .zip archive, read by name."""

    def __init__(self, data: bytes, name: str):
        self.name = name
        try:
            if zipfile.is_zipfile(io.BytesIO(data)):
                z = zipfile.ZipFile(io.BytesIO(data))
                self.members = {i.filename: i for i in z.infolist() if not i.is_dir()}
                self._read = lambda m: z.read(m)
            else:
                t = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
                self.members = {m.name: m for m in t.getmembers() if m.isfile()}  # no links, devices or folders
                self._read = lambda m: t.extractfile(m).read()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise ReleaseError(f"{name}: not a readable .tar.gz or .zip archive ({e})") from None

    def find(self, member: str) -> str | None:
        """The archive name of `member`, at the top or under one top folder (GitHub's <repo>-<commit>/)."""
        if member in self.members:
            return member
        hits = [n for n in self.members if "/" in n and n.split("/", 1)[1] == member]
        return hits[0] if len(hits) == 1 else None

    def read(self, name: str) -> bytes:
        return self._read(self.members[name])


def fetch(url: str | None = None, archive: Path | None = None, dest: Path | None = None, timeout: float = 120.0) -> Path:
    """Download the release (or read a local archive), check every manifest file's sha256, and install the
    files under dest (replacing an earlier copy only once the new one is complete). Nothing is installed when
    any file is missing or differs; the error names it."""
    dest = Path(dest or default_dest())
    if archive is not None:
        origin = str(archive)
        try:
            data = Path(archive).read_bytes()
        except OSError as e:
            raise ReleaseError(f"{archive}: cannot be read ({e.strerror or e})") from None
    else:
        origin = url or manifest()["source"]["url"]
        data = _download(origin, timeout)
    arc = _Archive(data, origin)
    contents, problems = {}, []
    for rel, entry in sorted(manifest()["files"].items()):
        name = arc.find(entry["member"])
        if name is None:
            problems.append(f"{entry['member']} (for {rel}) is not in the archive")
            continue
        body = arc.read(name)
        sha = hashlib.sha256(body).hexdigest()
        if sha != entry["sha256"]:
            problems.append(f"{name}: sha256 {sha[:12]}... is not the release's {entry['sha256'][:12]}...")
        contents[rel] = body
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ReleaseError(f"{origin}: {problems[0]}{more}; nothing was installed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-release-", dir=dest.parent))
    try:
        for rel, body in contents.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(body)
        if dest.exists():
            old = dest.with_name(dest.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def make_manifest(folder: Path, members: dict[str, str], source: dict[str, str]) -> dict[str, Any]:
    """A manifest of every file under folder ({release-relative path: sha256, bytes, archive member}); the member
    of a file is members[rel] when given, else CL_Benchmark/<rel>. Used once to write release.json."""
    folder = Path(folder)
    files = {}
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        rel = p.relative_to(folder).as_posix()
        files[rel] = {"sha256": file_sha256(p), "bytes": p.stat().st_size,
                      "member": members.get(rel, f"CL_Benchmark/{rel}")}
    return {"name": "cl_benchmark", "source": source, "files": files}
