"""The interactive bank map of notebooks (notebook/bank_map.py, jupyter-scatter): the selection synced both ways in
bank rows (a subsampled map's points are not bank rows), highlights, colour columns, previews, bad input. No browser:
the browser's side is played by writing the widget's traits and messages as its frontend does."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from gmem_explore.bank.memory import MemoryBank
from gmem_explore.notebook import bank_map as bm


def browser_selects(widget, points):
    """What the frontend sends after a lasso: the selection trait's new value, serialised as jupyter-scatter does
    (uint32 points), through the widget's set_state (the deserialiser a comm message goes through)."""
    arr = np.asarray(points, dtype=np.uint32)
    widget.set_state({"selection": {"view": memoryview(arr.tobytes()), "dtype": "uint32", "shape": arr.shape}})


@pytest.fixture
def bank():
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(30, 16, generator=g)
    freq = torch.cat([torch.ones(15), torch.full((15,), 500.0)])  # spans 500x: a log colour scale
    thumbs = torch.randint(0, 256, (30, 8, 8, 3), generator=g, dtype=torch.uint8)
    return MemoryBank(rows, freq, torch.arange(30) % 3, ["animals", "food", "flags"], thumbs)


@pytest.fixture
def coords(bank):
    return torch.stack([torch.arange(30.0), torch.arange(30.0) % 7], dim=1)


@pytest.fixture
def sub():
    """A subsampled map: 10 points, bank rows 3, 6, ..., 30-ish out of order (point i is bank row ROWS[i])."""
    rows = torch.tensor([27, 3, 9, 15, 0, 21, 12, 6, 24, 18])
    return rows, torch.stack([rows.float(), -rows.float()], dim=1)


def test_browser_selection_fires_on_select_with_bank_rows(bank, coords):
    m = bm.bank_scatter(bank, coords)
    seen = []
    m.on_select(seen.append)
    browser_selects(m.widget, [4, 2, 7])
    assert [r.tolist() for r in seen] == [[4, 2, 7]]
    assert m.selected_rows.tolist() == [4, 2, 7] and m.selected_rows.dtype == torch.long
    browser_selects(m.widget, [])  # the user clears the selection
    assert seen[-1].tolist() == [] and m.selected_rows.tolist() == []
    data, _ = m._repr_mimebundle_()  # a cell ending in the map displays the widget
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == m.widget.model_id


def test_subsampled_map_translates_points_to_bank_rows_both_ways(bank, sub):
    rows, xy = sub
    m = bm.bank_scatter(bank, xy, rows)
    seen = []
    m.on_select(seen.append)
    browser_selects(m.widget, [0, 4, 9])
    assert seen[-1].tolist() == [27, 0, 18] == m.selected_rows.tolist()
    assert m.select([3, 24]).tolist() == [3, 24]
    assert m.widget.selection.tolist() == [1, 8]  # the widget holds points, not rows
    assert m.selected_rows.tolist() == [3, 24]
    assert len(seen) == 1  # select() from Python does not call the callbacks (no loops through them)
    with pytest.warns(UserWarning, match=r"1 of 2 rows are not on the map \(it shows 10 of the bank's 30 rows.*\[5\]"):
        assert m.select([5, 6]).tolist() == [6]
    assert m.widget.selection.tolist() == [7]


def test_rows_added_after_the_map_are_left_out_not_an_error(bank, coords):
    m = bm.bank_scatter(bank, coords)
    (new,) = bank.add(torch.randn(1, 16)).tolist()
    with pytest.warns(UserWarning, match=rf"1 of 2 rows are not on the map .*30 of the bank's 31 rows.*\[{new}\]"):
        assert m.select([2, new]).tolist() == [2]
    assert m.widget.selection.tolist() == [2]


