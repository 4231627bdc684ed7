"""Resume: after each stage, trained weights and strategy state go to safetensors, bookkeeping to JSON.

Nothing is ever unpickled: safetensors holds tensors only and JSON the rest, so a checkpoint folder from an
untrusted source cannot run code.

Layout of a run's folder:

    stage-3/state.safetensors, stage-3/state.json    the newest complete stage (the only one kept)
    state.json                                       {"stage": 3, "folder": "stage-3"}, for people and scripts
    run.lock                                         see benchmark/runner/lock.py

A stage is written whole into `stage-k.tmp` and renamed to `stage-k`: the rename is the commit point, so a
crash at any moment leaves either the previous stage folder or the new one complete, never a mix of a new
safetensors file with an old JSON file. Older stage folders are removed only after the rename.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchmark.errors import ClbenchError
from benchmark.fileio import atomic_write, fsync_dir, rng_from_json, rng_to_json

STAGE_DIR = re.compile(r"stage-(\d+)")
STAGE_ENTRY = re.compile(r"stage-\d+(\.tmp)?")  # what a save may leave behind, committed or not
TENSORS, META = "state.safetensors", "state.json"


def _write_json(path: Path, obj: Any) -> None:
    # inside a stage's temp folder, which is renamed whole: the file itself needs no rename of its own
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, sort_keys=True, default=str))
        f.flush()
        os.fsync(f.fileno())


class Checkpointer:
    def __init__(self, folder: Path):
        self.folder = folder

    def _stage_dir(self, stage: int) -> Path:
        return self.folder / f"stage-{stage}"

    def _complete_stages(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        stages = []
        for d in self.folder.iterdir():
            m = STAGE_DIR.fullmatch(d.name)
            if m and (d / TENSORS).is_file() and (d / META).is_file():
                stages.append(int(m.group(1)))
        return sorted(stages)

    def latest(self) -> int | None:
        """The highest complete stage on disk (the folders are the truth; the top-level state.json is not read)."""
        stages = self._complete_stages()
        return stages[-1] if stages else None

    def save(self, stage: int, model, trained_names: set[str], strategy_tensors: dict[str, torch.Tensor],
             meta: dict[str, Any]) -> None:
        params = dict(model.named_parameters())
        tensors = {f"model/{n}": params[n].detach().to("cpu").contiguous() for n in sorted(trained_names)}
        tensors.update({f"strategy/{k}": v.detach().to("cpu").contiguous() for k, v in strategy_tensors.items()})
        tensors["rng/torch"] = torch.get_rng_state()
        full_meta = {**meta, "stage": stage, "trained_names": sorted(trained_names), "python_rng": rng_to_json()}
        self._commit(stage, self._write_tmp(stage, tensors, full_meta))
        self._drop_other_stages(stage)

    def _write_tmp(self, stage: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        tmp = self.folder / f"stage-{stage}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / TENSORS))
        with open(tmp / TENSORS, "rb+") as f:  # save_file does not fsync
            os.fsync(f.fileno())
        _write_json(tmp / META, meta)
        return tmp

    def _commit(self, stage: int, tmp: Path) -> None:
        final = self._stage_dir(stage)
        # only a run restarted with resume=false saves a stage number that is already on disk; that stage
        # belongs to the attempt being replaced, so losing it to a crash right here costs nothing
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(self.folder)
        atomic_write(self.folder / META, json.dumps({"stage": stage, "folder": final.name}, sort_keys=True))

    def _drop_other_stages(self, keep: int) -> None:
        # higher stages too: they belong to an earlier attempt that this one (resume=false) has replaced
        for d in self.folder.iterdir():
            if STAGE_ENTRY.fullmatch(d.name) and d.name != f"stage-{keep}":
                shutil.rmtree(d, ignore_errors=True)

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        stage = self.latest()
        if stage is None:
            raise ClbenchError(f"no complete checkpoint stage in {self.folder}")
        folder = self._stage_dir(stage)
        meta, tensors = self._read(folder / META, folder / TENSORS)
        model_t = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        strat_t = {k[len("strategy/"):]: v for k, v in tensors.items() if k.startswith("strategy/")}
        torch.set_rng_state(tensors["rng/torch"])
        rng_from_json(meta["python_rng"])
        return meta, model_t, strat_t

    def _read(self, meta_path: Path, tensor_path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_path))
        except (OSError, ValueError, SafetensorError) as e:
            raise ClbenchError(f"checkpoint {tensor_path.parent} is unreadable ({str(e).splitlines()[0]}); "
                               f"delete {self.folder} or set resume=false to start over") from None
        if "rng/torch" not in tensors or "python_rng" not in meta:
            raise ClbenchError(f"checkpoint {tensor_path.parent} lacks its random state; delete {self.folder} "
                               "or set resume=false to start over")
        return meta, tensors

    @staticmethod
    def restore_model(model, weights: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in weights if n not in params]
        if missing:
            raise ClbenchError(f"checkpoint names parameters the model lacks, e.g. {missing[0]!r}; it was written "
                               "by other code or another model: delete it or set resume=false")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
