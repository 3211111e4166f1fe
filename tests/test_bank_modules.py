"""The bank package is split into modules (snippet arithmetic in bank/snippets.py): every public name is importable
from gmem_explore.bank and from bank/memory.py as the same object, so user code does not depend on the split."""
from __future__ import annotations

import gmem_explore
from gmem_explore.bank import memory as bank, snippets as snippet_math


def test_the_names_moved_out_of_bank_are_still_there_and_the_same_objects():
    for name in ("normalize", "mix", "MIX_METHODS"):
        assert getattr(bank, name) is getattr(snippet_math, name)
        assert name in bank.__all__
    assert gmem_explore.mix is snippet_math.mix and gmem_explore.normalize is snippet_math.normalize
    for name in bank.__all__:  # every public name of the bank module resolves
        assert hasattr(bank, name), name
