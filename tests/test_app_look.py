"""What the Generate tab and the page tell a visitor (issue 22): one seed rule on every tab, a note saying what the
model does (read from its checkpoint), a "mix two rows" source, uploads checked on arrival (a large photo shrunk, a
corrupt file refused), a failed run that clears the last run's results, progress off the gallery, and app.py's
start-up lines naming its own --share flag. What the browser shows of these: tests/test_browser.py."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image, ImageDraw

from app_tiny import ROWS, tiny_demo
from conftest import free_port, upload_folder
from gmem_explore import GMemPipeline
from gmem_explore.app import generate_tab as ui_generate
from gmem_explore.app.files import UPLOAD_SIDE, checked_upload, upload_to_image
from gmem_explore.app.server import model_note
from gmem_explore.images import MAX_PIXELS, ImageError, load_rgb

pytest_plugins = ["app_tiny"]  # the demo, ctx and pictures fixtures
ROOT = Path(__file__).resolve().parents[1]
RANDOM, ROW, GROUP, UPLOAD, MIX = ui_generate.SOURCES


@pytest.fixture(scope="module")
def photo_45mp() -> str:
    """A 45 MP JPEG (8192 x 5464, a phone camera's size) in gradio's upload folder: about a megabyte, since it is
    flat colour, but 45M pixels when decoded in full."""
    path = upload_folder("photo") / "photo.jpg"
    img = Image.new("RGB", (8192, 5464), (40, 120, 200))
    ImageDraw.Draw(img).ellipse((2000, 1000, 6000, 5000), fill=(240, 200, 40))
    img.save(path, quality=80)
    return str(path)


def blocks(demo, cls=None, **attrs):
    return [b for b in demo.blocks.values() if (cls is None or isinstance(b, cls))
            and all(getattr(b, k, None) == v for k, v in attrs.items())]


def final(gen):
    *_, last = list(gen)
    return last


# ---- one seed rule ------------------------------------------------------------------------------------------
def test_random_seed_starts_ticked_on_every_tab(demo):
    """Generate started with "Random seed" ticked, Swap and Interpolate unticked: one rule now, ticked everywhere
    (typing a seed unticks it: test_app_downloads.test_typing_a_seed_unticks_random_seed)."""
    boxes = blocks(demo, gr.Checkbox, label="Random seed")
    assert len(boxes) == 3 and [b.value for b in boxes] == [True, True, True]


# ---- what the model does ----------------------------------------------------------------------------------
def test_the_note_says_what_the_model_does_from_its_checkpoint(demo):
    """emoji-32 reproduces its rows (16 images of one row are one emoji, whatever the seed): the page says so, from
    the checkpoint's own config, and says where new images come from; a checkpoint without that text gets a line
    made from its size and bank."""
    emoji = GMemPipeline.from_pretrained("emoji-32")
    note = model_note(emoji, "emoji-32")
    assert note.startswith("**What emoji-32 does.** A 32 px memory of 1,697 emojis that reproduces its rows")
    assert "mixing two rows" in note and "uploaded images" in note
    tiny = demo.gmem_context.store.get()
    assert model_note(tiny, "tiny") == ("**What tiny does.** 8 px images drawn from a memory bank of 40 snippets; rows "
                                        "give images like their own source images, mixes and uploads give new ones.")
    (shown,) = blocks(demo, gr.Markdown, elem_id="model-note")
    assert shown.value == model_note(tiny, "tiny")
    # a model loaded in the Model panel brings its own note
    (show,) = [f for f in demo.fns.values() if f.name == "show_note"]
    assert show.outputs == [shown] and show.fn(demo.gmem_context.new_session()) == model_note(tiny, "tiny")


# ---- mix two rows -----------------------------------------------------------------------------------------
def test_mix_two_rows_generates_from_the_mixed_snippet(ctx):
    s = ctx.new_session()
    items, seed, details = final(ui_generate.generate(ctx, s, MIX, 3, None, None, 2, 7, False, 2, "euler", 1.0,
                                                      row_b=11, weight=0.25))
    assert [c for _, c in items] == ["seed 7 · mix 3+11", "seed 8 · mix 3+11"]
    assert details["source"] == "mix of rows 3 and 11, weight 0.25 on row 11 (slerp)" and details["rows"] == [None] * 2
    pipe = ctx.pipeline(s)
    want = pipe.generate(snippets=pipe.mix(3, 11, 0.25, "slerp").repeat(2, 1), seeds=[7, 8], method="euler", steps=2)
    assert [im.tobytes() for im, _ in items] == [ui_generate.upscale(im).tobytes() for im in want.images]
    assert "all from one mix of rows 3 and 11" in ui_generate.done_status(7, details)
    # its own inputs are checked as every other box's
    for row_b, weight, message in ((ROWS, 0.5, f"second row must be between 0 and {ROWS - 1}"),
                                   (1, 1.5, "weight must be between 0.0 and 1.0")):
        with pytest.raises(ValueError, match=message):
            final(ui_generate.generate(ctx, s, MIX, 0, None, None, 1, 0, False, 1, "euler", 1.0, row_b=row_b,
                                       weight=weight))


def test_two_random_rows_are_two_rows_of_the_bank():
    pairs = {ui_generate.random_pair(5) for _ in range(200)}
    assert all(a != b and 0 <= a < 5 and 0 <= b < 5 for a, b in pairs) and len(pairs) > 10
    assert ui_generate.random_pair(1) == (0, 0)


# ---- runs: progress off the gallery, failures clear -----------------------------------------------------------
def test_progress_is_drawn_on_the_status_line_not_on_the_gallery(demo):
    """gradio's progress overlay covered the gallery for the whole run (and drew a second bar over Details), so
    the live previews under it could not be seen."""
    (run,) = [f for f in demo.fns.values() if f.api_name == "generate"]
    (status,) = blocks(demo, gr.Markdown, elem_id="generate-status")
    assert run.show_progress_on == [status] and status not in run.outputs


def test_a_failed_run_clears_the_last_runs_results(demo):
    """A run that fails (no upload, a bad number) left the previous run's images, details and summary under gradio's
    "Error" badge, where they read as this run's."""
    (run,) = [f for f in demo.fns.values() if f.api_name == "generate"]
    (clear,) = [f for f in demo.fns.values() if f.trigger_after == run._id and f.trigger_only_on_failure]
    gallery, details, status = clear.outputs
    assert (gallery.elem_id, isinstance(details, gr.JSON), status.elem_id) == ("generate-gallery", True,
                                                                             "generate-status")
    assert clear.fn() == ([], None, ui_generate.FAILED)


# ---- uploads checked on arrival -------------------------------------------------------------------------------
def test_a_large_photo_is_shrunk_on_upload_and_decoded_small(photo_45mp, capsys):
    """A 45 MP photo was refused only when Generate decoded it ("Resize it first"). It is shrunk on arrival now,
    and a JPEG is decoded at a reduced scale: the limit on decoded pixels still holds."""
    upload = {"path": photo_45mp, "orig_name": "IMG_0001.jpg"}
    out = checked_upload(upload)
    assert "The image was shrunk to 1024x683 pixels" in capsys.readouterr().out  # gr.Info outside a request prints
    with Image.open(out) as img:
        assert img.size == (UPLOAD_SIDE, 683) and Path(out).name == "IMG_0001-1024x683.png"
    assert tuple(upload_to_image(upload).shape) == (683, UPLOAD_SIDE, 3)  # a run reads the original the same way
    assert load_rgb(photo_45mp, max_side=2048).shape[1] == 2048  # drafted at 1/2 (4096 x 2732), then shrunk
    # the pixel limit is an argument, on the pixels decoded: a 45 MP file decoded in full is over the default
    with pytest.raises(ImageError, match=f"at most {MAX_PIXELS:,} pixels"):
        load_rgb(photo_45mp)
    with pytest.raises(ImageError, match="2048x1366 pixels; at most 1,000,000 pixels"):  # drafted at 1/4
        load_rgb(photo_45mp, max_pixels=1_000_000, max_side=1024)
    assert Image.MAX_IMAGE_PIXELS != MAX_PIXELS  # PIL's process-wide setting is left as it is


def test_an_upload_that_is_not_an_image_is_taken_out_of_the_box(pictures):
    """A corrupt file named .png showed as a broken picture until a run failed on it."""
    with pytest.warns(UserWarning, match="The upload 'broken.png' is not an image PIL can read.*removed"):
        assert checked_upload({"path": pictures["broken"], "orig_name": "broken.png"}) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a small, readable image is left as it is, silently
        assert checked_upload({"path": pictures["red"], "orig_name": "red.png"}) == gr.update()
        assert checked_upload(None) == gr.update()


def test_every_upload_box_checks_its_uploads(demo):
    boxes = [b for b in blocks(demo, gr.Image) if b.interactive is not False]  # not the strip, GIF, thumbnail
    checks = [f for f in demo.fns.values() if f.fn is checked_upload]
    assert len(boxes) >= 4  # Generate, Swap, Interpolate's A and B
    assert sorted(f.targets[0] for f in checks) == sorted((b._id, "upload") for b in boxes)
    assert all(f.outputs == f.inputs and not f.preprocess for f in checks)


# ---- app.py ---------------------------------------------------------------------------------------------------
def test_app_py_names_its_share_flag(monkeypatch, capsys):
    """gradio prints "To create a public link, set `share=True` in `launch()`": app.py's user passes --share."""
    sys.path.insert(0, str(ROOT))
    import app
    import gmem_explore.app.server as server

    demo = tiny_demo()
    monkeypatch.setattr(server, "build_app", lambda **kwargs: demo)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)  # return instead of serving
    try:
        app.main(["--port", str(free_port())])
    finally:
        demo.close()
    out = capsys.readouterr().out
    assert "Running on local URL" in out and "To create a public link, run python app.py --share" in out
    assert "share=True" not in out and sys.stdout is not None and not isinstance(sys.stdout, app.FlagHints)



