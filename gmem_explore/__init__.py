"""gmem-explore: run, inspect and remix GMem (Generative Modeling with Explicit Memory)."""
from .bank import MemoryBank, index_from_noise, mix, normalize
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .model import GMemSiT, ModelConfig, build_model, load_network_state
from .pipeline import Generation, GMemPipeline
from .sampling import METHODS, StepInfo, sample, time_grid

__version__ = "0.1.0"
__all__ = [
    "Checkpoint", "GMemPipeline", "GMemSiT", "Generation", "METHODS", "MemoryBank", "ModelConfig", "StepInfo",
    "build_model", "index_from_noise", "load_checkpoint", "load_network_state", "mix", "normalize", "sample",
    "save_checkpoint", "time_grid",
]
