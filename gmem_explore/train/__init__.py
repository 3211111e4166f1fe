"""Training: the GMem objective with EMA, callbacks, atomic checkpoints, exact resume and Accelerate.

- trainer.py    Trainer: the step loop and its events (on_step, on_eval, on_checkpoint, on_end)
- config.py     TrainConfig: the settings of a run
- state.py      train states (exact resume) and exported checkpoint folders
- module.py     what the optimizer trains, and the Accelerator
- checks.py     what a Trainer refuses before it starts
- interrupt.py  Ctrl-C stops after the step under way
"""
from .config import CONDITIONS, TrainConfig
from .interrupt import StopRequested
from .state import baseline_refusal
from .trainer import EVENTS, Trainer

__all__ = ["CONDITIONS", "EVENTS", "StopRequested", "TrainConfig", "Trainer", "baseline_refusal"]