def test_select_clears_and_refuses_rows_out_of_range(bank, coords):
    m = bm.bank_scatter(bank, coords)
    m.select([1, 2])
    assert m.select(None).tolist() == [] and m.selected_rows.tolist() == []
    for bad, match in (([30], r"rows \[30\] are out of range; the bank has 30 rows"), ([-1, 2], r"\[-1\]"),
                       ([1.5], "whole row numbers"), ("abc", "row numbers")):
        with pytest.raises(ValueError, match=match):
            m.select(bad)
    with pytest.raises(ValueError, match="out of range"):
        m.highlight([99])
    with pytest.raises(TypeError, match="function of the selected rows"):
        m.on_select([1, 2])


def test_highlight_enlarges_exactly_those_points(bank, sub):
    rows, xy = sub
    m = bm.bank_scatter(bank, xy, rows)
    assert m.highlight([9, 6]).tolist() == [9, 6]
    size_channel = m.widget.points[:, 3]  # valueB: the size encoding
    assert np.flatnonzero(size_channel).tolist() == [2, 7]  # points of rows 9 and 6
    assert m.widget.size == [m.base_size, max(10, 4 * m.base_size)] and m.widget.size_by == "valueB"
    m.highlight(None)
    assert not m.widget.points[:, 3].any() and m.highlighted.tolist() == []


def test_highlight_neighbours_rings_the_row_and_its_nearest(bank, coords):
    m = bm.bank_scatter(bank, coords)
    idx, sim = m.highlight_neighbours(5, k=4)
    expected, _ = bank.nearest([5], k=4)
    assert idx.tolist() == expected[0].tolist() and len(sim) == 4
    assert sorted(m.highlighted.tolist()) == sorted([5] + idx.tolist())
    assert sorted(np.flatnonzero(m.widget.points[:, 3]).tolist()) == sorted([5] + idx.tolist())


def test_colour_columns_for_group_frequency_and_cluster(bank, coords):
    clusters = torch.arange(30) // 10  # per bank row
    m = bm.bank_scatter(bank, coords, clusters=clusters)
    assert m.color_by == "group" and m.widget.color_by == "valueA"
    assert m.data["group"].tolist()[:4] == ["animals", "food", "flags", "animals"]
    assert m.data["frequency"].tolist()[14:16] == [1.0, 500.0]
    assert m.data["cluster"].tolist()[9:11] == [0, 1]
    assert m.widget.points[:4, 2].tolist() == [0, 1, 2, 0]  # the group codes
    m.color("frequency")
    assert m.color_by == "frequency" and m.scatter.color()["norm"].__class__.__name__ == "LogNorm"
    m.color("cluster")
    assert m.widget.points[9:11, 2].tolist() == [0, 1] and len(m.widget.color) == 3
    m.color(None)
    assert m.widget.color_by is None
    with pytest.raises(ValueError, match="color_by must be one of"):
        m.color("size")


def test_groups_of_one_name_and_added_rows_stay_apart(coords):
    bank = MemoryBank(torch.randn(30, 8), labels=torch.tensor([0, 1, -1] * 10), label_names=["same", "same"])
    m = bm.bank_scatter(bank, coords)
    assert m.data["group"].tolist()[:3] == ["same (0)", "same (1)", "added (-1)"]


def test_many_clusters_get_a_colour_each(bank, coords):
    """jupyter-scatter's own palettes stop at 256 colours (it asserts on more categories): the map cycles them."""
    many = bm.bank_scatter(MemoryBank(torch.randn(600, 4)), torch.randn(600, 2), clusters=torch.arange(600))
    assert many.color_by == "cluster" and len(many.widget.color) == 600


def test_colour_choices_follow_what_the_bank_has(coords):
    plain = MemoryBank(torch.randn(30, 8))
    m = bm.bank_scatter(plain, coords)
    assert m.color_by is None and m.available_colours() == ()
    with pytest.raises(ValueError, match="this bank has no group labels; choose one of \\(\\)"):
        m.color("group")
    with pytest.raises(ValueError, match=r"no clusters were given"):
        bm.bank_scatter(plain, coords, color_by="cluster")
    freq_only = MemoryBank(torch.randn(30, 8), torch.ones(30))
    assert bm.bank_scatter(freq_only, coords).color_by == "frequency"
    assert bm.bank_scatter(plain, coords, clusters=torch.zeros(30, dtype=torch.long)).color_by == "cluster"


