"""The app's handlers given what a visitor or an API client (gradio_client sends any JSON) may send, and actions in
an odd order: each ends in a result or a message in the visitor's words, never a server error or gradio's own
"Could not preprocess input component ..." text."""
from __future__ import annotations

import asyncio
import os

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from app_tiny import ROWS
from conftest import upload_folder
from gmem_explore.app import bank_tab as ui_bank, interpolate_tab as ui_interpolate, swap_tab as ui_swap
from gmem_explore.app.server import load_checkpoint
from gmem_explore.app.common import friendly
from gmem_explore.app.files import upload_to_image

pytest_plugins = ["app_tiny"]  # the demo, ctx and red fixtures


def run_api(demo, name, inputs):
    """One call of a named endpoint as gradio runs it (its preprocessing included), in a fresh session."""
    (index,) = [i for i, f in demo.fns.items() if f.api_name == name]
    return asyncio.run(demo.process_api(index, inputs, state=SessionState(demo), explicit_call=True))["data"]


@pytest.mark.parametrize("name, inputs, message", [
    ("bank_row", [None, "4"], None),  # a number as text, as other endpoints take it
    ("bank_row", [None, float("nan")], "row must be a finite number"),
    ("bank_row_generate", [None, "abc"], "row must be a number; got 'abc'"),
    ("bank_page", [None, "1"], None),
    ("bank_map", [None, "pca", "group", None, 100, 0, 100, 0], "box edge must be a number; got None"),
    ("bank_map", [None, "pca", "colour", 0, 100, 0, 100, 0], "Unknown colouring 'colour'"),
    ("swap_compare", [None, 3, None], "steps must be a number; got None"),
    ("swap_compare", [None, "3", "2"], None),
])
def test_endpoints_check_their_own_inputs(demo, name, inputs, message):
    """gradio's own checks answered these with "Could not preprocess input component at index 2 (a `slider`
    component) of the event handler (named "on_compare") ..." (not a gr.Error), while /generate took "4"."""
    if message is None:
        assert run_api(demo, name, inputs)
        return
    with pytest.raises(gr.Error) as caught:
        run_api(demo, name, inputs)
    assert caught.value.message.startswith(message) or message in caught.value.message


def test_the_map_rings_only_a_row_of_the_bank(ctx):
    """The map's ring reads the row box, which an API client may fill with anything: 2**64 raised OverflowError."""
    s = ctx.new_session()
    for row in (2**64, -3, ROWS, "x", float("inf")):
        found, items, rows, summary = ui_bank.bank_map(ctx, s, "pca", "group", 0, 100, 0, 100, row)
        assert summary.startswith(f"{ROWS} rows on the map") and len(rows) == ROWS
        assert found["rings"]["row"] is None
    assert ui_bank.ring_row("7", ROWS) == 7 and ui_bank.ring_row(7.5, ROWS) is None
    assert ui_bank.ring_row(ROWS, ROWS) is None and ui_bank.ring_row(None, ROWS) is None


def test_page_buttons_step_into_a_bank_that_shrank(demo, ctx, red):
    """Add 9 rows on the Swap tab (2 pages), go to page 2, Reset: "◀ previous" said "page must be between 1 and 1;
    got 2" instead of showing page 1."""
    (prev_btn,) = [b for b in demo.blocks.values() if isinstance(b, gr.Button) and b.value == "◀ previous"]
    (step,) = [f for f in demo.fns.values() if f.targets and f.targets[0][0] == prev_btn._id]
    s = ctx.new_session()
    for _ in range(9):
        s, _, _ = ui_swap.add_row(ctx, s, red)
    assert ui_bank.page(ctx, s, 2)[1] == list(range(48, ROWS + 9))
    s, _ = ui_swap.reset(ctx, s)
    items, rows, number, text = step.fn(s, 2)
    assert number == 1 and rows == list(range(ROWS)) and text.startswith("page 1 of 1")


def test_interpolating_one_snippet_into_itself_is_refused(ctx, red):
    """Both ends the same row (or the same image) cost k sampler runs for k identical frames; the notebook's
    Interpolator already refuses it."""
    run = friendly(ui_interpolate.interpolate)
    s = ctx.new_session()
    with pytest.raises(gr.Error, match=r"A and B are both row 5 · blue: all frames would be alike\. Pick two "
                                       r"different rows"):
        list(run(ctx, s, "bank row", 5, None, "bank row", "5", None, "slerp", 3, 0, False, 1, "euler"))
    with pytest.raises(gr.Error, match="A and B are the same image: all frames would be alike. Pick two different"):
        list(run(ctx, s, "uploaded image", 0, red, "uploaded image", 0, red, "lerp", 3, 0, False, 1, "euler"))
    *_, (items, *_rest) = run(ctx, s, "bank row", 5, None, "bank row", 6, None, "slerp", 3, 0, False, 1, "euler")
    assert len(items) == 3


