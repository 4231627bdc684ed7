import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("CLBENCH_TEST_THREADS", "2")))  # 1 when sharing the cores


def compose_cfg(overrides: list[str]):
    """A RunConfig composed from the real conf/ tree, exactly as clbench-run would build it."""
    from benchmark.config import compose

    return compose(overrides, str(CONF))


TINY_RUN = ["model=tiny", "data.train_per_class=4", "data.test_per_class=2", "eval.general_passages=2",
            "eval.general_tokens=32", "trainer.batch_size=4", "trainer.max_prompt_tokens=64", "leaderboard=false"]


@pytest.fixture
def tiny_run(tmp_path):
    """Run the real runner on the tiny model and a 3-task real stream; returns the loaded record."""
    from benchmark.records.store import load_record
    from benchmark.runner import run

    def go(*overrides: str, results: Path | None = None, strategy=None):
        cfg = compose_cfg(TINY_RUN + [f"results_dir={results or tmp_path}"] + list(overrides))
        return load_record(run(cfg, strategy))

    return go


@pytest.fixture
def data_cfg():
    from task_streams import DataConfig

    return DataConfig(train_per_class=2, test_per_class=2)


@pytest.fixture(scope="session")
def two_task_run(tmp_path_factory):
    """(record path, record) of one finished tiny run over dbpedia -> agnews with both scores, its predictions
    beside it; shared by the tests that read records, since it takes a few seconds."""
    import json

    from benchmark.runner import recipe as runner

    out = tmp_path_factory.mktemp("two_task_run")
    cfg = compose_cfg(["model=tiny", f"results_dir={out}", "stream.tasks=[dbpedia,agnews]", "data.train_per_class=2",
                       "data.test_per_class=2", "trainer.batch_size=4", "eval.max_new_tokens=6",
                       "eval.general_passages=2", "eval.general_tokens=32", "leaderboard=false"])
    path = runner.run(cfg)
    return path, json.loads(path.read_text())
