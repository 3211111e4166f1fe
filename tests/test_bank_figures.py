"""Numbers behind the bank figures (tests written to kill mutants of bank_figures.py that the suite let through):
a row is not its own neighbour, chance is the group's share of the bank, and the centroid map holds cosines."""
from __future__ import annotations

import torch

from gmem_explore import MemoryBank
from gmem_explore.notebook.bank_figures import group_similarity_figure, neighbour_agreement


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


def test_agreement_draws_its_queries_from_every_part_of_the_bank():
    rows = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    bank = MemoryBank(rows, labels=torch.arange(40) // 20, label_names=["first half", "second half"])
    assert set(neighbour_agreement(bank, k=2, queries=6)) == {"first half", "second half"}  # not rows 0..5 only


def test_the_share_curve_starts_with_the_most_frequent_rows():
    from gmem_explore.notebook.bank_figures import frequency_figure

    freq = torch.ones(10, dtype=torch.float64)
    freq[7] = 91.0
    fig = frequency_figure(MemoryBank(torch.randn(10, 4), freq=freq))
    share = fig.axes[1].lines[0].get_ydata()
    assert abs(share[0] - 0.91) < 1e-6 and abs(share[-1] - 1.0) < 1e-6