# ---- the README's words match the app -------------------------------------------------------------------------
README_WORDS = {"random (by frequency)": "at random", "bank row": "by bank row", "group": "by group",
                "uploaded image": "from an uploaded image", "mix two rows": "mixed from two bank rows"}


def test_the_readme_names_what_the_generate_tab_offers():
    """README promised what a visitor could not do (live previews they never saw, choosing on the map): its app
    bullets name each snippet source the Generate tab offers, and how the Bank's map selects. Live previews
    are shown by tests/test_browser.py::test_live_previews_are_visible_mid_run."""
    readme = (ROOT / "README.md").read_text()
    bullets = readme.split("## The app", 1)[1].split("\n## ", 1)[0]
    generate = bullets.split("- **Generate**", 1)[1].split("\n- **", 1)[0].replace("\n  ", " ")
    bank = bullets.split("- **Bank**", 1)[1].split("\n- **", 1)[0].replace("\n  ", " ")
    assert [README_WORDS[s] in generate for s in ui_generate.SOURCES] == [True] * len(ui_generate.SOURCES)
    # the Bank's map is chosen on: a click picks a row, a box or a lasso selects (tests/test_browser.py does both)
    assert "live" in generate and all(word in bank for word in ("click", "box", "lasso")) and "slider" not in bank
