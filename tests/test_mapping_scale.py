"""The Bank tab's map of an edited session on a 10,000-row bank of 100 clusters, laid out as UMAP lays out such a bank:
each cluster a small island, islands close together, one far away, so that 1% of the map's span is more than half the
gap between islands (as on the 1.28M-row map of 1,000 clusters: benchmarks/bank_tab_scale.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY
from gmem_explore import GMemPipeline, MemoryBank, build_model
from gmem_explore.app import mapping, scatter
from gmem_explore.app.common import AppContext, PipelineStore, Session
from gmem_explore.autoencoders import PixelSpace
from gmem_explore.bank import index as bank_index
from gmem_explore.bank.memory import normalize

ROWS, CLUSTERS = 10_000, 100


def islands(labels: torch.Tensor) -> torch.Tensor:
    """Clusters 0-98 on a 10 x 10 grid of unit spacing, each a tight island; cluster 99 far away (at 60, 60), so the
    map's span (60) is many islands wide, as on a UMAP map of 1,000 clusters."""
    g = torch.Generator().manual_seed(1)
    grid = torch.stack([labels % 10, labels // 10], 1).float()
    grid[labels == CLUSTERS - 1] = 60.0
    return grid + 0.02 * torch.randn(len(labels), 2, generator=g)


@pytest.fixture
def scale():
    """(app context, a session with 40 edits, {moved row: its cluster}, every row's cluster); fresh per test: a
    bank's search state remembers its hash."""
    g = torch.Generator().manual_seed(0)
    centres = normalize(torch.randn(CLUSTERS, TINY["snippet_dim"], generator=g))
    labels = torch.arange(ROWS) % CLUSTERS
    rows = normalize(centres[labels] + 0.05 * torch.randn(ROWS, TINY["snippet_dim"], generator=g))
    bank = MemoryBank(rows.half(), torch.randint(1, 100, (ROWS,), generator=g).double(), labels)
    pipe = GMemPipeline(build_model(**TINY).eval(), bank, PixelSpace(TINY["input_size"]))
    ctx = AppContext(PipelineStore(lambda name: pipe, "scale"))
    session = Session("scale")
    drawn = torch.randint(0, CLUSTERS - 1, (40,), generator=g)  # the snippets' clusters (not the far one)
    snippets = normalize(centres[drawn] + 0.05 * torch.randn(40, TINY["snippet_dim"], generator=g)).half()
    made = {}
    for i in range(40):  # as the Swap tab edits: half replaced rows, half added
        copy = ctx.private_bank(session)
        if i % 2:
            (row,) = copy.add(snippets[i:i + 1], labels=[-1]).tolist()
        else:
            row = 37 * i + 5
            copy.replace(row, snippets[i], label=-1)
        session.edits.append(f"edit {i}")
        made[row] = int(drawn[i])
    return ctx, session, made, labels


@pytest.fixture
def island_layout(monkeypatch, scale):
    """The checkpoint's map: the island layout with every row on it (as whole_map's), no fit."""
    labels = scale[3]

    def layout(bank, method, progress=None):
        assert bank is scale[0].store.get().bank, "only the checkpoint's bank is laid out"
        return islands(labels), torch.arange(ROWS), labels

    monkeypatch.setattr(mapping, "layout", layout)


def test_moved_rows_land_in_their_nearest_rows_island(scale, island_layout):
    """Each replaced or added row is drawn inside the island of the rows nearest to its new content: an offset of
    1% of the map's span (0.6 here, more than half the gap between islands) put many in a neighbouring island."""
    ctx, session, made, labels = scale
    coords, idx, note, clusters = mapping.map_coords(ctx, session, "umap")
    assert len(idx) == ROWS + 20 and sorted(idx.tolist()) == list(range(ROWS + 20))
    assert "40 row(s) edited" in note
    moved = len(made)
    placed, still = coords[-moved:], coords[:-moved]
    assert sorted(idx[-moved:].tolist()) == sorted(made)
    home = labels[idx[:-moved]]
    d = torch.cdist(placed, still)
    votes = home[d.topk(10, dim=1, largest=False).indices]  # the clusters of the 10 nearest unmoved points
    majority = torch.mode(votes, dim=1).values
    want = torch.tensor([made[int(r)] for r in idx[-moved:]])
    assert torch.equal(majority, want), f"{int((majority != want).sum())} of {moved} moved rows in another island"
    assert torch.equal(clusters[-moved:], want)  # coloured as the cluster they were placed in
    gap = d.min(dim=1).values
    assert float(gap.max()) < 0.1  # beside their anchor (islands are 1 apart), not on top of every point


def test_an_edited_sessions_map_does_not_hash_its_rows(scale, island_layout, monkeypatch):
    """Redrawing the map after an edit reads the copy's row map and searches the moved rows only: it used to look
    for a cached map of the edited bank, hashing every row (2.4 s at 1.28M rows) on every redraw."""
    ctx, session, made, _ = scale
    hashed = []
    real = bank_index.fingerprint
    monkeypatch.setattr(bank_index, "fingerprint", lambda rows, *a, **k: hashed.append(len(rows)) or real(rows, *a, **k))
    coords, idx, note, _ = mapping.map_coords(ctx, session, "umap")
    assert hashed == [] and len(idx) == ROWS + 20
    # the token's map: the packed view holds every row once
    token, header, entry, _ = mapping.map_view(ctx, session, "umap", "group")
    assert hashed == [] and header["count"] == ROWS + 20
    assert np.array_equal(np.sort(entry.view.rows), np.arange(ROWS + 20))
    # sent as row order plus the moved rows drawn last: 4 bytes a moved row, not 4 a point
    got = scatter.decode_payload(entry.view.payload, header)
    assert header["rows"] is False and 0 < header["top"] <= len(made) and (got["rows"] == entry.view.rows).all()
    assert set(got["top"].tolist()) <= set(made) and (entry.view.rows[-len(made):] == idx[-len(made):].numpy()).all()


def test_map_spacing_is_the_islands_size_not_the_maps():
    labels = torch.arange(ROWS) % CLUSTERS
    spacing = mapping.map_spacing(islands(labels))
    assert 0.005 < spacing < 0.05  # an island's points lie 0.02 apart; the map spans 60
    assert mapping.map_spacing(torch.zeros(1, 2)) == 0.0
    assert mapping.map_spacing(islands(labels)) == spacing  # seeded: the same map, the same length
