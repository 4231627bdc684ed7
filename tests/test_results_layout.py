"""A default run writes only ignored paths; the committed example sets stay tracked and up to date.

`make run` used to rewrite committed records and leaderboards, so a user's first run dirtied the checkout and
the next commit could carry it into the examples. The user's output (records, leaderboard, Hydra folders,
checkpoints under results_dir) must be ignored by git; the example sets in results/examples/<name>/ must not be.
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# every example set, found rather than listed, so that a new one is checked from the day it is added
EXAMPLES = sorted(p.name for p in (ROOT / "results" / "examples").iterdir() if p.is_dir())
BOARD_FILES = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.html")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def git_checkout():
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not in a git checkout (an sdist or an installed copy has no .gitignore to check)")


def _default_results_dir() -> str:
    # the default a plain `clbench-run` composes (RunConfig's; conf/config.yaml no longer restates it), so moving
    # the default cannot dodge the check; Hydra's own folders must lie under it
    from benchmark.config import RunConfig

    cfg = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    assert cfg["hydra"]["run"]["dir"].startswith("${results_dir}/hydra/")
    assert cfg["hydra"]["sweep"]["dir"].startswith("${results_dir}/hydra/")
    return RunConfig().results_dir


def test_every_path_a_default_run_writes_is_ignored_by_git(git_checkout):
    res = _default_results_dir()
    written = [f"{res}/runs/20990101T000000-seq_lora-demo-0123456789ab-s1-abcdef.json",
               *(f"{res}/{name}" for name in BOARD_FILES),
               f"{res}/checkpoints/0123456789ab-s1/stage-1/adapter.safetensors",
               f"{res}/hydra/2099-01-01_00-00-00_seq_lora_s1/.hydra/config.yaml",
               f"{res}/hydra/multirun_2099-01-01_00-00-00/0_seq_lora_s1/.hydra/config.yaml"]
    # without --no-index a tracked file is reported as not ignored: a committed copy of any of these would fail
    p = _git("check-ignore", *written)
    ignored = set(p.stdout.splitlines())
    assert ignored == set(written), f"not ignored by git: {sorted(set(written) - ignored)}"


def test_no_committed_file_lies_under_an_ignored_results_path(git_checkout):
    # a tracked file that matches .gitignore is still rewritten by a run and then shows in `git status`
    p = _git("ls-files", "--cached", "--ignored", "--exclude-standard", "--", "results")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_set_is_tracked_with_its_own_leaderboard(git_checkout, name):
    folder = f"results/examples/{name}"
    tracked = set(_git("ls-files", "--", folder).stdout.splitlines())
    assert {f"{folder}/{f}" for f in BOARD_FILES} <= tracked
    assert any(t.startswith(f"{folder}/runs/") and t.endswith(".json") for t in tracked), f"{folder}/runs has no record"
    # a new record added to an example set must not be silently ignored
    assert _git("check-ignore", "--no-index", f"{folder}/runs/new-record.json").returncode == 1


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_leaderboard_is_what_its_records_give(tmp_path, name):
    from benchmark import leaderboard

    folder = ROOT / "results" / "examples" / name
    shutil.copytree(folder / "runs", tmp_path / "runs")
    if (folder / "claims.yaml").is_file():  # judged in the leaderboard (benchmark/leaderboard/claims.py)
        shutil.copy(folder / "claims.yaml", tmp_path / "claims.yaml")
    leaderboard.regenerate(tmp_path / "runs", tmp_path)
    stale = [f for f in BOARD_FILES if (tmp_path / f).read_bytes() != (folder / f).read_bytes()]
    assert not stale, (f"{stale} of {folder} differ from a regeneration: "
                       f"run clbench-leaderboard results/examples/{name}/runs")


def test_leaderboard_without_own_runs_points_at_the_example_sets(tmp_path, capsys):
    from benchmark import cli

    # a fresh checkout has no results/runs until the first run: the error says where records do exist
    assert cli.leaderboard_main([str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"no run-record folder at {tmp_path / 'runs'}" in err and "results/examples/<name>/runs" in err
