"""The documentation's promises, checked: the README's shape, links and repository paths that resolve, and the
strategy author's recipe of docs/adding_a_strategy.md, run exactly as the guide writes it (its ```python block
becomes a module, its ```yaml blocks strategy configs), so that the guide cannot drift from the API."""
from __future__ import annotations

import dataclasses
import importlib
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUIDE = DOCS / "adding_a_strategy.md"
MAX_README_LINES = 200
# the two set-up-to-result commands: CI runs the second one
README_HEAD = [
    "```bash",
    "make run    # set up .venv if needed, then the default demo: SmolLM2-135M + LoRA on dbpedia -> amazon -> agnews, ending in a leaderboard",
    "make test   # set up .venv if needed, then the whole test suite (what CI runs through .ci/run)",
    "```",
]
GUIDES = ("setup", "configuration", "streams", "strategies", "adding_a_strategy", "evaluation", "records",
          "leaderboard", "scaling", "architecture")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md",
            *sorted((ROOT / "results" / "examples").glob("*/README.md"))]


def _section(text: str, heading: str) -> str:
    """The text under the `## heading` line, up to the next heading of level 1 or 2 outside a code block."""
    lines, out, inside, fenced = text.splitlines(keepends=True), [], False, False
    for line in lines:
        if not fenced and re.match(r"#{1,2} ", line):
            if inside:
                break
            inside = line.rstrip("\n") == f"## {heading}"
            continue
        if line.startswith("```"):
            fenced = not fenced
        if inside:
            out.append(line)
    assert out, f"{GUIDE.name} has no section '## {heading}'"
    return "".join(out)


def _block(section: str, lang: str) -> str:
    blocks = re.findall(rf"^```{lang}\n(.*?)^```$", section, re.S | re.M)
    assert len(blocks) == 1, f"expected one ```{lang} block, found {len(blocks)}"
    return blocks[0]


# ---------------------------------------------------------------- README and links


def test_readme_starts_with_the_two_commands_and_stays_short():
    lines = README.read_text().splitlines()
    assert lines[:4] == README_HEAD
    assert len(lines) <= MAX_README_LINES


def test_the_readme_documentation_table_lists_every_guide():
    text = README.read_text()
    table = text[text.index("## Documentation"):]
    for name in GUIDES:
        assert (DOCS / f"{name}.md").is_file(), name
        assert f"](docs/{name}.md)" in table, name
    assert "](bench/README.md)" in table


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(md):
    text = re.sub(r"^```.*?^```$", "", md.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (md.parent / file).resolve() if file else md
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert broken == []


PATH_IN_CODE = re.compile(r"`((?:benchmark|strategies|task_streams|conf|bench|tests|docs|results/examples|\.ci)/[^`\s]*)`")


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_the_docs_exist(md):
    """A path in code quotes names a file or folder of this repository; `*` is a glob, `<...>` a placeholder,
    and `my_method` is the guide's example strategy."""
    missing = []
    for path in PATH_IN_CODE.findall(md.read_text()):
        if "<" in path or "my_method" in path:
            continue
        found = list(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
        if not found:
            missing.append(path)
    assert missing == []


# ---------------------------------------------------------------- the strategy author's recipe, verbatim


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """The guide's module saved as my_pkg/my_method.py in a folder on sys.path (not yet imported); on exit the
    strategy is unregistered again, so no other test sees it."""
    from hydra.core.config_store import ConfigStore

    from strategies.base import _REGISTRY

    text = GUIDE.read_text()
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "my_method.py").write_text(_block(_section(text, "Step 1: the module"), "python"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield types.SimpleNamespace(text=text, conf=tmp_path / "conf")
    _REGISTRY.pop("my_method", None)
    for name in ("my_pkg.my_method", "my_pkg"):
        sys.modules.pop(name, None)
    ConfigStore.instance().repo.get("strategy_defaults", {}).pop("my_method.yaml", None)


def _conf_with(conf: Path, strategy_yaml: str) -> str:
    shutil.copytree(ROOT / "conf", conf)
    (conf / "strategy" / "my_method.yaml").write_text(strategy_yaml)
    return str(conf)


def test_the_recipe_module_registers_builds_and_checks_its_options(recipe):
    from benchmark.modeling.model import tiny_model
    from strategies.base import Hooks, StrategyConfigError, build

    module = importlib.import_module("my_pkg.my_method")
    strategy = build({"name": "my_method"})
    assert isinstance(strategy, Hooks) and strategy.cfg == module.MyConfig()
    assert build({"name": "my_method", "beta": 0.5, "lora": {"r": 4}}).cfg.lora.r == 4
    # a bad value fails at build, in one line naming the key, and the guide quotes the message exactly
    for bad, expected in ((-1, "strategy my_method.beta must be a number >= 0, got -1"),
                          ("abc", "strategy my_method.beta: expected a number, got 'abc'")):
        with pytest.raises(StrategyConfigError) as e:
            build({"name": "my_method", "beta": bad})
        assert str(e.value) == expected and expected in recipe.text
    with pytest.raises(StrategyConfigError, match=r"^strategy my_method\.lora\.r must be an integer >= 1, got 0$"):
        build({"name": "my_method", "lora": {"r": 0}})

    model, _ = tiny_model()
    model = strategy.prepare_model(model, None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    logged = {}
    ctx = types.SimpleNamespace(model=model, log=logged.__setitem__)
    loss = strategy.loss(ctx, None, None, torch.tensor(1.0))
    assert loss.item() > 1.0 and logged["my_reg"].item() > 0


def test_the_recipe_yaml_composes_every_default_and_states_only_what_differs(recipe):
    from benchmark.config import compose
    from strategies.base import LoraSettings, build

    module = importlib.import_module("my_pkg.my_method")  # registered before compose stores the defaults
    text = _block(_section(recipe.text, "Step 2: the YAML"), "yaml")
    stated = yaml.safe_load(text)
    assert stated["defaults"] == ["/strategy_defaults/my_method@_here_"] and stated["name"] == "my_method"
    # what tests/test_config_defaults.py requires of a strategy YAML: no other key, or one that differs
    default = dataclasses.asdict(module.MyConfig())
    assert [k for k, v in stated.items() if k not in ("defaults", "name") and default.get(k, object()) == v] == []
    conf = _conf_with(recipe.conf, text)
    cfg = compose(["strategy=my_method"], conf)
    assert cfg.strategy == {"name": "my_method", **default}
    cfg = compose(["strategy=my_method", "strategy.beta=0.5", "strategy.lora.r=4"], conf)
    assert build(dict(cfg.strategy)).cfg == module.MyConfig(beta=0.5, lora=LoraSettings(r=4))


def test_the_outside_package_yaml_imports_its_module(recipe):
    from benchmark.config import compose
    from strategies.base import build, complete

    assert "my_pkg.my_method" not in sys.modules  # the `module:` key must import it
    text = _block(_section(recipe.text, "A strategy outside the package"), "yaml")
    conf = _conf_with(recipe.conf, text)
    cfg = compose(["strategy=my_method", "+strategy.beta=0.5"], conf)
    strategy = build(dict(cfg.strategy))
    assert type(strategy).__name__ == "MyMethod" and strategy.cfg.beta == 0.5
    module = sys.modules["my_pkg.my_method"]
    assert complete(dict(cfg.strategy)) == {"name": "my_method", "module": "my_pkg.my_method",
                                            **dataclasses.asdict(module.MyConfig(beta=0.5))}