def test_clusters_per_point_or_per_row_and_a_whole_map_object(bank, sub):
    rows, xy = sub
    per_row = torch.arange(30) * 10
    a = bm.bank_scatter(bank, xy, rows, clusters=per_row, color_by="cluster")
    assert a.data["cluster"].tolist() == (rows * 10).tolist()
    b = bm.bank_scatter(bank, xy, rows, clusters=torch.arange(10), color_by="cluster")
    assert b.data["cluster"].tolist() == list(range(10))

    class WholeMap:  # what a whole-bank layout hands over: a point per row, and its clusters
        coords = torch.randn(30, 2)
        clusters = torch.arange(30) % 4

    c = bm.bank_scatter(bank, WholeMap(), color_by="cluster")
    assert c.rows.tolist() == list(range(30)) and c.data["cluster"].tolist() == (torch.arange(30) % 4).tolist()
    with pytest.raises(ValueError, match="clusters has 7 ids; give one per bank row \\(30\\) or per point \\(10\\)"):
        bm.bank_scatter(bank, xy, rows, clusters=torch.arange(7))
    with pytest.raises(ValueError, match="integer ids"):
        bm.bank_scatter(bank, xy, rows, clusters=torch.rand(10))


def test_wrong_coords_and_rows_are_refused(bank, coords):
    with pytest.raises(ValueError, match=r"coords has 29 points but the bank has 30 rows: pass rows="):
        bm.bank_scatter(bank, coords[:29])
    with pytest.raises(ValueError, match=r"coords must be \(points, 2\); got shape \(30, 3\)"):
        bm.bank_scatter(bank, torch.randn(30, 3))
    bad = coords.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        bm.bank_scatter(bank, bad)
    with pytest.raises(ValueError, match="coords has 3 points but rows names 2"):
        bm.bank_scatter(bank, coords[:3], rows=[0, 1])
    with pytest.raises(ValueError, match="names a bank row twice"):
        bm.bank_scatter(bank, coords[:3], rows=[0, 1, 1])
    with pytest.raises(ValueError, match=r"rows: rows \[30\] are out of range"):
        bm.bank_scatter(bank, coords[:3], rows=[0, 1, 30])
    with pytest.raises(ValueError, match="rows goes with coords"):
        bm.bank_scatter(bank, rows=[0, 1])
    with pytest.raises(TypeError, match="pipe.bank"):
        bm.bank_scatter(torch.randn(30, 16), coords)
    with pytest.raises(ValueError, match=r"pictures must be uint8 \(N=30, H, W, 3\)"):
        bm.bank_scatter(bank, coords, pictures=torch.zeros(29, 8, 8, 3, dtype=torch.uint8))


def test_default_coords_place_every_row_with_its_cluster(bank, tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    m = bm.bank_scatter(bank, method="pca", max_rows=32)  # 30 rows: fitted whole (32 is whole_map's least)
    from gmem_explore.bank.whole_map import whole_map

    whole = whole_map(bank, "pca", fit_rows=32, progress=False)
    assert m.rows.tolist() == list(range(len(bank))) and torch.equal(m.coords, whole.coords)
    browser_selects(m.widget, [0, 11])
    assert m.selected_rows.tolist() == [0, 11]
    m.color("cluster")  # whole_map's k-means ids, not a stand-in


def test_without_faiss_the_default_map_keeps_embed_2ds_subsample(bank, tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))

    def no_faiss(*args, **kwargs):
        raise ImportError("the whole-bank map needs faiss-cpu")

    monkeypatch.setattr(bm, "whole_map", no_faiss)
    m = bm.bank_scatter(bank, method="pca", max_rows=12)
    from gmem_explore.bank.map2d import embed_2d

    coords, rows = embed_2d(bank, "pca", max_rows=12, return_indices=True)
    assert m.rows.tolist() == rows.tolist() and torch.equal(m.coords, coords)
    browser_selects(m.widget, [0, 11])
    assert m.selected_rows.tolist() == [int(rows[0]), int(rows[11])]