@pytest.mark.parametrize("name", [4.0, True, ["tiny"]])
def test_a_checkpoint_name_that_is_not_text_is_a_message(ctx, name):
    """The dropdown takes custom values, so an API client can send a number or a list: 'float' object has no
    attribute 'strip' (a server error) before."""
    with pytest.raises(gr.Error, match="Choose a checkpoint name"):
        load_checkpoint(ctx, ctx.new_session(), name, None)


def test_downloads_write_a_bank_once_per_state(ctx, red):
    """Every click saved the whole bank into a new folder kept an hour (~1 GB for gmem-v1-xl): a script clicking
    Download filled the disk without an edit. Now one file per state of a bank: the checkpoint's bank is written
    once for all sessions, and an edited copy again only after a further edit (its old file goes)."""
    first, second = ctx.new_session(), ctx.new_session()
    shared = ui_swap.download(ctx, first)
    assert ui_swap.download(ctx, second) == shared == ui_swap.download(ctx, first)
    s, _, _ = ui_swap.replace_row(ctx, ctx.new_session(), red, 2)
    edited = ui_swap.download(ctx, s)
    assert edited != shared and ui_swap.download(ctx, s) == edited
    s, _, _ = ui_swap.add_row(ctx, s, red)
    newer = ui_swap.download(ctx, s)
    assert newer != edited and not os.path.exists(edited) and os.path.exists(shared)
    from gmem_explore import MemoryBank

    assert len(MemoryBank.load(newer)) == ROWS + 1 and len(MemoryBank.load(shared)) == ROWS
    s, _ = ui_swap.reset(ctx, s)
    assert ui_swap.download(ctx, s) == shared


def test_a_folder_is_not_an_upload():
    folder = upload_folder("folder-upload")
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        upload_to_image({"path": str(folder), "orig_name": "holiday"})


def test_the_swap_row_box_takes_any_number(ctx):
    """row_box (the box's value after Add, Replace and Reset) raised OverflowError for inf and kept -3."""
    s = ctx.new_session()
    assert "value" not in ui_swap.row_box(ctx, s, float("inf"))
    assert ui_swap.row_box(ctx, s, -3)["value"] == 0
    assert ui_swap.row_box(ctx, s, 10**30)["value"] == ROWS - 1



def test_replacing_a_row_counts_against_the_edit_limit(ctx, red, monkeypatch):
    """Add stopped at MAX_EDITS edits, but Replace went on for ever (each one a line more in the session's log): a
    script could grow a session without limit by replacing row 0 again and again."""
    monkeypatch.setattr(ui_swap, "MAX_EDITS", 2)
    s = ctx.new_session()
    s, _, _ = ui_swap.replace_row(ctx, s, red, 0)
    s, _, _ = ui_swap.add_row(ctx, s, red)
    for edit in (lambda: ui_swap.replace_row(ctx, s, red, 1), lambda: ui_swap.add_row(ctx, s, red)):
        with pytest.raises(gr.Error, match="This session already made 2 edits, the limit; download the bank"):
            friendly(edit)()
    assert len(s.edits) == 2 and len(ctx.bank(s)) == ROWS + 1
    s, _ = ui_swap.reset(ctx, s)  # Reset starts the count again
    assert ui_swap.replace_row(ctx, s, red, 1)[1] == 1


@pytest.mark.parametrize("name, inputs", [
    ("generate", [None, "random (by frequency)", 0, None, None, 1, 5, "false", 1, "euler", 1.0, 1, 0.5]),
    ("swap_generate", [None, "red", 1, 5, "false", 1]),
    ("interpolate", [None, "bank row", 0, None, "bank row", 1, None, "lerp", 2, 5, "false", 1, "euler"]),
])
def test_the_random_seed_box_takes_only_true_or_false(demo, red, name, inputs):
    """An API client's "false" (or 0, or None) is not False: "false" is a truthy string, so the app drew a random
    seed where the client had asked for seed 5. Anything but a real bool is a message naming the box."""
    inputs = [{"path": red, "orig_name": "red.png", "meta": {"_type": "gradio.FileData"}} if v == "red" else v
              for v in inputs]
    for value in ("false", 0, None):
        sent = [value if v == "false" else v for v in inputs]
        with pytest.raises(gr.Error, match=f"Random seed must be true or false; got {value!r}"):
            run_api(demo, name, sent)
    seed_at = {"generate": 1, "swap_generate": 1, "interpolate": 3}[name]
    assert run_api(demo, name, [False if v == "false" else v for v in inputs])[seed_at] == 5
