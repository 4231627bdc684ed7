import shutil
import subprocess
import sys

import pytest
import torch

from benchmark.runner import loop
from benchmark.runner import recipe as runner
from benchmark.modeling.data import Encoder, collate_train
from benchmark.modeling.model import tiny_model
from tests.conftest import CONF, ROOT, TINY_RUN, compose_cfg

RESULT_KEYS = ("matrix", "metrics", "stream")


def _results(rec):
    stages = [{k: v for k, v in s.items() if k in ("steps", "answer_tokens", "padded_tokens", "mean_loss", "examples")}
              for s in rec["stages"]]
    return {k: rec[k] for k in RESULT_KEYS} | {"stages": stages, "general": rec["metrics"]["ppl_after"]}


def test_fixed_seed_gives_identical_results_on_cpu(tiny_run, tmp_path):
    a = tiny_run("strategy=replay", "strategy.buffer.fraction=0.5", results=tmp_path / "a")
    b = tiny_run("strategy=replay", "strategy.buffer.fraction=0.5", results=tmp_path / "b")
    c = tiny_run("strategy=replay", "strategy.buffer.fraction=0.5", "seed=2", results=tmp_path / "c")
    assert _results(a) == _results(b)
    assert _results(a)["stages"] != _results(c)["stages"]


def test_record_carries_full_provenance(tiny_run):
    rec = tiny_run()
    for key in ("config", "seed", "stream", "strategy", "model", "matrix", "metrics", "cost", "provenance", "stages"):
        assert key in rec
    prov = rec["provenance"]
    assert set(prov) == {"git", "packages", "hardware", "environment"}
    assert prov["packages"]["torch"] and prov["hardware"]["cpu_count"]
    assert prov["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["stream"]["splits"]["dbpedia"]["train"]["derived"].startswith("3800 records held out of test")
    assert rec["matrix"]["rows"][0] == "zero-shot" and len(rec["matrix"]["values"]) == 4
    assert rec["cost"]["trainable_params"] > 0 and rec["cost"]["peak_memory_mb"] > 0
    assert all(s["answer_tokens_per_s"] > 0 for s in rec["stages"])


def test_right_padded_batch_gives_the_token_weighted_loss_of_its_rows():
    model, tok = tiny_model()
    model.eval()
    from benchmark.modeling.data import Encoded

    short = Encoded(tuple(range(5, 12)), (20, 21, tok.eos_token_id), 0, "t")
    long_ = Encoded(tuple(range(5, 30)), (22, tok.eos_token_id), 1, "t")

    class Ctx:
        device = torch.device("cpu")
        train_model = model

        def forward(self, batch, model=None, **kw):
            b = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
            return (model or self.train_model)(**b, **kw)

    ctx = Ctx()
    both, _ = loop.answer_loss(ctx, collate_train([short, long_], tok.pad_token_id), False)
    alone = [loop.answer_loss(ctx, collate_train([x], tok.pad_token_id), False)[0] for x in (short, long_)]
    # token-weighted mean over the 3 + 2 answer tokens
    assert both.item() == pytest.approx((3 * alone[0].item() + 2 * alone[1].item()) / 5, rel=1e-5)
    batch = collate_train([short, long_], tok.pad_token_id)
    # 7 + 3 and 25 + 2 tokens: the short row's padding follows its tokens (a left-padded batch would shift it)
    assert batch["attention_mask"].tolist() == [[1] * 10 + [0] * 17, [1] * 27]
    assert batch["input_ids"][0, :10].tolist() == [*short.prompt, *short.answer]
    assert (batch["labels"] != -100).sum() == 5  # prompt and pad tokens carry no loss


def test_length_bucketing_cuts_padding():
    from benchmark.modeling.data import length_bucketed_batches, padding_share

    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(512)]
    bucketed = length_bucketed_batches(lengths, 8, seed=1)
    plain = [list(range(i, i + 8)) for i in range(0, 512, 8)]
    assert sorted(i for b in bucketed for i in b) == list(range(512))
    assert padding_share(bucketed, lengths) < padding_share(plain, lengths) / 3
    assert bucketed == length_bucketed_batches(lengths, 8, seed=1)


def test_encoder_truncates_only_the_sentence():
    _, tok = tiny_model()
    from task_streams import Example

    enc = Encoder(tok, max_prompt_tokens=40)
    ex = Example(head="HEAD:", sentence="x" * 500, tail="\nAnswer:", label="A")
    ids = enc.prompt(ex)
    assert len(ids) == 40
    assert tok.decode(list(ids)).startswith("HEAD:") and tok.decode(list(ids)).endswith("\nAnswer:")


def _cli_error(tmp_path, monkeypatch, capsys, *overrides) -> str:
    """What clbench-run prints on stderr for a configuration that fails (in this process: the CLI's body)."""
    from omegaconf import OmegaConf

    from benchmark import cli

    monkeypatch.delenv("CLBENCH_DEBUG", raising=False)
    cfg = OmegaConf.structured(compose_cfg(["model=tiny", f"results_dir={tmp_path}", *overrides]))
    with pytest.raises(SystemExit) as e:
        cli.execute(cfg)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_unknown_strategy_is_one_clear_line(tmp_path, monkeypatch, capsys):
    err = _cli_error(tmp_path, monkeypatch, capsys, "strategy.name=nope")
    assert err.startswith("clbench-run: error: unknown strategy 'nope'; registered:") and err.count("\n") == 1


def test_cli_strategy_key_typo_names_the_key(tmp_path, monkeypatch, capsys):
    err = _cli_error(tmp_path, monkeypatch, capsys, "strategy=olora", "+strategy.lamda1=3")
    assert "strategy olora: unknown key 'lamda1'" in err and err.count("\n") == 1


@pytest.mark.slow  # Hydra's own errors come from its app machinery: a real process
def test_cli_config_typo_fails_at_start_naming_the_key(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    p = cli("model=tiny", f"results_dir={tmp_path}", "trainer.lr_rate=1")
    assert p.returncode != 0 and "lr_rate" in p.stderr
    p = cli("model=tiny", f"results_dir={tmp_path}", "trainer.epochs=abc")
    assert p.returncode != 0 and "epochs" in p.stderr


def test_cli_missing_data_folder_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    err = _cli_error(tmp_path, monkeypatch, capsys, f"data.data_dir={tmp_path / 'none'}")
    assert f"benchmark data folder not found at {tmp_path / 'none'}" in err
    assert "CLBENCH_DATA" in err and "data.data_dir=/path" in err  # the form that works on the command line


def test_toy_strategy_from_the_tests_folder_registers_and_runs(tiny_run, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    shutil.copy(ROOT / "tests" / "toy" / "toy_l2.yaml", conf / "strategy" / "toy_l2.yaml")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmark.config import register_configs
    from benchmark.records.store import load_record
    from strategies.base import build

    register_configs()
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = OmegaConf.to_object(compose("config", overrides=TINY_RUN + ["strategy=toy_l2", f"results_dir={tmp_path}"]))
    strat = build(dict(cfg.strategy))
    rec = load_record(runner.run(cfg, strat))
    assert type(strat).__name__ == "ToyL2" and strat.cfg.beta == 0.1
    assert strat.calls["before_stage"] == 3 and strat.calls["after_stage"] == 3 and strat.calls["loss"] > 0
    assert rec["strategy"]["name"] == "toy_l2"
