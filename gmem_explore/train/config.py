"""The settings of a training run (TrainConfig): what the Trainer reads, what train states and exported checkpoints
record (to_dict / from_dict), and the checks that refuse a bad value before any training starts. Separate from
train.py so that the settings read in one place, apart from the loop that uses them."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..values import as_whole

CONDITIONS = ("snippet", "label", "none")
# the whole-number settings and their least values (None: any whole number)
COUNTS = {"steps": 0, "batch_size": 1, "warmup": 0, "decay": 0, "seed": None, "eval_every": 0, "eval_images": 1,
          "eval_steps": 1, "checkpoint_every": 0}


@dataclass
class TrainConfig:
    steps: int = 10_000  # total optimizer steps (fit() stops here)
    batch_size: int = 64  # global batch, split across processes
    lr: float = 1e-3
    warmup: int = 200  # linear warm-up steps, then constant (then cosine to lr_final over the last decay steps)
    decay: int = 0
    lr_final: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # warmed up as min(decay, (1 + step) / (10 + step)) so short runs have a usable EMA
    snippet_dropout: float = 0.1
    time_sampling: str = "logit-normal"  # or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    repa_weight: float = 0.0
    condition: str = "snippet"
    seed: int = 0
    eval_every: int = 0  # 0: never; else sample `eval_images` images with the EMA model every that many steps
    eval_images: int = 16
    eval_steps: int = 20
    checkpoint_every: int = 0  # 0: only when asked; else save_state(out_dir/state.safetensors) that often (needs out_dir)
    out_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}; got {self.condition!r}")
        if self.time_sampling not in ("logit-normal", "uniform"):
            raise ValueError(f"time_sampling must be 'logit-normal' or 'uniform'; got {self.time_sampling!r}")
        if not 0 <= self.snippet_dropout <= 1:
            raise ValueError(f"snippet_dropout must lie in [0, 1]; got {self.snippet_dropout}")
        self._check_counts()
        if not 0 < self.lr < math.inf:  # the message docs/bad_input.md quotes
            raise ValueError(f"batch_size must be >= 1, steps >= 0 and lr a finite number > 0; got batch_size "
                             f"{self.batch_size}, steps {self.steps}, lr {self.lr}")
        numbers = ("lr_final", "weight_decay", "grad_clip", "ema_decay", "logit_mean", "logit_std", "repa_weight")
        # NaN passes every comparison check, and a NaN setting makes every weight NaN from the first step
        bad = [k for k in numbers if not math.isfinite(getattr(self, k))]
        bad += [k for k, ok in (("ema_decay", 0 <= self.ema_decay <= 1), ("grad_clip", self.grad_clip >= 0),
                                ("lr_final", self.lr_final >= 0)) if not ok and k not in bad]
        if bad:
            raise ValueError(f"training settings must be finite, ema_decay in [0, 1], grad_clip >= 0 (0: none) and "
                             f"lr_final >= 0; got {', '.join(f'{k}={getattr(self, k)}' for k in bad)}")
        if self.checkpoint_every and not self.out_dir:
            # fit() would have nowhere to save, and skipping the saves silently loses the run on a crash
            raise ValueError(f"checkpoint_every={self.checkpoint_every} saves to out_dir/state.safetensors, but out_dir "
                             f"is not set: give out_dir, or checkpoint_every=0 and call trainer.save_state(path) yourself")
        self.betas = tuple(self.betas)

    def _check_counts(self) -> None:
        """Counts are whole numbers from their least sensible value (COUNTS), kept as Python ints (a NumPy int would
        not go into the JSON of a train state). A negative decay or eval_every made the schedule or the evaluations
        misbehave without a word, eval_images 0 failed deep in the sampler, 2.5 images per batch inside torch."""
        bad = []
        for name, least in COUNTS.items():
            value = as_whole(getattr(self, name))
            if value is None or (least is not None and value < least):
                bad.append(f"{name}={getattr(self, name)!r}")
            else:
                setattr(self, name, value)
        if bad:
            wanted = ", ".join(f"{k} >= {least}" for k, least in COUNTS.items() if least is not None)
            raise ValueError(f"training counts must be whole numbers ({wanted}; seed any); got {', '.join(bad)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config to_dict wrote (train states and exported checkpoints hold one). A key this version does not
        know is refused rather than dropped: a misspelt "batchsize" would otherwise train with the default."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown training config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)
