"""Resume: after each stage, trained weights and strategy state go to safetensors, bookkeeping to JSON.

Nothing is ever unpickled: safetensors holds tensors only and JSON the rest, so a checkpoint folder from an
untrusted source cannot run code.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


class Checkpointer:
    def __init__(self, folder: Path):
        self.folder = folder

    def latest(self) -> int | None:
        meta = self.folder / "state.json"
        if not meta.is_file():
            return None
        return int(json.loads(meta.read_text(encoding="utf-8"))["stage"])

    def save(self, stage: int, model, trained_names: set[str], strategy_tensors: dict[str, torch.Tensor],
             meta: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        params = dict(model.named_parameters())
        tensors = {f"model/{n}": params[n].detach().to("cpu").contiguous() for n in sorted(trained_names)}
        tensors.update({f"strategy/{k}": v.detach().to("cpu").contiguous() for k, v in strategy_tensors.items()})
        tensors["rng/torch"] = torch.get_rng_state()
        tmp = self.folder / "state.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.folder / "state.safetensors")
        py_state = random.getstate()
        # state.json is written last: it is the commit point, so a crash mid-save leaves the previous stage intact
        _atomic_json(self.folder / "state.json", {**meta, "stage": stage, "trained_names": sorted(trained_names),
                                                  "python_rng": [py_state[0], list(py_state[1]), py_state[2]]})

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        meta = json.loads((self.folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(self.folder / "state.safetensors"))
        model_t = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        strat_t = {k[len("strategy/"):]: v for k, v in tensors.items() if k.startswith("strategy/")}
        torch.set_rng_state(tensors["rng/torch"])
        v, state, gauss = meta["python_rng"]
        random.setstate((v, tuple(state), gauss))
        return meta, model_t, strat_t

    @staticmethod
    def restore_model(model, weights: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in weights if n not in params]
        if missing:
            raise RuntimeError(f"checkpoint names parameters the model lacks, e.g. {missing[0]!r}")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
