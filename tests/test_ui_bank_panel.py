"""The Bank tab and the model panel as a visitor sees them: grids that pick rows instead of opening a preview,
captions that fit, one message for a bad row, a readable box selection, no empty frequency plots for a bank whose
rows all have frequency 1, and short model-load failures that say which model is still in use. Handlers and the
app's event graph are checked directly (no browser), on the tiny model."""
from __future__ import annotations

import logging
import re

import gradio as gr
import pytest
import torch

from app_tiny import ROWS, tiny_factory
from gmem_explore.app import server as ui, bank_tab as ui_bank
from gmem_explore.bank.map2d import FADED_ALPHA, scatter_figure
from gmem_explore.app.server import build_app, load_checkpoint
from gmem_explore.app.common import Limits, UserError

pytest_plugins = ["app_tiny"]  # the demo and ctx fixtures


def session_with_freq(ctx, freq):
    """A session whose (edited) bank has the given frequencies: the tiny bank's differ, emoji-32's are all 1."""
    s = ctx.new_session()
    bank = ctx.bank(s).copy()
    bank.freq = freq
    s.bank = bank
    return s


def component(demo, elem_id):
    (found,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return found


def handlers(demo, name):
    return [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]


# ---- frequencies -------------------------------------------------------------------------------------------------
def test_uniform_frequency_gives_a_sentence_not_a_histogram(ctx):
    text, fig = ui_bank.stats(ctx, session_with_freq(ctx, torch.ones(ROWS, dtype=torch.float64)))
    assert fig is None and "all rows have frequency 1: rows are drawn uniformly" in text
    assert "min 1, max 1" not in text
    text, fig = ui_bank.stats(ctx, session_with_freq(ctx, None))
    assert fig is None and "no frequencies: rows are drawn uniformly" in text
    text, fig = ui_bank.stats(ctx, ctx.new_session())  # the tiny bank's frequencies differ: the histogram stays
    assert fig is not None and fig.axes[0].patches and "frequency: min" in text


def test_colour_by_frequency_when_all_equal(ctx, monkeypatch):
    from gmem_explore.app import mapping

    s = session_with_freq(ctx, torch.ones(ROWS, dtype=torch.float64))
    found, items, rows, summary = ui_bank.bank_map(ctx, s, "pca", "frequency", 0, 100, 0, 100, None)
    assert found["points"]["scale"] is None and found["points"]["legend"] == []  # no scale spanning 0.9-1.1
    assert "all rows have frequency 1, so there is nothing to colour by" in summary
    monkeypatch.setattr(mapping, "SHOW_SELECTED", 10)
    _, _, rows, summary = ui_bank.bank_map(ctx, s, "pca", "group", 0, 100, 0, 100, None)
    assert rows == list(range(10))  # equal frequencies order nothing: the first rows by number
    assert "first (by row number)" in summary and "most frequent" not in summary
    found, *_ = ui_bank.bank_map(ctx, ctx.new_session(), "pca", "frequency", 0, 100, 0, 100, None)
    scale = found["points"]["scale"]  # frequencies that differ keep their colour scale
    assert (scale["min"], scale["max"], scale["name"]) == (1, ROWS, "frequency")


# ---- selections on the map -----------------------------------------------------------------------------------------
def test_the_api_box_and_the_same_box_drawn_on_the_map_select_the_same_rows(ctx):
    """/bank_map's box (percent of the map's extent) and a box dragged on the map (data coordinates) agree; the
    points outside it fade in the browser (scatter.js), the rings stay on the row shown in the details."""
    s = ctx.new_session()
    found, _, api_rows, summary = ui_bank.bank_map(ctx, s, "pca", "group", 0, 50, 0, 100, 3)
    inside = int(summary.split()[0])
    assert 0 < inside < ROWS and found["rings"] == {"row": 3, "neighbours": []}
    coords = ctx.maps.get(found["points"]["token"]).view.coords
    lo, hi = coords.min(0), coords.max(0)
    mid = lo[0] + (hi[0] - lo[0]) * 0.5
    box = [[lo[0], lo[1]], [mid, lo[1]], [mid, hi[1]], [lo[0], hi[1]]]
    _, rows, text = ui_bank.region(ctx, s, found["points"]["token"], box)
    assert rows == api_rows and text.startswith(f"{inside} rows in the box")
    _, rows, text = ui_bank.region(ctx, s, found["points"]["token"], None)  # "Clear selection": the whole map
    assert len(rows) == ROWS and text.startswith(f"{ROWS} rows on the map")


def test_scatter_figure_selected_mask_and_frequency_norm():
    coords = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(20) < 5
    fig = scatter_figure(coords, color_by=torch.linspace(1, 3, 20).double(), selected=mask)
    faded, kept = fig.axes[0].collections  # faded first, so the selection is drawn on top
    assert (len(kept.get_offsets()), len(faded.get_offsets())) == (5, 15)
    assert faded.get_alpha() == FADED_ALPHA and kept.get_alpha() > FADED_ALPHA
    assert kept.norm.vmin == faded.norm.vmin == 1 and kept.norm.vmax == faded.norm.vmax == 3  # one scale for both
    with pytest.raises(ValueError, match="one value per point"):
        scatter_figure(coords, selected=torch.ones(3, dtype=torch.bool))


# ---- rows: captions, clicks, a bad row -----------------------------------------------------------------------------
def test_grid_captions_are_short(ctx):
    _, _, neighbours, rows, _ = ui_bank.row_details(ctx, ctx.new_session(), 4)
    assert all(c.startswith("row ") and " · cos " in c and len(c) <= len("row 99999 · cos -1.00")
               for _, c in neighbours)
    assert rows == [int(c.split()[1]) for _, c in neighbours] and 4 not in rows  # the rows a click maps to
    assert ui_bank.short_captions([(None, "row 12 · Smileys & Emotion")]) == [(None, "row 12")]


def test_row_grids_select_without_a_preview_and_fit_their_width(demo):
    for elem_id in ("bank-selection", "bank-neighbours", "bank-pages"):
        gallery = component(demo, elem_id)
        assert gallery.allow_preview is False, elem_id  # a click picks the row; a preview covered the grid
    for elem_id in ("bank-selection", "bank-neighbours", "bank-pages", "bank-generations"):
        assert "fit-grid" in component(demo, elem_id).elem_classes, elem_id
    assert component(demo, "bank-generations").height is None  # a fixed height hid the captions
    unmarks = handlers(demo, "unmark")  # new content clears the position-based mark of the last click
    assert sorted(f.outputs[0].elem_id for f in unmarks) == ["bank-neighbours", "bank-pages", "bank-selection"]
    assert all(f.targets[0][0] == f.outputs[0]._id and f.targets[0][1] == "change" for f in unmarks)
    assert ui_bank.unmark().selected_index is None
    # columns shrink to fit (no sideways scrolling), but never below the grid's longest caption (--thumb-min)
    assert "repeat(auto-fill, minmax(max(var(--thumb-min" in ui.CSS and ".fit-grid .grid-container" in ui.CSS
    for elem_id in ("bank-selection", "bank-neighbours", "bank-pages", "bank-generations"):
        assert re.search(rf"#{elem_id}\b[^{{]*{{ --thumb-min: \d+px; }}", ui.CSS), elem_id


def test_a_click_in_any_row_grid_picks_its_row_shows_it_and_rings_it_on_the_map(demo, ctx):
    picks = handlers(demo, "pick")
    grids = sorted(f.targets[0][0] for f in picks)
    assert grids == sorted(component(demo, e)._id for e in ("bank-selection", "bank-neighbours", "bank-pages"))
    for f in picks:  # each grid's click reads the rows that grid shows, kept in a State beside it
        (rows_state,) = f.inputs
        assert isinstance(rows_state, gr.State) and f.outputs == [component(demo, "bank-row")]
    (details,) = {id(f.fn): f for f in handlers(demo, "on_details") if f.api_name == "bank_row"}.values()
    assert any(f.inputs[0] is details.outputs[3] for f in picks)  # the neighbours' rows come with the details
    pick = picks[0].fn
    assert pick([7, 9], gr.SelectData(None, {"index": 1, "value": None})) == 9
    # after the details, the map rings the picked row and its neighbours (row box, every grid and the map's click)
    rings = handlers(demo, "on_ring")
    assert len(rings) == 5 and all(f.outputs == [component(demo, "bank-map")] for f in rings)
    assert all(f.show_progress == "hidden" for f in rings)  # a prop of the map: nothing is redrawn on the server
    (point,) = handlers(demo, "on_point")
    assert point.targets == [(component(demo, "bank-map")._id, "select")] and point.outputs == [component(demo, "bank-row")]
    s = ctx.new_session()
    update = rings[0].fn(s, 6, [5, 7])
    assert update.props["rings"] == {"row": 6, "neighbours": [5, 7]}
    assert rings[0].fn(s, ROWS + 3, [5]).props["rings"] == {"row": None, "neighbours": [5]}  # a row not in the bank


def test_bad_row_is_refused_before_any_output(demo, ctx):
    s = ctx.new_session()
    with pytest.raises(UserError, match="row"):
        ui_bank.check_row(ctx, s, ROWS)
    assert ui_bank.check_row(ctx, s, ROWS - 1) == ROWS - 1
    for api_name in ("bank_row", "bank_row_generate"):
        (fill,) = [f for f in demo.fns.values() if f.api_name == api_name]
        (check,) = [demo.fns[i] for i in fill.trigger_after] if isinstance(fill.trigger_after, list) else \
            [demo.fns[fill.trigger_after]]
        assert fill.trigger_only_on_success and check.outputs == []  # the check has nothing to mark with an error
        with pytest.raises(gr.Error, match="row"):
            check.fn(s, ROWS + 5)


# ---- the model panel -----------------------------------------------------------------------------------------------
def test_local_folder_box_only_where_paths_are_allowed(demo):
    boxes = [b for b in demo.blocks.values() if getattr(b, "label", None) == "…or a local checkpoint folder"]
    assert [b.visible for b in boxes] == [False]
    allowed = build_app(tiny_factory, "tiny", limits=Limits(allow_local_checkpoints=True), use_spaces_gpu=False)
    assert [b.visible for b in allowed.blocks.values()
            if getattr(b, "label", None) == "…or a local checkpoint folder"] == [True]


def test_failed_loads_are_short_and_say_which_model_is_in_use(ctx, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = ctx.new_session()
    with caplog.at_level(logging.WARNING, logger="gmem_explore.app.server"):
        s, text, _ = load_checkpoint(ctx, s, "gmem-v1-xl", "")
    assert s.checkpoint == "tiny"
    assert "not available on this server (no internet and no local copy)" in text and "Still using **tiny**" in text
    for admin_detail in ("hf download", "HF_HOME", "gmem convert", ".cache"):
        assert admin_detail not in text
    assert "hf download" in caplog.text  # the how-to is in the server log for whoever runs it
    s, text, _ = load_checkpoint(ctx, s, "", "/some/folder")
    assert "only loads the named checkpoints" in text and "Still using **tiny**" in text


def test_dropdown_is_reset_to_the_model_in_use(demo, ctx, monkeypatch):
    (reset,) = handlers(demo, "after_load")
    (load,) = [f for f in demo.fns.values() if f.api_name == "load_checkpoint"]
    trigger = reset.trigger_after if isinstance(reset.trigger_after, int) else reset.trigger_after[0]
    assert demo.fns[trigger] is load  # runs after every load, failed or not
    assert reset.outputs[0].label == "Checkpoint"
    assert [o.elem_id for o in reset.outputs[1:]] == ["model-panel", "generate-row", "generate-row-b", "interp-row-a",
                                                     "interp-row-b"]
    s = ctx.new_session()
    bank = ctx.bank(s)
    _, panel, *rows = reset.fn(s)  # every row box gives the range of the bank now in use
    last = len(bank) - 1
    assert [r["label"] for r in rows] == [f"Bank row (0–{last})", f"Second row (0–{last})", f"Row A (0–{last})",
                                          f"Row B (0–{last})"]
    assert all(r["maximum"] == last for r in rows)
    monkeypatch.setattr(ctx, "bank", lambda session: bank)  # the names below are not loaded in this test
    s.checkpoint = "emoji-32"
    assert reset.fn(s)[0]["value"] == "emoji-32" and reset.fn(s)[1]["label"] == "Model: emoji-32"
    s.checkpoint = "/a/folder/"  # loaded by path: no name in the list fits
    assert reset.fn(s)[0]["value"] is None and reset.fn(s)[1]["label"] == "Model: folder"


def test_the_model_panel_names_the_model_in_use(demo):
    """The panel said only "Model" while closed (as it opens): a visitor saw which model runs only by opening it.
    Its label now names the model, and a load relabels it (test_dropdown_is_reset_to_the_model_in_use)."""
    (panel,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-panel"]
    assert panel.label == "Model: tiny" and not panel.open
    assert ui.model_label("C:\\models\\mine") == "Model: mine"


ROW_BOXES = ("generate-row", "generate-row-b", "interp-row-a", "interp-row-b")


def test_row_boxes_take_the_grown_bank_when_their_tab_opens(demo, ctx):
    """The Swap tab's "add" grows the session's bank: the Generate and Interpolate row boxes say so when shown
    (Generate's second row box too, for a mix)."""
    s = ctx.new_session()
    s.bank = ctx.bank(s).copy()
    s.bank.add(torch.randn(3, s.bank.dim))
    last = len(s.bank) - 1
    tab_handlers = [f for f in demo.fns.values() if f.targets and f.targets[0][1] == "select" and
                    f.outputs and all(getattr(o, "elem_id", "") in ROW_BOXES for o in f.outputs)]
    assert sorted(o.elem_id for f in tab_handlers for o in f.outputs) == sorted(ROW_BOXES)
    for f in tab_handlers:
        out = f.fn(s)
        updates = out if len(f.outputs) > 1 else [out]  # one output: the update itself, not a list
        assert len(updates) == len(f.outputs)
        assert all(r["maximum"] == last and f"(0–{last})" in r["label"] for r in updates)
        # and gradio accepts what the handler returns (a one-element list failed in postprocess, in the browser)
        import asyncio

        from gradio.state_holder import SessionState
        fn_index = next(i for i, g in demo.fns.items() if g is f)
        result = asyncio.run(demo.process_api(fn_index, [None], state=SessionState(demo), explicit_call=True))
        assert len(result["data"]) == len(f.outputs)


def test_the_row_picking_grids_offer_no_downloads(demo):
    """Their thumbnails are for picking rows: 'Download All' gave image.png, image-2.png, ... (rows unnamed)."""
    grids = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Gallery)}
    for name in ("bank-selection", "bank-neighbours", "bank-pages"):
        assert grids[name].buttons == [], name
