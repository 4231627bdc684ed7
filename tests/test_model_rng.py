"""Loading a model must not move the global random state: a fresh conversion, a cached load and a model built in
code must all leave training (data order, dropout, adapter initialisation) exactly where set_seed put it."""
import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmark.modeling import model as model_mod
from benchmark.errors import ClbenchError
from benchmark.config import ModelConfig
from benchmark.modeling.model import load_model, tiny_model


def _rng_state():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _assert_same(a, b):
    assert torch.equal(a[0], b[0]), "torch CPU generator moved"
    assert a[1] == b[1], "python random moved"
    assert a[2][0] == b[2][0] and np.array_equal(a[2][1], b[2][1]) and a[2][2:] == b[2][2:], "numpy random moved"


def _seed_all(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def test_tiny_model_leaves_the_global_rng_alone_and_depends_only_on_its_seed():
    _seed_all(123)
    before = _rng_state()
    m1, _, _ = load_model(ModelConfig(name="tiny-llama"), seed=7)
    _assert_same(before, _rng_state())
    _seed_all(999)  # a different global state must not change the model either
    m2, _, _ = load_model(ModelConfig(name="tiny-llama"), seed=7)
    m3, _, _ = load_model(ModelConfig(name="tiny-llama"), seed=8)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


@pytest.fixture
def local_model(tmp_path):
    """A saved tiny model whose checkpoint lacks one weight, so that from_pretrained must draw it at random:
    a load path that consumes the global generator unless it is isolated."""
    model, tok = tiny_model(seed=3)
    folder = tmp_path / "local"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    del weights[dropped]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_the_load_path_draws_random_numbers_so_isolation_is_needed(local_model):
    # the guard of the next test is only meaningful if loading really draws from the global generator
    _seed_all(5)
    before = _rng_state()
    model_mod._load_pretrained(ModelConfig(name=str(local_model)), str(local_model))
    assert not torch.equal(before[0], torch.get_rng_state())


def test_loading_a_local_model_leaves_the_global_rng_alone(local_model):
    _seed_all(5)
    before = _rng_state()
    _, _, info = load_model(ModelConfig(name=str(local_model)))
    _assert_same(before, _rng_state())
    # a record names no local path: the folder's name labels the model, its files' hash identifies it
    assert str(local_model) not in json.dumps(info) and info["name"] == local_model.name
    assert info["weights_sha256"] == model_mod.local_weights_sha256(str(local_model))


def test_a_local_model_is_identified_by_its_files_wherever_it_sits(local_model, tmp_path):
    import shutil

    copy = shutil.copytree(local_model, tmp_path / "elsewhere" / "other-name")
    (copy / "README.md").write_text("notes do not change outputs")
    assert model_mod.local_weights_sha256(str(copy)) == model_mod.local_weights_sha256(str(local_model))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert model_mod.local_weights_sha256(str(copy)) != model_mod.local_weights_sha256(str(local_model))
    assert model_mod.local_weights_sha256("tiny-llama") is None


def test_the_rng_is_restored_when_loading_fails(tmp_path):
    _seed_all(5)
    before = _rng_state()
    with pytest.raises(ClbenchError):
        load_model(ModelConfig(name=str(tmp_path / "absent")))
    _assert_same(before, _rng_state())


def test_corrupt_weights_are_one_line_naming_the_file(local_model):
    (local_model / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(ClbenchError) as e:
        load_model(ModelConfig(name=str(local_model)))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"model {str(local_model)!r}: weights {local_model / 'model.safetensors'} could not be read (")


@pytest.mark.slow
def test_smollm2_conversion_and_cached_load_leave_the_global_rng_alone(tmp_path):
    cfg = ModelConfig(cache_dir=str(tmp_path / "cache"))
    _seed_all(11)
    before = _rng_state()
    load_model(cfg)  # converts the GGUF (about 17 s)
    assert (tmp_path / "cache" / "smollm2-135m" / "model.safetensors").is_file()
    _assert_same(before, _rng_state())
    load_model(cfg)  # from the cache
    _assert_same(before, _rng_state())
    assert random.random() == random.Random(11).random()  # and the next draw is the one set_seed promised
