"""A Trainer's state on disk: the train state for an exact resume (save_state / load_state) and the checkpoint
folder GMemPipeline loads (export). A mixin of train.Trainer, apart from the step loop it saves.

A train state is one safetensors file, written atomically: the weights ("module."), the EMA ("ema."), AdamW's
moments ("optimizer.<param>.<slot>"), the trainer's RNG ("rng.trainer") and, in the metadata, the step, the
TrainConfig, the optimizer's param groups, the model config, the per-step history and what the run trains on
(fingerprints.training_data, plus the Trainer's data_source: gmem train's --data, --split and --init), which
load_state compares before it changes anything.
"""
from __future__ import annotations

import copy
import json
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from ..fingerprints import training_data
from ..safefiles import load_tensors, save_tensors
from ..sampling.settings import SamplerSettings
from .checks import check_resume_data
from .config import TrainConfig
from ..checkpoints.folder import Checkpoint, save_checkpoint

STATE_FORMAT = "gmem-explore-train-1"


class TrainerState:
    """save_state / load_state / export for train.Trainer (uses its module, ema, optimizer, generator, step,
    history, config, images, conditions, encoder, data_source and accelerator)."""

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.module) if self.accelerator else self.module

    def state_tensors(self) -> tuple[dict, dict]:
        tensors = {f"module.{k}": v for k, v in self._unwrapped().state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt = self.optimizer.state_dict()
        for pid, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"optimizer.{pid}.{key}"] = torch.as_tensor(value)
        tensors["rng.trainer"] = self.generator.get_state()
        meta = {"format": STATE_FORMAT, "step": self.step, "config": self.config.to_dict(),
                "param_groups": opt["param_groups"], "model": self.network.config.to_dict(), "history": self.history,
                "data": self.data_fingerprint()}
        return tensors, meta

    def data_fingerprint(self) -> dict:
        """What this run trains on (fingerprints.training_data), computed once, with the data_source given to the
        Trainer (as "source", when given): load_state compares the former and names the latter."""
        if getattr(self, "_data_fingerprint", None) is None:
            labels = self.conditions if self.config.condition == "label" else None
            encoder = self.encoder if self.config.condition == "snippet" else None
            record = training_data(self.images, labels, encoder)
            if self.data_source:
                record["source"] = dict(self.data_source)
            self._data_fingerprint = record
        return self._data_fingerprint

    def save_state(self, path) -> Path:
        """Everything needed for an exact resume, in one safetensors file written atomically. Every process calls it
        (it waits for all of them; the main process writes)."""
        path = Path(path)
        if self.accelerator:
            self.accelerator.wait_for_everyone()
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors, meta = self.state_tensors()
            save_tensors(path, tensors, meta)
        self._last_save = (str(path.resolve()), self.step)
        self._fire("on_checkpoint", {"step": self.step, "path": str(path)})
        return path

    def save_state_unless_current(self, path) -> Path:
        """save_state(path), unless this Trainer's latest save wrote `path` at this very step (gmem train's final
        save after a periodic one at the last step wrote the same file twice: 2 x 49 MB for emoji-32, a few GB
        for an XL run). The decision is the same on every process (same path, same step), so none waits alone."""
        path = Path(path)
        if getattr(self, "_last_save", None) == (str(path.resolve()), self.step):
            return path
        return self.save_state(path)

    def load_state(self, path) -> None:
        """Continue the run saved at `path`; refused (nothing changed) when it trained on other data."""
        tensors, meta = load_tensors(path, mmap=False)
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a gmem-explore training state (format {meta.get('format')!r})")
        check_resume_data(path, meta.get("data"), self.data_fingerprint())
        warn_on_other_recipe(path, meta.get("config"), self.config)
        self._unwrapped().load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("module.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        state = defaultdict(dict)
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, pid, slot = key.split(".", 2)
                state[int(pid)][slot] = value
        self.optimizer.load_state_dict({"state": dict(state), "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["rng.trainer"])
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self._last_save = None  # another state from here on, maybe at the same step: the next save must write

    def export(self, folder, bank, encoder=None, sampler: SamplerSettings | dict | None = None, info: dict | None = None,
               bank_dtype=None, autoencoder: dict | None = None) -> Path:
        """The EMA network + bank (+ encoder) as a checkpoint folder (see folder.py). Snippet-conditioned runs
        only: a checkpoint's user feeds the network bank rows (see baseline_refusal)."""

        if self.config.condition != "snippet":
            raise ValueError(baseline_refusal(self.config.condition))
        model = copy.deepcopy(self.ema_model).cpu().float()
        # where and how often the run saved its state is no part of the model, and a shared folder should not carry
        # a local path (gmem train sets out_dir for its periodic saves)
        recipe = {**self.config.to_dict(), "out_dir": None, "checkpoint_every": 0}
        info = {"training": {"steps": self.step, "config": recipe}, **(info or {})}
        ckpt = Checkpoint(model, bank, autoencoder or {"type": "pixels"}, encoder,
                          SamplerSettings.from_config(sampler, recipe="gmem-explore-trained"), info)
        if self.is_main:
            save_checkpoint(folder, ckpt, bank_dtype=bank_dtype)
        return Path(folder)


# settings that only say how long the run goes, how often it looks at itself or where it saves: free to change on resume
NOT_RECIPE = {"steps", "eval_every", "eval_images", "eval_steps", "checkpoint_every", "out_dir", "progress"}


def warn_on_other_recipe(path, saved: dict | None, config) -> None:
    """A state loaded into a Trainer built with another recipe (batch size, lr, EMA decay, ...) continues a different
    run from the one saved; gmem train rebuilds the saved TrainConfig, a notebook user may not. Said, not refused:
    changing a setting mid-run can be deliberate."""
    if not saved:
        return
    try:
        saved = TrainConfig.from_dict(saved).to_dict()  # the same spelling as ours (tuples, defaults of older files)
    except (TypeError, ValueError):
        return  # a state from another version: its data check above already passed; nothing to compare by name
    ours = config.to_dict()
    differ = [f"{k}: saved {json.dumps(saved[k])}, this trainer {json.dumps(ours[k])}" for k in sorted(ours)
              if k not in NOT_RECIPE and k in saved and saved[k] != ours[k]]
    if differ:
        warnings.warn(f"{path} was trained with other settings than this Trainer's ({'; '.join(differ)}); the run "
                      f"continues with this Trainer's. For an exact resume build it with "
                      f"TrainConfig.from_dict(saved config) (gmem train --resume does).", stacklevel=3)


def baseline_refusal(condition: str) -> str:
    """Why a condition "label" / "none" run gets no checkpoint folder, and how to sample it instead. These runs are
    training baselines for comparison with GMem: the network learnt from a label embedding (kept in the train state,
    not in the network) or from zeros. A checkpoint folder holds the network and a bank, and the pipeline would
    condition it on bank rows: plausible-looking, meaningless images."""
    how = "trainer.sample(conditions=labels)" if condition == "label" else "trainer.sample(n)"
    return (f"condition={condition!r} trains a baseline for comparison, not a model for the pipeline: its network was "
            f"not trained on bank snippets, so a checkpoint folder would feed it the wrong input. Sample it from the "
            f"Trainer instead: {how}, also after trainer.load_state(path) of a saved train state. Train with "
            f"condition='snippet' for a checkpoint GMemPipeline loads.")