def test_a_whole_map_with_an_unusable_row_leaves_it_off(bank):
    from types import SimpleNamespace

    coords = torch.randn(len(bank), 2)
    coords[3] = float("nan")
    m = bm.bank_scatter(bank, coords=SimpleNamespace(coords=coords, cluster=torch.arange(len(bank)) % 3))
    assert 3 not in m.rows.tolist() and len(m.rows) == len(bank) - 1
    browser_selects(m.widget, [3])
    assert m.selected_rows.tolist() == [4]


def answer_hover(m, point):
    """The browser asks for a tooltip on hover; returns what the widget sends back."""
    sent = []
    m.widget.send = lambda msg, buffers=None: sent.append(msg)
    m.widget._handle_custom_msg({"type": "tooltip", "index": point, "preview": "preview",
                                 "properties": ["row", "group"]}, [])
    (msg,) = sent
    return msg


def test_tooltip_shows_the_row_its_group_and_its_thumbnail(bank, sub):
    import base64
    import io

    from PIL import Image

    rows, xy = sub
    m = bm.bank_scatter(bank, xy, rows)
    msg = answer_hover(m, 2)  # point 2 is bank row 9
    assert msg["properties"] == {"row": 9, "group": "animals"}
    assert msg["preview"].startswith("data:image/png;base64,")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(msg["preview"].split(",", 1)[1]))))
    assert img.shape == (96, 96, 3) and (img[::12, ::12] == bank.thumbnails[9].numpy()).all()


def test_pictures_from_a_gallery_are_asked_on_hover_until_they_exist(bank, coords):
    import base64
    import io

    from PIL import Image

    asked, drawn = [], {}

    def gallery(row):
        asked.append(row)
        return drawn.get(row)

    m = bm.bank_scatter(bank, coords, pictures=gallery)
    blank = answer_hover(m, 4)["preview"]  # a transparent pixel, not nothing: the browser would keep the last picture
    assert Image.open(io.BytesIO(base64.b64decode(blank.split(",", 1)[1]))).convert("RGBA").getpixel((0, 0))[3] == 0
    drawn[4] = torch.full((8, 8, 3), 200, dtype=torch.uint8)
    assert answer_hover(m, 4)["preview"].startswith("data:image/png")
    answer_hover(m, 4)
    assert asked == [4, 4]  # asked again while it had none, then cached
    assert bm.bank_scatter(bank, coords, pictures=False).has_previews is False
    assert "preview" not in bm.bank_scatter(MemoryBank(torch.randn(30, 4)), coords).data


def test_thumbnails_and_static_figure_follow_the_selection(bank, coords):
    m = bm.bank_scatter(bank, coords)
    assert m.thumbnails_figure() is None  # nothing selected
    browser_selects(m.widget, [1, 4, 7, 10])
    grid = m.thumbnails_figure()
    assert grid.size[0] >= 384 and grid.size[1] >= 128
    m.highlight([2])
    fig = m.figure()
    ax = fig.axes[0]
    faded = [c for c in ax.collections if c.get_alpha() == pytest.approx(0.12)]
    assert faded and sum(len(c.get_offsets()) for c in faded) == 26  # everything but the 4 selected rows
    assert len(ax.collections[-1].get_offsets()) == 1  # the ring around row 2


def test_missing_package_says_how_to_install(monkeypatch, bank, coords):
    monkeypatch.setitem(sys.modules, "jscatter", None)  # import jscatter now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "gmem-explore\[notebooks\]"'):
        bm.bank_scatter(bank, coords)


def test_the_extra_pins_the_installed_versions():
    from importlib.metadata import version
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    notebooks = next(line for line in pyproject.splitlines() if line.startswith("notebooks ="))
    assert "jupyter-scatter" in notebooks and "anywidget" in notebooks
    dev = (root / "requirements-dev.txt").read_text()
    assert f"jupyter-scatter=={version('jupyter-scatter')}" in dev and f"anywidget=={version('anywidget')}" in dev
