"""Slower end-to-end checks: the real SmolLM2 model, a 2-process accelerate run, a joblib sweep, the browser."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

TINY = ["model=tiny", "data.train_per_class=4", "data.test_per_class=2", "eval.general_passages=2",
        "eval.general_tokens=32", "trainer.max_prompt_tokens=64"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CLBENCH_DEBUG", None)
    return env


@pytest.mark.slow
def test_real_smollm2_answers_sensibly_and_one_lora_step_changes_only_lora():
    from benchmark.config import ModelConfig
    from benchmark.modeling.model import load_model
    from strategies.common.lora import add_lora
    from strategies.base import LoraSettings

    model, tok, info = load_model(ModelConfig())
    assert info["parameters"] > 100_000_000
    assert tok.eos_token == "<|im_end|>"
    assert tok("Hi there", add_special_tokens=False)["input_ids"] == [26843, 665]  # no BOS prepended
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(chat, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])

    model = add_lora(model, LoraSettings(), "default")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tok(["Answer: World"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed)


def _metrics(results: Path):
    recs = [json.loads(p.read_text()) for p in results.glob("runs/*.json")]
    assert len(recs) == 1
    return recs[0]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,port", [("replay", 29541), ("olora", 29542), ("migu", 29543), ("agem", 29544),
                                           ("progprompt", 29545), ("l2p", 29546), ("ilora", 29548),
                                           ("gere", 29549)])
def test_two_cpu_processes_run_stateful_strategies_like_one(strategy, port, tmp_path):
    """DDP over gloo for strategies with a buffer (replay; I-LoRA's holds each process's shard), per-task adapters
    (O-LoRA), gradient masks (MIGU), a reference gradient averaged over processes (A-GEM), soft prompts placed by
    hooks (Progressive Prompts, L2P) and per-process draws gathered for the checkpoint (these and GeRe):
    same global batch, same steps, same zero-shot row, and the masks/adapters/buffers agree across ranks well
    enough that the accuracies stay close."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = TINY + [f"strategy={strategy}", "leaderboard=false", "trainer.lr=1e-2", "trainer.device=cpu"]
    if strategy in ("replay", "agem"):
        common.append("strategy.buffer.fraction=0.25")
    p1 = subprocess.run([sys.executable, "-m", "benchmark.cli", *common, "trainer.batch_size=4", f"results_dir={one}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert p1.returncode == 0, p1.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                "-m", "benchmark.cli"]
    p2 = subprocess.run([*launcher, *common, "trainer.batch_size=2", f"results_dir={two}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=_env())
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = _metrics(one), _metrics(two)
    assert b["cost"]["processes"] == 2 and b["strategy"]["name"] == strategy
    assert [s["steps"] for s in a["stages"]] == [s["steps"] for s in b["stages"]]
    assert [s["examples"] for s in a["stages"]] == [s["examples"] for s in b["stages"]]  # replay sets agree
    assert a["matrix"]["values"][0] == b["matrix"]["values"][0]
    for ra, rb in zip(a["matrix"]["values"], b["matrix"]["values"]):
        assert all(abs(x - y) <= 15.0 for x, y in zip(ra, rb))


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_metrics_as_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = TINY + ["strategy=seq_lora", "leaderboard=false", "trainer.lr=1e-2", "trainer.device=cpu"]
    p1 = subprocess.run([sys.executable, "-m", "benchmark.cli", *common, "trainer.batch_size=4", f"results_dir={one}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert p1.returncode == 0, p1.stderr[-2000:]
    # torchrun sets RANK/WORLD_SIZE; accelerate's Accelerator then runs multi-CPU over gloo
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                "-m", "benchmark.cli"]
    p2 = subprocess.run([*launcher, *common, "trainer.batch_size=2", f"results_dir={two}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=_env())
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = _metrics(one), _metrics(two)
    assert b["cost"]["processes"] == 2 and a["cost"]["processes"] == 1
    # same global batch (4), same data order; per-process mean losses differ slightly from the global mean
    assert [s["steps"] for s in a["stages"]] == [s["steps"] for s in b["stages"]]
    assert a["matrix"]["values"][0] == b["matrix"]["values"][0]  # zero-shot: evaluation sharding is exact
    for ra, rb in zip(a["matrix"]["values"], b["matrix"]["values"]):
        assert all(abs(x - y) <= 10.0 for x, y in zip(ra, rb))
    assert b["metrics"]["ppl_after"] == pytest.approx(a["metrics"]["ppl_after"], rel=0.02)


@pytest.mark.slow
def test_joblib_multirun_writes_every_record_and_the_leaderboard_shows_spread(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmark.cli", "-m", "hydra/launcher=joblib_local", *TINY,
                        "strategy=seq_lora,replay", "seed=1,2", "trainer.num_threads=1", f"results_dir={tmp_path}",
                        f"hydra.sweep.dir={tmp_path / 'multirun'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=_env())
    assert p.returncode == 0, p.stderr[-3000:]
    recs = sorted(tmp_path.glob("runs/*.json"))
    assert len(recs) == 4
    # each job ran in its own output folder
    assert len([d for d in (tmp_path / "multirun").iterdir() if d.is_dir()]) == 4
    from benchmark.leaderboard import regenerate

    rows = regenerate(tmp_path / "runs", tmp_path)["rows"]
    assert sorted(r["strategy"] for r in rows) == ["replay", "seq_lora"]
    assert all(r["n"] == 2 and r["seeds"] == [1, 2] for r in rows)
    assert "±" in (tmp_path / "LEADERBOARD.md").read_text()


def test_slurm_launcher_preset_is_a_valid_submitit_config():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmark.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["gpus_per_node"] == 1 and launcher["timeout_min"] == 720


@contextlib.contextmanager
def _browser_page():
    """A page of Debian's headless chromium (no network), and the folder the screenshots go to."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (run .ci/browser-setup)")
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("CLBENCH_SCREENSHOTS", ROOT / "results" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield browser.new_page(), shots
        finally:
            browser.close()


@pytest.mark.browser
def test_leaderboard_page_sorts_in_a_real_browser(tmp_path):
    from benchmark import leaderboard
    from tests.conftest import older, write_raw
    from tests.test_records_leaderboard import _rec

    runs = tmp_path / "runs"
    # synthetic records carry no prediction files: written as older records, which the board shows unverified
    for strategy, aa, h in (("seq_lora", (50.0, 40.0), "a"), ("replay", (90.0, 80.0), "b"), ("olora", (70.0, 60.0), "c")):
        write_raw(runs, older(_rec(strategy, aa_last=aa, chash=h)))
    leaderboard.regenerate(runs, tmp_path)
    page_url = (tmp_path / "leaderboard.html").as_uri()
    with _browser_page() as (page, shots):
        page.goto(page_url)
        strategies = lambda: page.eval_on_selector_all("#board tbody tr td:nth-child(3)", "els => els.map(e => e.textContent)")  # noqa: E731
        assert strategies() == ["replay", "olora", "seq_lora"]  # generated order: AA descending
        page.click("#board th:nth-child(8)")  # AA, ascending
        assert strategies() == ["seq_lora", "olora", "replay"]
        page.click("#board th:nth-child(8)")  # descending
        assert strategies() == ["replay", "olora", "seq_lora"]
        page.click("#board th:nth-child(3)")  # strategy names, alphabetical
        assert strategies() == ["olora", "replay", "seq_lora"]
        page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)
    assert (shots / "leaderboard.png").stat().st_size > 1000


@pytest.mark.slow
def test_cold_and_warm_model_cache_give_identical_records(tmp_path):
    """The first run converts SmolLM2 inside the process, after the seed is set; it must train exactly like a run
    that finds the model already converted."""
    common = ["stream.tasks=[agnews]", "data.train_per_class=2", "data.test_per_class=1", "eval.general_passages=2",
              "eval.general_tokens=32", "trainer.max_steps_per_task=2", "trainer.max_prompt_tokens=64", "leaderboard=false",
              f"model.cache_dir={tmp_path / 'cache'}"]
    recs = []
    for name in ("cold", "warm"):
        p = subprocess.run([sys.executable, "-m", "benchmark.cli", *common, f"results_dir={tmp_path / name}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=900, env=_env())
        assert p.returncode == 0, p.stderr[-2000:]
        recs.append(_metrics(tmp_path / name))
    cold, warm = recs
    assert (tmp_path / "cache" / "smollm2-135m" / "model.safetensors").is_file()
    assert cold["matrix"]["values"] == warm["matrix"]["values"]
    assert cold["metrics"] == warm["metrics"]
    assert [s["mean_loss"] for s in cold["stages"]] == [s["mean_loss"] for s in warm["stages"]]


@pytest.mark.browser
def test_anatomy_plot_renders_in_a_real_browser(two_task_run, tmp_path):
    """The forgetting anatomy of a real (tiny) run: one stacked bar per evaluation, drawn with visible height."""
    from benchmark import leaderboard

    path, rec = two_task_run
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(path, runs / path.name)
    shutil.copytree(path.parent / rec["predictions"]["folder"], runs / rec["predictions"]["folder"])
    leaderboard.regenerate(runs, tmp_path)
    with _browser_page() as (page, shots):
        page.goto((tmp_path / "leaderboard.html").as_uri())
        assert not page.is_visible("svg.anatomy")  # folded away until the run is opened
        page.click("details summary", position={"x": 4, "y": 6})  # the disclosure marker, not the record link
        assert page.is_visible("svg.anatomy")
        heights = page.eval_on_selector_all("svg.anatomy rect[class^=part-]",
                                            "els => els.map(e => e.getBoundingClientRect().height)")
        bars = page.eval_on_selector_all("svg.anatomy rect[class^=part-]", "els => new Set(els.map(e => e.x.baseVal.value)).size")
        assert bars == len(rec["matrix"]["values"]) and all(h > 0 for h in heights)
        page.screenshot(path=str(shots / "anatomy.png"), full_page=True)
    assert (shots / "anatomy.png").stat().st_size > 1000
