"""The Bank tab's interactive map, Python side (app/scatter.py and its use in bank_tab): packing the points,
colours and legends, selecting the rows inside a box or lasso, the rings, the browser's requests and bad input.
The browser side is tests/test_browser.py's map tests."""
from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from app_tiny import ROWS
from gmem_explore.app import bank_tab, mapping, scatter
from gmem_explore.bank.whole_map import whole_map
from gmem_explore.app.common import UserError

pytest_plugins = ["app_tiny"]  # the demo and ctx fixtures
ROOT = Path(__file__).resolve().parents[1]


# ---- packing -------------------------------------------------------------------------------------------------------
def test_quantised_points_come_back_within_half_a_step():
    g = np.random.default_rng(0)
    coords = np.c_[g.normal(5, 30, 10_000), g.normal(-2, 0.01, 10_000)]  # axes of very different spans
    view = scatter.MapView.build(coords, scatter.one_colour())
    h = view.header
    got = scatter.decode_payload(view.payload, h)
    back = scatter.dequantise(np.c_[got["x"], got["y"]], h["lo"], h["span"])
    step = np.array(h["span"]) / scatter.LEVELS
    assert (np.abs(back - coords) <= step / 2 + 1e-9 * np.abs(coords).max()).all()
    assert np.abs(back - coords).max(0)[0] > step[0] / 10  # a real bound, not exact floats passed through
    assert h["count"] == 10_000 and h["rows"] is False and h["top"] == 0 and (got["rows"] == np.arange(10_000)).all()
    assert len(view.payload) == 4 * -(-(5 * 10_000) // 3)  # 5 bytes a point (base64 of x, y and colour), no rows


def test_a_subsample_sends_its_rows_and_a_flat_axis_does_not_divide_by_zero():
    rows = np.array([3, 9, 12, 40_000])
    view = scatter.MapView.build([[0, 1], [0, 2], [0, 3], [0, 4]], scatter.one_colour(), rows)
    got = scatter.decode_payload(view.payload, view.header)
    assert view.header["rows"] is True and got["rows"].tolist() == rows.tolist()
    assert len(scatter.base64.b64decode(view.payload)) == 4 * 5 + 0 + 4 * 4  # 5 bytes a point, pad to 20, 4 a row
    assert got["x"].tolist() == [0, 0, 0, 0] and got["y"].tolist() == [0, 21845, 43690, 65535]
    assert (view.rows == rows).all()


def test_an_edited_maps_moved_rows_go_as_a_short_tail_and_come_back_as_every_points_row():
    """An edited session's map: every row once, the moved rows (replaced ones and added ones past the end) drawn
    last, on top of their island. The payload sends their rows only (4 bytes each), not every point's row."""
    g = np.random.default_rng(2)
    n, moved = 5_003, np.array([4_998, 17, 5_001, 250, 3_000])  # 5,001 and 4,998: added and replaced, unsorted
    rows = np.r_[np.setdiff1d(np.arange(n), moved), moved]
    coords = g.normal(0, 3, (n, 2))
    view = scatter.MapView.build(coords, scatter.group_colours(rows % 7), rows)
    h, got = view.header, scatter.decode_payload(view.payload, view.header)
    assert h["rows"] is False and h["top"] == 5 and got["top"].tolist() == moved.tolist()
    assert got["rows"].tolist() == rows.tolist() and (view.rows == rows).all()
    padded = 5 * n + (-(5 * n) % 4)
    assert len(view.payload) == 4 * -(-(padded + 4 * 5) // 3)  # 5 bytes a point, 4 a moved row
    # the points, colours and rows as the explicit column gave them (a subsample's form, built by hand)
    raw = scatter.base64.b64decode(view.payload)
    explicit = scatter.base64.b64encode(raw[:padded] + rows.astype("<i4").tobytes()).decode()
    old = scatter.decode_payload(explicit, {**h, "rows": True})
    for k in ("x", "y", "colour", "rows"):
        assert (got[k] == old[k]).all(), k
    back = scatter.dequantise(np.c_[got["x"], got["y"]], h["lo"], h["span"])
    assert np.abs(back - coords).max() < max(h["span"]) / scatter.LEVELS


@pytest.mark.parametrize("rows", [
    [0, 1, 2, 5],        # past the points' count: a subsample of a larger bank
    [0, 2, 2, 3],        # a row twice (and row 1 missing)
    [3, 2, 1, 0],        # every row, but not row order plus a tail: still the shortest tail (3 rows)
])
def test_rows_that_are_not_row_order_plus_a_tail_go_as_they_are(rows):
    view = scatter.MapView.build(np.arange(8.0).reshape(4, 2), scatter.one_colour(), rows)
    got = scatter.decode_payload(view.payload, view.header)
    assert got["rows"].tolist() == rows
    if len(set(rows)) == 4 and max(rows) < 4:
        assert view.header["rows"] is False and view.header["top"] == 3
    else:
        assert view.header["rows"] is True and view.header["top"] == 0


def test_group_colours_index_the_palette_and_name_the_legend():
    c = scatter.group_colours(np.array([0, 1, 2, -1, 1]), ["red", "green", "blue"])
    assert c.index.tolist() == [0, 1, 2, scatter.ADDED, 1] and c.palette[scatter.ADDED] == "#000000"
    assert [e["name"] for e in c.legend] == ["added", "red", "green", "blue"]
    assert [e["colour"] for e in c.legend[1:]] == [c.palette[0], c.palette[1], c.palette[2]]
    assert len(set(c.palette[i] for i in range(3))) == 3 and c.note == ""
    view = scatter.MapView.build(np.zeros((5, 2)) + np.arange(5)[:, None], c)
    assert scatter.decode_payload(view.payload, view.header)["colour"].tolist() == c.index.tolist()
    assert view.header["legend"] == c.legend and view.header["palette"]["255"] == "#000000"


def test_many_groups_share_twenty_colours_and_the_legend_lists_the_largest():
    labels = np.r_[np.arange(1000), np.full(50, 7), np.full(20, 500)]  # ImageNet-like: 1,000 classes
    c = scatter.group_colours(labels, [f"class {i}" for i in range(1000)])
    assert c.index.max() < 20 and (c.index == labels % 20).all()
    assert len(c.legend) == scatter.MAX_LEGEND and [e["name"] for e in c.legend[:2]] == ["class 7", "class 500"]
    assert "1,000 groups share 20 colours" in c.note
    assert [e["name"] for e in scatter.cluster_colours(np.array([2, 0, 2])).legend] == ["cluster 0", "cluster 2"]


def test_value_colours_use_a_log_scale_over_a_wide_range():
    c = scatter.value_colours(np.logspace(0, 4, 101))
    assert c.scale["log"] and (c.scale["min"], c.scale["max"]) == (1.0, 10_000.0)
    assert c.index[0] == 0 and c.index[-1] == 255 and abs(int(c.index[50]) - 128) <= 1  # 100 = the middle in log
    assert (np.diff(c.index.astype(int)) >= 0).all() and len(c.scale["stops"]) == 5
    linear = scatter.value_colours(np.array([1.0, 2.0, 3.0]))
    assert not linear.scale["log"] and linear.index.tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="frequency values must be finite; 1 are NaN"):
        scatter.value_colours(np.array([1.0, np.nan]))


def test_fallback_clusters_are_regions_of_the_map():
    g = np.random.default_rng(1)
    blobs = np.r_[g.normal(0, 1, (300, 2)), g.normal(100, 1, (300, 2))]
    ids = scatter.fallback_clusters(blobs, k=2)
    assert len(set(ids[:300])) == 1 and len(set(ids[300:])) == 1 and ids[0] != ids[-1]
    assert (scatter.fallback_clusters(blobs, k=5) == scatter.fallback_clusters(blobs, k=5)).all()
    assert scatter.fallback_clusters(np.zeros((3, 2)), k=12).tolist() == [0, 0, 0]


# ---- selection -----------------------------------------------------------------------------------------------------
GRID = np.array([[x, y] for y in range(10) for x in range(10)], dtype=float)  # point i at (i % 10, i // 10)


def test_a_box_takes_the_points_inside_it_edges_included():
    mask = scatter.rows_in_polygon(GRID, [[2, 3], [5, 3], [5, 4], [2, 4]])
    assert np.flatnonzero(mask).tolist() == [32, 33, 34, 35, 42, 43, 44, 45]
    reversed_box = scatter.rows_in_polygon(GRID, [[5, 4], [5, 3], [2, 3], [2, 4]])  # dragged the other way
    assert (reversed_box == mask).all()


def test_a_lasso_takes_the_points_inside_its_shape():
    triangle = [[-0.5, -0.5], [9.5, -0.5], [-0.5, 9.5]]  # below the anti-diagonal x + y = 9
    assert (scatter.rows_in_polygon(GRID, triangle) == (GRID.sum(1) < 9)).all()
    # an L: the notch (x > 3 and y > 3) is left out
    ell = [[-0.5, -0.5], [9.5, -0.5], [9.5, 3.5], [3.5, 3.5], [3.5, 9.5], [-0.5, 9.5]]
    inside = scatter.rows_in_polygon(GRID, ell)
    assert (inside == ~((GRID[:, 0] > 3) & (GRID[:, 1] > 3))).all() and inside.sum() == 100 - 36
    assert not scatter.rows_in_polygon(GRID, [[20, 20], [30, 20], [25, 30]]).any()


@pytest.mark.parametrize("polygon, message", [
    ([[0, 0], [1, 1]], "at least 3 corners (a box has 4); got 2"),
    ([], "a selection must be a list of [x, y] corners; got shape (0,)"),
    ([[0, 0], [1, float("nan")], [2, 0]], "corners must be finite"),
    ("abc", "a selection must be a list of [x, y] corners"),
    ([[0, 0, 0], [1, 1, 1], [2, 0, 0]], "got shape (3, 3)"),
])
def test_bad_polygons_say_what_a_selection_is(polygon, message):
    with pytest.raises(ValueError) as caught:
        scatter.rows_in_polygon(GRID, polygon)
    assert message in str(caught.value)


def test_bad_coordinates_are_named():
    bad = GRID.copy()
    bad[[4, 7]] = np.nan
    for call in (lambda: scatter.MapView.build(bad, scatter.one_colour()),
                 lambda: scatter.rows_in_polygon(bad, [[0, 0], [1, 0], [1, 1]])):
        with pytest.raises(ValueError, match=r"points \[4, 7\] \(2 in all\) are NaN or infinite"):
            call()
    with pytest.raises(ValueError, match=r"must be \(N, 2\); got shape \(3,\)"):
        scatter.MapView.build([1, 2, 3], scatter.one_colour())
    with pytest.raises(ValueError, match="one bank row per point \\(100\\); got 3"):
        scatter.MapView.build(GRID, scatter.one_colour(), rows=[1, 2, 3])
    with pytest.raises(ValueError, match="one colour per point \\(100\\); got 2"):
        scatter.MapView.build(GRID, scatter.group_colours([0, 1]))


def test_rings_are_the_row_and_its_neighbours():
    assert scatter.highlight(4, [9, 4, 2], 10) == {"row": 4, "neighbours": [9, 2]}
    assert scatter.highlight(None, [], 10) == {"row": None, "neighbours": []}
    assert scatter.highlight(10, [1], 10)["row"] is None  # a row box holding a row the bank lacks rings nothing
    with pytest.raises(ValueError, match=r"neighbour rows must be rows of the bank \(0-9\); got \[10, -1\]"):
        scatter.highlight(1, [10, -1, 3], 10)


# ---- the browser's requests ----------------------------------------------------------------------------------------
def test_the_store_shares_a_map_per_bank_and_forgets_the_oldest():
    class Bank:
        pass

    a, b = Bank(), Bank()
    store = scatter.MapStore(capacity=2)
    view = scatter.MapView.build(GRID, scatter.one_colour())
    entry = lambda bank: scatter.Entry(view, lambda r: None, 100, "", __import__("weakref").ref(bank))  # noqa: E731
    t1 = store.put("k", entry(a))
    assert store.find("k", a) == t1 and store.find("k", b) is None  # the same key naming another bank is not it
    t2, t3 = store.put("k2", entry(a)), store.put("k3", entry(b))
    assert store.get(t2) and store.get(t3) and store.find("k", a) is None
    with pytest.raises(KeyError, match="no longer on the server"):
        store.get(t1)
    assert len({t1, t2, t3}) == 3 and len(t1) == 24


def test_pictures_for_the_tooltip(ctx):
    s = ctx.new_session()
    token, header, entry, _ = bank_tab.map_view(ctx, s, "pca", "group")
    reply = scatter.picture_reply(ctx.maps, {"token": token, "row": 5})
    assert reply["row"] == 5 and reply["caption"] == "row 5 · blue" and reply["src"].startswith("data:image/png;base64,")
    for row in (ROWS, -1, 2.5, "3", None, True):
        with pytest.raises(ValueError, match=rf"row must be a row of the bank \(0-{ROWS - 1}\)"):
            scatter.picture_reply(ctx.maps, {"token": token, "row": row})
    with pytest.raises(KeyError, match="no longer on the server"):
        scatter.picture_reply(ctx.maps, {"token": "0" * 24, "row": 1})
    assert bank_tab.map_view(ctx, ctx.new_session(), "pca", "group")[0] == token  # sessions share the packed map
    assert bank_tab.map_view(ctx, s, "pca", "cluster")[0] != token


def test_a_region_of_a_map_lists_its_rows(ctx, monkeypatch):
    s = ctx.new_session()
    token, header, entry, _ = bank_tab.map_view(ctx, s, "pca", "frequency")
    coords = entry.view.coords
    corners = coords[[0, 1, 2]]  # a triangle through three rows' points: those three, at least (edges are ties)
    _, rows, summary = bank_tab.region(ctx, s, token, (corners + 0.0).tolist())
    assert summary.endswith("in the lasso") or "in the lasso;" in summary
    expected = entry.view.rows[scatter.rows_in_polygon(coords, corners)]
    assert sorted(rows) == sorted(expected.tolist())
    assert rows == sorted(rows, key=lambda r: -float(ctx.bank(s).freq[r]))  # most frequent first
    with pytest.raises(UserError, match="at least 3 corners"):
        bank_tab.region(ctx, s, token, [[0, 0], [1, 1]])
    with pytest.raises(UserError, match="no longer on the server"):
        bank_tab.region(ctx, s, "f" * 24, None)
    edited = ctx.new_session()
    ctx.private_bank(edited)  # its own copy: the checkpoint bank's map is not its map
    with pytest.raises(UserError, match="another bank"):
        bank_tab.region(ctx, edited, token, None)


def test_cluster_colouring_takes_given_ids_or_regions_of_the_map(ctx):
    s = ctx.new_session()
    bank = ctx.bank(s)
    coords = torch.randn(ROWS, 2, generator=torch.Generator().manual_seed(0))
    token, header, _, note = bank_tab.map_view(ctx, s, "pca", "cluster", coords=coords, clusters=torch.arange(ROWS) % 4)
    assert [e["name"] for e in header["legend"]] == [f"cluster {i}" for i in range(4)] and note == ""
    # by default the bank's own k-means clusters (whole_map), one legend entry each
    _, header, _, note = bank_tab.map_view(ctx, s, "pca", "cluster")
    found = whole_map(bank, "pca", progress=False).cluster
    assert note == "" and len(header["legend"]) == len(found.unique())  # 40 rows: one cluster (39 rows a centre)
    assert len(bank) == ROWS


def test_without_faiss_clusters_are_regions_of_the_map(ctx, monkeypatch):
    def no_faiss(*args, **kwargs):
        raise ImportError("the whole-bank map needs faiss-cpu")

    monkeypatch.setattr(mapping, "whole_map", no_faiss)
    s = ctx.new_session()
    _, header, _, note = bank_tab.map_view(ctx, s, "umap", "cluster")
    assert "clusters are regions of the map" in note and len(header["legend"]) == scatter.FALLBACK_CLUSTERS


def test_a_click_on_a_point_is_checked_like_the_row_box(demo, ctx):
    import gradio as gr

    (point,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_point"]
    s = ctx.new_session()
    assert point.fn(s, gr.EventData(None, {"row": 7})) == 7
    for bad in ({"row": ROWS}, {"row": None}, {}, None):
        with pytest.raises(gr.Error, match="row"):
            point.fn(s, gr.EventData(None, bad))
    (region,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_region"]
    with pytest.raises(gr.Error, match="no longer on the server"):
        region.fn(s, gr.EventData(None, {"token": "nope", "polygon": None}))


def test_the_script_ships_with_the_package_and_names_its_events():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gmem_explore"]
    for path in scatter.JS_FILES:
        relative = path.relative_to(ROOT / "gmem_explore").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in data), (relative, data)
    js = "\n".join(p.read_text() for p in scatter.JS_FILES)
    for needed in ("trigger('select'", "trigger('region'", "server.map_data(", "server.row_picture(", "gl.POINTS",
                   "watch('points'", "watch('rings'", "window.gmemMap"):
        assert needed in js, needed
    assert "http" not in js and "import(" not in js  # nothing fetched from a network
    with pytest.raises(ValueError, match="renderer must be 'auto', 'webgl' or '2d'; got 'gpu'"):
        scatter.map_component(scatter.MapStore(), renderer="gpu")
