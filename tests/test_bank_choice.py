"""The released row choice at its edges (tests written to kill mutants of bank.py that the older tests let
through): u = Phi(m) maps to the row whose share of the cumulative frequency holds it, for a uniform bank too; u
reaching 0 or 1 (noise far from zero mean) never picks a row of frequency 0; nearest with k = the bank's size
returns every row."""
from __future__ import annotations

import math

import torch

from gmem_explore import MemoryBank, index_from_noise


def noise_for(u: float) -> torch.Tensor:
    """One 1-element noise sample whose m = mean * sqrt(numel) is Phi^-1(u), so the choice sees exactly u."""
    m = math.sqrt(2) * torch.erfinv(torch.tensor(2 * u - 1, dtype=torch.float64))
    return m.float().reshape(1, 1, 1)


def test_each_quantile_picks_its_row_in_a_uniform_bank_and_by_frequency():
    # four equal rows: u in (0, .25) -> row 0, (.25, .5) -> row 1, ...
    for u, row in ((0.1, 0), (0.3, 1), (0.6, 2), (0.9, 3)):
        assert int(index_from_noise(noise_for(u), None, 4)[0]) == row
        assert int(MemoryBank(torch.randn(4, 3)).from_noise(noise_for(u))[0]) == row
    freq = torch.tensor([1.0, 3.0, 6.0])  # cumulative shares .1, .4, 1.0
    for u, row in ((0.05, 0), (0.2, 1), (0.39, 1), (0.41, 2), (0.99, 2)):
        assert int(index_from_noise(noise_for(u), freq)[0]) == row


def test_noise_at_the_far_ends_never_picks_a_row_of_frequency_zero():
    low, high = torch.full((1, 2, 2), -40.0), torch.full((1, 2, 2), 40.0)  # u rounds to exactly 0 and 1
    freq = torch.tensor([0.0, 2.0, 1.0, 0.0])
    assert int(index_from_noise(low, freq)[0]) == 1
    assert int(index_from_noise(high, freq)[0]) == 2
    assert int(index_from_noise(low, None, 5)[0]) == 0 and int(index_from_noise(high, None, 5)[0]) == 4


def test_nearest_with_k_equal_to_the_bank_size_returns_every_row(tiny_bank):
    idx, sims = tiny_bank.nearest(tiny_bank.rows[4], k=len(tiny_bank))
    assert sorted(idx[0].tolist()) == list(range(20)) and int(idx[0, 0]) == 4
    assert idx.shape == (1, 20) and bool((sims[0, :-1] >= sims[0, 1:]).all())
    assert tiny_bank.nearest(tiny_bank.rows[4], k=100)[0].shape == (1, 20)  # more than it has: all of them
