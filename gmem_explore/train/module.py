"""What the optimizer trains (TrainingModule: the GMem network, plus a label embedding for the "label" baseline) and
the Accelerator that spreads it over processes (make_accelerator). Apart from train.py's step loop, which uses both.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..bank.memory import normalize


class TrainingModule(nn.Module):
    """What the optimizer sees: the GMem network plus, for label conditioning, the label embedding that fills the
    snippet slot. One module so that Accelerate/DDP wraps (and synchronises) both."""

    def __init__(self, model, num_labels: int = 0):
        super().__init__()
        self.model = model
        self.label_embedding = nn.Embedding(num_labels, model.config.snippet_dim) if num_labels else None
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.weight, std=1.0)

    def snippets_for(self, cond: torch.Tensor, condition: str) -> torch.Tensor:
        """What fills the snippet slot. Snippet conditions arrive L2-normalised (checks.training_conditions)."""
        if condition == "label":
            return normalize(self.label_embedding(cond))
        if condition == "none":
            return torch.zeros(len(cond), self.model.config.snippet_dim, device=cond.device)
        return cond

    def forward(self, x, t, cond, condition: str, keep: torch.Tensor, want_projection: bool):
        s = self.snippets_for(cond, condition) * keep[:, None]
        if want_projection:
            return self.model.forward_with_projection(x, t, s)
        return self.model(x, t, s), None


def make_accelerator(use_accelerate: bool | None):
    """An Accelerator when asked (None: when the accelerate package is importable), else None (plain loop)."""
    if use_accelerate is False:
        return None
    try:
        from accelerate import Accelerator
    except ImportError:
        if use_accelerate:
            raise ImportError("Multi-process training needs accelerate: pip install 'accelerate>=1.0'") from None
        return None
    cuda = torch.cuda.is_available()
    # cpu=True on machines without CUDA: otherwise Accelerate ignores torchrun's WORLD_SIZE there and every process
    # would train the whole batch alone (found by tests/test_train.py's two-process run)
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"started as {launched} processes (WORLD_SIZE) but Accelerate joined "
                           f"{accelerator.num_processes}: each would train alone. Launch with torchrun or "
                           f"`accelerate launch --multi_gpu`, one process per GPU.")
    return accelerator
