"""gmem-explore: run, inspect and remix GMem (Generative Modeling with Explicit Memory).

The public names below are imported on first use (PEP 562), not when the package is imported: they need torch,
which takes seconds to import, and `gmem --help` or `import gmem_explore.data` should not wait for it.
`from gmem_explore import GMemPipeline` and `gmem_explore.MemoryBank` work as before.
"""
import importlib as _importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it
_WHERE = {
    "MemoryBank": "bank", "index_from_noise": "bank", "mix": "bank", "normalize": "bank",
    "Checkpoint": "checkpoints.folder", "load_checkpoint": "checkpoints.folder",
    "save_checkpoint": "checkpoints.folder",
    "GMemSiT": "models", "ModelConfig": "models", "build_model": "models", "load_network_state": "models",
    "Generation": "pipeline", "GMemPipeline": "pipeline",
    "METHODS": "sampling", "StepInfo": "sampling", "sample": "sampling", "time_grid": "sampling",
}

# subpackages reachable as attributes after a bare `import gmem_explore` (gmem_explore.bank.MemoryBank)
_SUBMODULES = {"app", "autoencoders", "bank", "checkpoints", "cli", "encoders", "evaluation", "models", "notebook",
               "pipeline", "safefiles", "sampling", "train", "viz"}

__all__ = [
    "Checkpoint", "GMemPipeline", "GMemSiT", "Generation", "METHODS", "MemoryBank", "ModelConfig", "StepInfo",
    "build_model", "index_from_noise", "load_checkpoint", "load_network_state", "mix", "normalize", "sample",
    "save_checkpoint", "time_grid",
]


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is not None:
        value = getattr(_importlib.import_module(f".{where}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:  # gmem_explore.bank etc. after a bare `import gmem_explore`, as before
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
