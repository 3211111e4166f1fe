"""Readers of a bank that only read must not copy it: bank.rows / .freq / .labels / .thumbnails hand out a private
tensor, which for an edited or shared bank (bank/overlay.py) copies the whole part for good (1.9 GB for the rows of
the 1.28M-row bank). The figures, the Generate tab's groups and evaluate's references read the parts as stored."""
from __future__ import annotations

import argparse

import pytest
import torch

from gmem_explore import MemoryBank
from gmem_explore.bank import overlay
from gmem_explore.bank.memory import normalize


@pytest.fixture
def edited():
    """(a bank, an edited copy of it sharing its storage, the copy's parts as plain tensors)."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(30, 8, generator=g)
    freq = torch.randint(1, 9, (30,), generator=g).double()
    labels = torch.arange(30) % 3
    thumbs = torch.randint(0, 256, (30, 4, 4, 3), generator=g, dtype=torch.uint8)
    base = MemoryBank(rows, freq, labels, ["a", "b", "c"], thumbs)
    copy = base.copy()
    copy.replace(4, torch.randn(8, generator=g), thumbnail=thumbs[0], label=2)
    assert copy.column("rows").edited and copy.column("labels").edited  # read through the overlay's map
    plain = {name: copy.column(name)[:].clone() for name in ("rows", "freq", "labels", "thumbnails")}
    return base, copy, plain


@pytest.fixture
def no_copies(monkeypatch):
    """Fails the test when any part of any bank is made private (copied whole) or gathered whole via materialise."""
    made = []
    private, materialise = overlay.Column.private, overlay.Column.materialise
    monkeypatch.setattr(overlay.Column, "private", lambda self: made.append("private") or private(self))
    monkeypatch.setattr(overlay.Column, "materialise", lambda self: made.append("materialise") or materialise(self))
    return made


def test_the_bank_figures_read_an_edited_bank_without_copying_it(edited, no_copies):
    from gmem_explore.notebook.bank_figures import frequency_figure, group_similarity_figure, neighbour_agreement

    _, copy, plain = edited
    share = frequency_figure(copy).axes[1].lines[0].get_ydata()
    sim = torch.as_tensor(group_similarity_figure(copy).axes[0].images[0].get_array())
    agreement = neighbour_agreement(copy, k=2, queries=30)
    assert no_copies == []
    freq = plain["freq"].float()
    expect = torch.cumsum(freq.sort(descending=True).values, 0) / freq.sum()
    assert torch.allclose(torch.as_tensor(share).float(), expect, atol=1e-6)
    unit = normalize(plain["rows"])
    centroids = normalize(torch.stack([unit[plain["labels"] == g].mean(0) for g in range(3)]))
    assert torch.allclose(sim.float(), centroids @ centroids.T, atol=1e-5)
    assert agreement["c"][2] == int((plain["labels"] == 2).sum()) == 11  # row 4 moved to group c by the edit


def test_generate_tabs_groups_and_evaluates_references_read_without_copying(edited, no_copies):
    from gmem_explore.app.generate_tab import group_rows
    from gmem_explore.cli.evaluate import reference_thumbnails

    base, copy, plain = edited
    rows_c = group_rows(copy, "c")
    thumbnails = reference_thumbnails(argparse.Namespace(data=None, split=None), None, copy)
    assert no_copies == []
    assert rows_c.tolist() == (plain["labels"] == 2).nonzero().flatten().tolist() and 4 in rows_c.tolist()
    assert torch.equal(thumbnails, plain["thumbnails"])
    base.rows  # noqa: B018  (the check itself: reading the attribute of a shared bank does copy)
    assert no_copies == ["private"]
