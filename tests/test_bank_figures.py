"""Numbers behind the bank figures (tests written to kill mutants of bank_figures.py that the suite let through):
a row is not its own neighbour, chance is the group's share of the bank, and the centroid map holds cosines."""
from __future__ import annotations

import torch

from gmem_explore import MemoryBank
from gmem_explore.bank_figures import group_similarity_figure, neighbour_agreement


def crossed_bank() -> MemoryBank:
    """Each row's nearest other row belongs to the other group."""
    rows = torch.tensor([[1.0, 0.01], [1.0, 0.02], [0.01, 1.0], [0.02, 1.0]])
    return MemoryBank(rows, labels=torch.tensor([0, 1, 0, 1]), label_names=["a", "b"])


def test_agreement_leaves_the_row_itself_out_and_chance_is_the_groups_share():
    out = neighbour_agreement(crossed_bank(), k=1)
    assert out == {"a": (0.0, 0.5, 2), "b": (0.0, 0.5, 2)}


def test_group_similarity_is_a_cosine_of_unit_centroids():
    fig = group_similarity_figure(crossed_bank())
    sim = torch.as_tensor(fig.axes[0].images[0].get_array())
    assert torch.allclose(torch.diagonal(sim), torch.ones(2, dtype=sim.dtype), atol=1e-6)
    assert float(sim.max()) <= 1 + 1e-6
