"""What a visitor takes away from the app: images, strips, GIFs and banks download under names that say what makes
them again (gradio named every gallery image 'image.png'), a shown bank download goes once an edit makes it out of
date, and a typed seed is the seed used."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from app_tiny import follow_ups
from gmem_explore.app import swap_tab as ui_swap
from gmem_explore.app.files import file_stem, png_files

pytest_plugins = ["app_tiny"]  # the demo, ctx and red fixtures


def handler(demo, api_name: str):
    (fn,) = [f for f in demo.fns.values() if f.api_name == api_name]
    return fn.fn


def names(items) -> list[str]:
    return [Path(path).name for path, _ in items]


def test_gallery_images_download_under_their_seed_and_row(demo, ctx, red):
    """Each gallery's images are files named from their captions (gradio's own names were image.png, and its
    Download All zip held image.png, image-2.png, ...): the name alone makes the image again."""
    s = ctx.new_session()
    *_, (items, seed, details) = handler(demo, "generate")(s, "bank row", 7, None, None, 2, 41, False, 1, "euler",
                                                             1.0)
    assert names(items) == ["gmem-seed41-row7.png", "gmem-seed42-row7.png"]
    assert [c for _, c in items] == ["seed 41 · row 7", "seed 42 · row 7"]  # the captions stay
    with Image.open(items[0][0]) as image:
        assert image.size == (128, 128)  # the displayed image itself
    *_, (items, _, _) = handler(demo, "generate")(s, "uploaded image", 0, None, red, 1, 5, False, 1, "euler", 1.0)
    assert names(items) == ["gmem-seed5-upload.png"]
    items, _, _ = handler(demo, "swap_generate")(s, red, 2, 3, False, 1)
    assert names(items) == ["gmem-upload-seed3.png", "gmem-upload-seed4.png"]
    before, after = handler(demo, "swap_compare")(s, "12", 1)
    assert names(before)[0] == "gmem-row12-original-seed0.png" and names(after)[3] == "gmem-row12-edited-seed3.png"
    assert names(handler(demo, "bank_row_generate")(s, 4))[1] == "gmem-row4-seed1.png"


def test_an_interpolation_downloads_under_its_ends_mix_and_seed(demo, ctx, red):
    *_, (frames, strip, gif, seed, details) = handler(demo, "interpolate")(
        ctx.new_session(), "bank row", 3, None, "uploaded image", 0, red, "lerp", 3, 9, False, 1, "euler")
    stem = "gmem-row3-to-upload-lerp-seed9"
    assert names(frames) == [f"{stem}-w0.00.png", f"{stem}-w0.50.png", f"{stem}-w1.00.png"]
    # they were image.png and interpolation.gif
    assert Path(strip).name == f"{stem}-strip.png" and Path(gif).name == f"{stem}.gif"


def test_a_bank_download_is_named_for_its_model(ctx, red):
    s = ctx.new_session()
    assert Path(ui_swap.download(ctx, s)).name == "tiny-bank.safetensors"
    s, _, _ = ui_swap.replace_row(ctx, s, red, 1)
    assert Path(ui_swap.download(ctx, s)).name == "tiny-bank-edited.safetensors"


def test_file_names_come_only_from_safe_characters(tmp_path):
    """Captions and names become file names: no separator or dot-dot may survive to make a path of them."""
    assert file_stem("seed 284400 · row 480") == "seed284400-row480"
    assert file_stem("../../etc/passwd · x") == "etcpasswd-x" and file_stem(" · ") == "image"
    assert file_stem("w 0.25") == "w0.25"
    image = Image.new("RGB", (2, 2))
    files = png_files([(image, "seed 1"), (image, "seed 1")], "gmem")
    assert names(files) == ["gmem-seed1.png", "gmem-seed1-2.png"]  # equal captions do not overwrite each other
    assert png_files([], "gmem") == []


@pytest.mark.parametrize("edit", ["swap_replace", "swap_add", "swap_reset"])
def test_an_edit_takes_away_the_download_it_made_out_of_date(demo, edit):
    """Download, then Replace: the file box still offered the bank from before the edit, under the label
    "Edited bank". An edit (and Reset) now hides it until Download is pressed again."""
    (box,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "swap-file"]
    hides = [f for f in follow_ups(demo, edit) if box in f.outputs]
    assert len(hides) == 1 and hides[0].trigger_only_on_success
    assert hides[0].fn() == gr.update(value=None, visible=False)
    assert box.label == "Bank file"  # it may hold the unedited bank too


@pytest.mark.parametrize("tab", ["generate", "swap", "interp"])
def test_typing_a_seed_unticks_random_seed(demo, tab):
    """On the Generate tab "Random seed" is ticked: a seed typed into the box was ignored for a random one. Typing
    (the box's input event, not the copy of a run's seed into it) now unticks the box."""
    (seed,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == f"{tab}-seed"]
    (untick,) = [f for f in demo.fns.values() if (seed._id, "input") in [tuple(t) for t in f.targets]]
    (box,) = untick.outputs
    assert isinstance(box, gr.Checkbox) and box.label == "Random seed" and untick.fn() is False
    assert not [f for f in demo.fns.values() if (seed._id, "change") in [tuple(t) for t in f.targets]]

