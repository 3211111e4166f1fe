"""Rows as pictures wherever the app names one (issue 22, items 4, 5 and 8): Swap's nearest rows, Interpolate's A and
B and Generate's source rows show a row's thumbnail, or, for a bank without thumbnails, its generation (made once per
row and model); the Interpolate strip's frames are large enough to read; a row added in this session has no empty
"Original bank" gallery; a bank whose rows all have one frequency offers no colouring by frequency."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app_tiny import GROUPS, ROWS, follow_ups, tiny_bank, tiny_pipeline
from gmem_explore import MemoryBank
from gmem_explore.app import bank_tab, generate_tab, interpolate_tab, swap_tab
from gmem_explore.app.common import row_items, row_pictures
from gmem_explore.app.pictures import RowPictures

pytest_plugins = ["app_tiny"]  # the demo, ctx and red fixtures


def handler(demo, api_name: str):
    (fn,) = [f for f in demo.fns.values() if f.api_name == api_name]
    return fn.fn


def block(demo, elem_id: str):
    (found,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return found


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB")))


def app_on(bank: MemoryBank):
    """The app on the tiny model with another bank."""
    from gmem_explore.app.common import Limits
    from gmem_explore.app.server import build_app

    pipe = tiny_pipeline().with_bank(bank)
    return build_app(lambda name: pipe, "tiny", limits=Limits(preview_seconds=0.0), use_spaces_gpu=False)


@pytest.fixture(scope="module")
def bare():
    """The app on a bank without thumbnails, labels or frequencies."""
    return app_on(MemoryBank(tiny_bank().column("rows")[:]))


def test_a_row_picture_is_its_thumbnail_enlarged(ctx):
    session = ctx.new_session()
    (picture,) = row_pictures(ctx, session, [5])
    assert picture.size == (128, 128)
    thumb = tiny_bank().column("thumbnails")[5]
    assert torch.equal(pixels(picture)[::16, ::16], thumb)  # nearest: every 16th pixel is the thumbnail's


def test_rows_without_thumbnails_are_generated_once_per_row_and_model(bare, tmp_path):
    ctx = bare.gmem_context
    # a gallery folder of its own: pictures of these rows that other tests kept on disk are not found (and counted)
    ctx.generated_rows = cache = RowPictures(tmp_path)
    s = ctx.new_session()
    first = row_pictures(ctx, s, [1, 2, 1])
    assert [p.size for p in first] == [(128, 128)] * 3 and cache.generated == 2
    assert pixels(first[0]).float().std() > 0  # a generation, not a grey tile
    out = ctx.pipeline(s).generate(indices=[2], seeds=[0])  # the picture is the row's generation from seed 0
    assert torch.equal(pixels(first[1])[::16, ::16], out.images[0])
    again = row_items(ctx, ctx.new_session(), [2, 1])  # another session: the same rows, nothing generated
    assert cache.generated == 2 and [c for _, c in again] == ["row 2", "row 1"]
    assert torch.equal(pixels(again[1][0]), pixels(first[0]))
    # a row replaced in a session's copy is another snippet: its own picture, the original's stays for the others
    edited = ctx.new_session()
    ctx.private_bank(edited).replace(1, -ctx.bank(edited).column("rows")[1][None])
    (changed,) = row_pictures(ctx, edited, [1])
    assert cache.generated == 3 and not torch.equal(pixels(changed), pixels(first[0]))
    row_pictures(ctx, s, [1])
    assert cache.generated == 3


def test_a_row_that_cannot_be_generated_is_a_grey_tile():
    rows = tiny_bank().column("rows")[:].clone()
    rows[3] = 0  # an all-zero row: the model would get no direction, the bank refuses to hand it out
    ctx = app_on(MemoryBank(rows)).gmem_context
    s = ctx.new_session()
    zero, fine = row_pictures(ctx, s, [3, 4])
    assert pixels(zero).unique().tolist() == [200] and pixels(fine).float().std() > 0


def test_swap_shows_the_nearest_rows_as_pictures(demo, ctx, red):
    items, seed, near = handler(demo, "swap_generate")(ctx.new_session(), red, 2, 3, False, 1)
    assert len(near) == swap_tab.NEAREST == 3  # they were a line of text: "row 12 · red (cos 0.93), ..."
    rows = [int(c.split(" · ")[0].removeprefix("row ")) for _, c in near]
    assert all(" · cos " in c for _, c in near)
    thumbs = tiny_bank().column("thumbnails")
    for (image, _), r in zip(near, rows):
        assert torch.equal(pixels(image)[::16, ::16], thumbs[r])
    assert isinstance(block(demo, "swap-nearest"), gr.Gallery)


def test_an_added_row_has_no_empty_original_gallery(demo, ctx, red):
    s = ctx.new_session()
    s, added, _ = handler(demo, "swap_add")(s, red)
    before, after = handler(demo, "swap_compare")(s, added, 1)
    assert before == [] and len(after) == 4
    gallery = block(demo, "swap-before")
    (step,) = [f for f in follow_ups(demo, "swap_compare") if gallery in f.outputs]
    note, shown = step.fn(s, added)
    assert shown["visible"] is False and "added in this session" in note["value"]
    before, after = handler(demo, "swap_compare")(s, 3, 1)  # a row the original bank has: shown again
    assert len(before) == 4 and step.fn(s, 3)[1]["visible"] is True


def test_the_swap_note_takes_no_room_until_it_has_a_line(demo):
    note = block(demo, "swap-note")
    assert note.visible is False  # an empty Markdown above the galleries left a blank gap
    assert swap_tab.shown("") == gr.update(value="", visible=False)
    assert swap_tab.shown("**row 3**")["visible"] is True


def test_a_download_is_saved_by_the_same_click(demo):
    """Download used to show a file box whose link had to be clicked as well: the click now ends by saving it."""
    steps = follow_ups(demo, "swap_download")
    assert steps[-1].js == swap_tab.SAVE_FILE_JS and [b.elem_id for b in steps[-1].inputs] == ["swap-file"]


@pytest.mark.parametrize("k, per_line", [(2, 2), (5, 5), (6, 6), (8, 4), (12, 6), (13, 5), (48, 6)])
def test_strip_frames_are_at_least_128_px_in_even_lines(k, per_line):
    frames = torch.randint(0, 255, (k, 8, 8, 3), dtype=torch.uint8)
    strip = interpolate_tab.strip_image(frames)
    scale = 16  # 8 px frames enlarged to 128
    lines = -(-k // per_line)
    assert strip.size == ((per_line * 10 + 2) * scale, (lines * 10 + 2) * scale)  # image_grid's 2 px padding
    assert torch.equal(pixels(strip)[2 * scale:10 * scale:scale, 2 * scale:10 * scale:scale], frames[0])


def test_interpolate_shows_rows_a_and_b_as_pictures(demo, ctx):
    a, b = block(demo, "interp-picture-a"), block(demo, "interp-picture-b")
    assert a.value is not None and b.value is not None  # the opening rows, from the thumbnails
    row_a, row_b = interpolate_tab.default_endpoints(tiny_bank())
    thumbs = tiny_bank().column("thumbnails")
    picture = interpolate_tab.endpoint_picture(ctx, ctx.new_session(), row_b)
    assert picture.size == (128, 128) and torch.equal(pixels(picture)[::16, ::16], thumbs[row_b])
    assert interpolate_tab.endpoint_picture(ctx, ctx.new_session(), ROWS) is None  # not a row: no picture


def test_generate_shows_the_source_rows(demo, ctx):
    s = ctx.new_session()
    *_, (items, seed, details) = handler(demo, "generate")(s, "group", 0, GROUPS[1], None, 6, 7, False, 1, "euler",
                                                             1.0)
    update = generate_tab.source_rows(ctx, s, details)
    rows = list(dict.fromkeys(details["rows"]))
    assert update["visible"] is True and [c for _, c in update["value"]] == [f"row {r}" for r in rows]
    thumbs = tiny_bank().column("thumbnails")
    assert torch.equal(pixels(update["value"][0][0])[::16, ::16], thumbs[rows[0]])
    *_, (_, _, upload_details) = handler(demo, "generate")(s, "bank row", 2, None, None, 1, 7, False, 1, "euler", 1.0)
    assert generate_tab.source_rows(ctx, s, upload_details)["value"][0][1] == "row 2"
    assert generate_tab.source_rows(ctx, s, {"status": "stopped at step 1/4", "rows": [1]})["visible"] is False


def test_a_bank_of_equal_frequencies_offers_no_colouring_by_frequency(demo):
    assert bank_tab.colour_choices(tiny_bank()) == {"choices": ["group", "frequency", "cluster"], "info": ""}
    uniform = tiny_bank()
    uniform.freq = torch.ones(ROWS, dtype=torch.float64)
    found = bank_tab.colour_choices(uniform)
    assert found["choices"] == ["group", "cluster"] and "all rows have frequency 1" in found["info"]
    assert bank_tab.colour_choices(MemoryBank(uniform.column("rows")[:]))["choices"] == ["group", "cluster"]
    app = app_on(uniform)
    radio = block(app, "bank-colour")
    assert [c[0] for c in radio.choices] == ["group", "cluster"] and "frequency 1" in radio.info
    assert [c[0] for c in block(demo, "bank-colour").choices] == ["group", "frequency", "cluster"]
    # a row's details say it is drawn uniformly, not "frequency 1 (drawn with probability 2.50e-02)"
    ctx = app.gmem_context
    _, text, _, _, _ = bank_tab.row_details(ctx, ctx.new_session(), 4)
    assert "drawn uniformly" in text and "probability" not in text


def test_the_colour_radio_follows_the_sessions_bank(demo, ctx):
    s = ctx.new_session()
    update = bank_tab.colour_radio(ctx, s, "frequency")
    assert update["choices"] == ["group", "frequency", "cluster"] and update["value"] == "frequency"
    ctx.private_bank(s).freq = torch.ones(ROWS, dtype=torch.float64)
    update = bank_tab.colour_radio(ctx, s, "frequency")
    assert update["choices"] == ["group", "cluster"] and update["value"] == "group"
