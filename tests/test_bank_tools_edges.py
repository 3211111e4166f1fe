"""Bank tools at their edges (tests written to kill mutants of bank_tools.py that the older tests let through)."""
from __future__ import annotations

import torch

from gmem_explore.bank import MemoryBank
from gmem_explore.bank_tools import partner_row


def test_partner_row_is_never_the_row_itself_even_when_every_other_row_points_away():
    rows = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.3]])  # cosines to row 0: about -0.99 and -0.96
    assert partner_row(MemoryBank(rows), 0) == 2  # the one nearest cosine 0.5, not row 0 (cosine 1)
    one_group = MemoryBank(rows, labels=torch.zeros(3, dtype=torch.long), label_names=["all"])
    assert partner_row(one_group, 0) == 2  # no other group: the same rule as without groups
