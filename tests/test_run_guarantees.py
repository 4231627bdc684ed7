"""What a run promises a user beyond its numbers: where its files go, what a custom stream is called, and that a
broken run never publishes a number (issue 14)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_RUN


def _cli(*args, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    env.pop("CLBENCH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow  # where Hydra writes is decided by its app machinery: a real clbench-run process
def test_custom_stream_is_named_after_its_tasks_and_hydra_writes_under_results_dir(tmp_path):
    cwd, results = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    p = _cli(*TINY_RUN, "stream.tasks=[agnews,amazon]", "trainer.max_steps_per_task=1", f"results_dir={results}", cwd=cwd)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    rec = json.loads(next((results / "runs").glob("*.json")).read_text())
    assert rec["stream"]["name"] == "custom:agnews+amazon"
    assert not (cwd / "results").exists(), "Hydra wrote outside results_dir"
    assert (results / "hydra").is_dir()


def test_diverged_training_stops_with_one_line_naming_stage_and_step(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from benchmark import cli
    from tests.conftest import compose_cfg

    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)
    cfg = compose_cfg([*TINY_RUN, "trainer.lr=1e6", "trainer.max_grad_norm=0", "trainer.log_every=1",
                       f"results_dir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        cli.execute(OmegaConf.structured(cfg))
    assert e.value.code == 2
    err = capsys.readouterr().err  # the progress bars draw on stderr too, on lines of their own ('\r')
    last = err.rstrip("\n").split("\r")[-1].split("\n")
    assert len(last) == 1 and last[0].startswith("clbench-run: error:"), err[-1500:]
    assert "non-finite loss at stage 1 (dbpedia)" in last[0] and "Traceback" not in err
    assert not list(tmp_path.glob("runs/*.json")), "a diverged run must not publish a record"


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", None])
def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, content):
    from task_streams.registry import TaskDataError, _load_json

    path = tmp_path / "train.json"
    if content is None:
        path.mkdir()  # a folder where the file should be: unreadable for any user, root included
    else:
        path.write_bytes(content)
    with pytest.raises(TaskDataError, match=str(path)):
        _load_json(path)
