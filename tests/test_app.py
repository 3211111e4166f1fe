"""The Gradio app on a tiny model: handlers called directly, then every endpoint through gradio_client against a
server on a free local port (two clients = two sessions that must not see each other's edited bank)."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pytest
import torch
from PIL import Image

from app_tiny import ROWS, tiny_pipeline
from gmem_explore import GMemPipeline, MemoryBank
from gmem_explore.bank import search as bank_search
from gmem_explore.checkpoints.folder import Checkpoint, save_checkpoint
from gmem_explore.app.server import load_checkpoint
from gmem_explore.app.common import RANDOM_SEEDS, UserError, friendly, spaces_gpu
from gmem_explore.app.files import upload_to_image
from gmem_explore.app import mapping
from gmem_explore.app import bank_tab as ui_bank, generate_tab as ui_generate, interpolate_tab as ui_interpolate, swap_tab as ui_swap

from conftest import free_port, upload_folder

pytest_plugins = ["app_tiny"]  # the demo, ctx and pictures fixtures
ROOT = Path(__file__).resolve().parents[1]
RANDOM, ROW, GROUP, UPLOAD, MIX = ui_generate.SOURCES


def final(gen):
    *previews, last = list(gen)
    return previews, last


# ---- direct calls -------------------------------------------------------------------------------------------
def test_generate_sources_captions_and_seeds(ctx, pictures):
    s = ctx.new_session()
    previews, (items, seed, details) = final(ui_generate.generate(ctx, s, RANDOM, 0, None, None, 3, 11, False, 3,
                                                                    "euler", 1.0))
    assert seed == 11 and details["seeds"] == [11, 12, 13]
    # short captions with the seed first (thumbnails cut long ones); the groups are in the details
    assert [c for _, c in items] == [f"seed {sd} · row {r}" for r, sd in zip(details["rows"], details["seeds"])]
    assert details["groups"] == [ctx.bank(s).label_of(r) for r in details["rows"]]
    assert items[0][0].size == (128, 128)  # 8 px upscaled (nearest) for display
    assert any(len(p[0]) for p in previews[1:]), "no live preview was yielded"
    _, (items, _, details) = final(ui_generate.generate(ctx, s, ROW, 7, None, None, 2, 0, False, 2, "sde", 1.0))
    assert details["rows"] == [7, 7] and items[0][1] == "seed 0 · row 7" and details["groups"] == ["green"] * 2
    _, (_, _, details) = final(ui_generate.generate(ctx, s, GROUP, 0, "blue", None, 4, 3, False, 2, "heun", 1.0))
    assert all(r % 3 == 2 for r in details["rows"])  # blue rows only
    _, (items, _, details) = final(ui_generate.generate(ctx, s, UPLOAD, 0, None, pictures["red"], 2, 5, False, 2,
                                                          "euler", 2.0))
    assert details["rows"] == [None, None] and items[1][1] == "seed 6 · upload" and "groups" not in details
    assert ui_generate.done_status(5, details).startswith("**2 images from seed 5** (image i uses seed + i) · 2 euler")
    assert ui_generate.done_status(5, {"status": "step 1/2"}) == ""  # only a finished run is summed up


def test_generate_is_reproducible_and_randomises(ctx):
    s = ctx.new_session()
    run = lambda: final(ui_generate.generate(ctx, s, RANDOM, 0, None, None, 2, 99, False, 3, "sde", 1.0))[1]  # noqa: E731
    a, b = run(), run()
    assert [im.tobytes() for im, _ in a[0]] == [im.tobytes() for im, _ in b[0]]
    seeds = {final(ui_generate.generate(ctx, s, RANDOM, 0, None, None, 1, 0, True, 1, "euler", 1.0))[1][1]
             for _ in range(3)}
    assert len(seeds) > 1 and all(0 <= x < RANDOM_SEEDS for x in seeds)  # short enough for a caption


@pytest.mark.parametrize("args, message", [
    ((RANDOM, 0, None, None, 10_000, 0, False, 2, "euler", 1.0), "number of images must be between 1 and 8"),
    ((RANDOM, 0, None, None, 2, 0, False, float("nan"), "euler", 1.0), "steps must be a finite number"),
    ((RANDOM, 0, None, None, 2, 0, False, 2, "euler", float("nan")), "guidance must be between"),
    ((RANDOM, 0, None, None, 2, -5, False, 2, "euler", 1.0), "seed must be between"),
    ((RANDOM, 0, None, None, 2, 0, False, 2, "ddim", 1.0), "Unknown sampler"),
    ((ROW, ROWS, None, None, 2, 0, False, 2, "euler", 1.0), f"row must be between 0 and {ROWS - 1}"),
    ((ROW, 1.5, None, None, 2, 0, False, 2, "euler", 1.0), "row must be a whole number"),
    ((GROUP, 0, "purple", None, 2, 0, False, 2, "euler", 1.0), "Unknown group 'purple'"),
    ((UPLOAD, 0, None, None, 2, 0, False, 2, "euler", 1.0), "Upload an image first"),
])
def test_generate_bad_input_is_a_message(ctx, args, message):
    wrapped = friendly(ui_generate.generate)
    with pytest.raises(gr.Error, match=message.replace("(", r"\(")):
        list(wrapped(ctx, ctx.new_session(), *args))


def test_odd_uploads(ctx, pictures):
    s = ctx.new_session()
    with pytest.raises(gr.Error, match="not an image"):
        friendly(ui_swap.generate_from_upload)(ctx, s, pictures["broken"], 1, 0, False, 1)
    items, _, _ = ui_swap.generate_from_upload(ctx, s, pictures["transparent"], 1, 0, False, 1)  # alpha over white
    assert len(items) == 1


def test_upload_messages_name_the_uploaded_file(ctx, tmp_path):
    """The server's temporary path means nothing to the person: a message names the file they uploaded, and an
    empty file is called empty."""
    served = upload_folder("3f9c0d") / "holiday.png"  # how gradio stores an upload: /tmp/gradio/<hash>/<name>
    served.write_text("not an image")
    with pytest.raises(UserError) as caught:
        upload_to_image({"path": str(served), "orig_name": "holiday.png"})
    assert str(caught.value).startswith("The upload 'holiday.png' is not an image PIL can read")
    assert str(served.parent) not in str(caught.value)
    served.write_bytes(b"")
    with pytest.raises(UserError, match=r"'holiday.png' .*it is empty \(0 bytes\)"):
        upload_to_image({"path": str(served), "orig_name": "holiday.png"})
    with pytest.raises(UserError, match="Upload an image first"):
        upload_to_image({"path": None, "orig_name": None})


def test_uploads_are_read_only_from_the_upload_folder(ctx, tmp_path, pictures):
    """A request can name any path (a bare {"path": ...} or a string skips gradio's own check): the app reads none
    outside gradio's upload folder, and says the same for files that exist and files that do not."""
    outside = tmp_path / "private.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside)
    messages = set()
    for payload in ({"path": str(outside)}, str(outside), {"path": str(tmp_path / "missing.png")},
                    {"path": pictures["red"] + "/../../../" + str(outside)}):
        with pytest.raises(UserError, match="is not a file uploaded to this app") as caught:
            upload_to_image(payload)
        messages.add(str(caught.value).replace("missing", "private"))
    assert len(messages) <= 2  # no hint of which paths exist: the same words, only the name differs
    assert upload_to_image({"path": pictures["red"]}).shape == (20, 24, 3)
    with pytest.raises(UserError, match="upload it as a file"):
        upload_to_image("data:image/png;base64," + "A" * 14_000_001)


def run_event(demo, state, block_fn, inputs):
    """One event as the page sends it (raw payloads, this session's component state), through gradio itself."""
    import asyncio

    return asyncio.run(demo.process_api(block_fn, inputs, state=state, explicit_call=True))


def event_named(demo, name: str):
    (fn,) = [f for f in demo.fns.values() if name in (f.api_name, f.name)]
    return fn


@pytest.mark.parametrize("tab", ["generate", "interpolate"])
def test_an_upload_box_shown_by_a_radio_keeps_the_friendly_message(demo, tmp_path, tab):
    """Showing an upload box (gr.update(visible=True)) makes gradio re-create the component in the session's
    state; an unreadable upload must still be a message naming the file, not 'Could not preprocess input
    component ... UnidentifiedImageError'."""
    from gradio.state_holder import SessionState

    bad = tmp_path / "bad.png"
    bad.write_text("a text file renamed .png")
    payload = {"path": str(bad), "orig_name": "bad.png", "meta": {"_type": "gradio.FileData"}}
    state = SessionState(demo)
    if tab == "generate":
        show, run = event_named(demo, "show_inputs"), event_named(demo, "generate")
        run_event(demo, state, show, [None, UPLOAD])
        upload = show.outputs[-1]
        inputs = [None, UPLOAD, 0, None, payload, 2, 0, False, 2, "euler", 1.0, 1, 0.5]
    else:
        show = [f for f in demo.fns.values() if f.name == "show"][0]  # "A from" (the first endpoint radio)
        run = event_named(demo, "interpolate")
        run_event(demo, state, show, [None, "uploaded image"])
        upload = show.outputs[-1]
        inputs = [None, "uploaded image", 0, payload, "bank row", 1, None, "slerp", 3, 0, False, 2, "euler"]
    assert state[upload._id] is not upload and state[upload._id].visible  # the box was re-created, shown
    with pytest.raises(gr.Error) as caught:
        run_event(demo, state, run, inputs)
    assert caught.value.message.startswith("The upload 'bad.png' is not an image PIL can read")
    assert str(tmp_path) not in caught.value.message


def test_model_events_never_write_the_seed_box(demo):
    """A failed event marks each of its outputs with a red 'Error' badge; the seed box must stay usable, so the
    seed used goes to a hidden number and is copied into the box by a follow-up step that runs only on success."""
    for name in ("generate", "interpolate", "swap_generate"):
        (fn,) = [f for f in demo.fns.values() if f.api_name == name]
        numbers = [o for o in fn.outputs if isinstance(o, gr.Number)]
        assert len(numbers) == 1 and not numbers[0].visible, name
        copies = [f for f in demo.fns.values() if numbers[0] in f.inputs and f.trigger_after == fn._id]
        assert copies and all(f.trigger_only_on_success for f in copies), name
        assert any(isinstance(o, gr.Number) and o.visible and o.label.startswith("Seed") for o in copies[0].outputs)


def stop_handler(demo, tab: str):
    """The Stop button's own handler (queue=False): what a click runs."""
    (fn,) = [f for f in demo.fns.values()
             if any(getattr(demo.blocks.get(block), "elem_id", None) == f"{tab}-stop" for block, _ in f.targets)]
    return fn.fn


@pytest.mark.parametrize("tab", ["generate", "interp"])
def test_stop_ends_the_run_after_the_step_under_way_and_says_which(demo, ctx, monkeypatch, tab):
    """Stop asks the run to stop; the run stops after the step under way and ends with that step's images, whose
    captions say the same step as the message (a cancelled handler could not, and the message came from an older
    preview). The sampler is not called again, and a later run is not stopped by the old request."""
    s = ctx.new_session()
    model = ctx.store.get().model
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, f=model.forward: calls.append(1) or f(*a))
    run = (lambda: ui_generate.generate(ctx, s, RANDOM, 0, None, None, 2, 5, False, 40, "euler", 1.0)) \
        if tab == "generate" else (lambda: ui_interpolate.interpolate(
            ctx, s, "bank row", 0, None, "bank row", 1, None, "slerp", 3, 5, False, 40, "euler"))
    gen = run()
    next(gen)  # "starting": nothing has run yet
    next(gen)  # the first preview: one step done
    assert "Stopping" in stop_handler(demo, tab)(s)  # the click, while the run is under way
    *_, last = list(gen)
    details = last[-1]
    assert details["status"] == "stopped at step 2/40" and len(calls) == 2  # the step under way, and no more
    assert all(c.endswith("2/40") for _, c in last[0])  # the captions say the step the message says
    status = ui_generate.done_status(5, details) if tab == "generate" else ui_interpolate.done_status(details)
    assert status.startswith("**Stopped at step 2/40** (seed 5)")
    assert s.running == set() and s.stop_requested == set()
    assert stop_handler(demo, tab)(s) == gr.update()  # nothing under way: nothing to say
    calls.clear()
    s.stop_requested.clear()  # what a click on the run button does first
    assert final(run())[1][-1]["status"] == "done" and len(calls) == 40


def test_generate_help_and_row_range_follow_the_choice(demo, ctx):
    from gradio.state_holder import SessionState

    assert len(set(ui_generate.SOURCE_HELP.values())) == len(ui_generate.SOURCES)
    show = event_named(demo, "show_inputs")
    state = SessionState(demo)
    info, row, row_b, weight, pick, group, upload = run_event(demo, state, show, [None, ROW])["data"]
    assert info["info"] == ui_generate.SOURCE_HELP[ROW] and row["visible"] and not upload["visible"]
    assert row["label"] == f"Bank row (0–{ROWS - 1})" and row["maximum"] == ROWS - 1
    info, row, row_b, weight, pick, group, upload = run_event(demo, state, show, [None, GROUP])["data"]
    assert info["info"] == ui_generate.SOURCE_HELP[GROUP] and not row["visible"] and group["visible"]
    assert not any(box["visible"] for box in (row_b, weight, pick))
    # a mix shows both row boxes, each with the bank's range, the weight and the pair picker
    info, row, row_b, weight, pick, group, upload = run_event(demo, state, show, [None, MIX])["data"]
    assert info["info"] == ui_generate.SOURCE_HELP[MIX] and all(b["visible"] for b in (row, row_b, weight, pick))
    assert row_b["label"] == f"Second row (0–{ROWS - 1})" and not group["visible"] and not upload["visible"]


def test_generate_and_swap_name_their_shared_settings_alike(demo):
    """Swap said "Images" and "Seed" where Generate says "Number of images" and "Seed (image i uses seed + i)",
    though both number their images' seeds the same way."""
    (generate,) = [f for f in demo.fns.values() if f.api_name == "generate"]
    (swap,) = [f for f in demo.fns.values() if f.api_name == "swap_generate"]
    labels = lambda fn: {b.label for b in fn.inputs if isinstance(b, (gr.Slider, gr.Number))}  # noqa: E731
    assert {"Number of images", "Seed (image i uses seed + i)"} <= labels(generate) & labels(swap)
    # the compare galleries take seeds 0-3 whatever that box says (as the Bank tab's "Generations (seeds 0-3)")
    (compare,) = [f for f in demo.fns.values() if f.api_name == "swap_compare"]
    assert all(g.label.endswith(" (seeds 0-3)") for g in compare.outputs) and len(compare.outputs) == 2


def test_model_panel_counts_the_parameters_that_generate():
    """The panel counted the REPA projector, which only the training loss uses: emoji-32 read 4.7M parameters where
    the README says 4.3M in use. Counts below 0.1M are written out (a tiny model read "0.0M parameters")."""
    from gmem_explore.app.server import describe

    pipe = tiny_pipeline()
    projector = sum(p.numel() for n, p in pipe.model.named_parameters() if n.startswith("projectors."))
    used = sum(p.numel() for p in pipe.model.parameters()) - projector
    assert 0 < projector < used < 100_000  # the tiny model: both counts are written out in full
    assert f"· {used:,} parameters (+{projector:,} REPA projector, training only)" in describe(pipe, "tiny")
    assert "0.0M" not in describe(pipe, "tiny")


def test_interpolate_default_rows_differ_visibly():
    bank = tiny_pipeline().bank
    a, b = ui_interpolate.default_endpoints(bank)
    assert a == 0 and bank.label_of(a) != bank.label_of(b)
    unit = torch.nn.functional.normalize(bank.rows.float(), dim=1)
    sims = unit @ unit[0]
    other = [r for r in range(1, len(bank)) if bank.label_of(r) != bank.label_of(0)]
    assert sims[b] == max(sims[r] for r in other)  # the row most like A among the other groups
    plain = MemoryBank(bank.rows)  # no groups: the row nearest cosine 0.5 to row 0
    expected = 1 + int((sims[1:] - bank_search.SIMILAR_BUT_DIFFERENT).abs().argmin())
    assert ui_interpolate.default_endpoints(plain) == (0, expected)
    assert ui_interpolate.default_endpoints(MemoryBank(bank.rows[:1])) == (0, 0)


def test_bank_tab(ctx):
    s = ctx.new_session()
    text, fig = ui_bank.stats(ctx, s)
    assert f"{ROWS} rows" in text and "red 14, green 13, blue 13" in text and fig.axes
    fig, items, rows, summary = ui_bank.bank_map(ctx, s, "pca", "group", 0, 100, 0, 100, 3)
    assert summary.startswith(f"{ROWS} rows") and len(items) == len(rows) == ROWS
    assert rows[0] == ROWS - 1  # most frequent first
    _, items, rows, summary = ui_bank.bank_map(ctx, s, "pca", "frequency", 0, 50, 0, 100, None)
    assert 0 < len(rows) < ROWS and items[0][1] == f"row {rows[0]} · {ctx.bank(s).label_of(rows[0])}"
    with pytest.raises(UserError, match="from"):
        ui_bank.bank_map(ctx, s, "pca", "group", 60, 40, 0, 100, None)
    items, rows, number, text = ui_bank.page(ctx, s, 1)
    assert rows == list(range(ROWS)) and number == 1 and "page 1 of 1" in text
    thumb, text, neighbours, neighbour_rows, source = ui_bank.row_details(ctx, s, 4)
    assert source is None and "source" not in text  # no image folder given
    assert [f"row {r} ·" for r in neighbour_rows] == [c[:len(f"row {r} ·")] for r, (_, c) in zip(neighbour_rows, neighbours)]
    assert thumb.size == (128, 128) and text.startswith("**row 4 · green**") and len(neighbours) == ui_bank.NEIGHBOURS
    sims = [float(c.rsplit("cos ", 1)[1]) for _, c in neighbours]
    assert sims == sorted(sims, reverse=True) and not any(c.startswith("row 4 ·") for _, c in neighbours)
    assert len(ui_bank.row_generations(ctx, s, 4, 2)) == 4


def test_swap_changes_only_the_sessions_bank(ctx, pictures):
    mine, other = ctx.new_session(), ctx.new_session()
    original_rows = ctx.store.get("tiny").bank.rows.clone()
    before, after = ui_swap.compare_row(ctx, mine, 5, 2)
    assert [a.tobytes() for a, _ in after] == [b.tobytes() for b, _ in before]
    mine, row, log = ui_swap.replace_row(ctx, mine, pictures["red"], 5)
    assert row == 5 and "replaced row 5 · blue" in log
    before, after = ui_swap.compare_row(ctx, mine, 5, 2)
    assert [a.tobytes() for a, _ in after] != [b.tobytes() for b, _ in before]
    assert torch.equal(ctx.store.get("tiny").bank.rows, original_rows)  # the shared bank is untouched
    assert ctx.bank(other) is ctx.store.get("tiny").bank
    assert ctx.bank(mine).label_of(5) == ui_swap.UPLOAD_GROUP  # no longer 'blue'
    assert ui_swap.UPLOAD_GROUP not in ctx.store.get("tiny").bank.label_names  # the shared bank keeps its groups
    note = ui_swap.compare_note(ctx, mine, 5)
    assert note.startswith("**Row 5 was replaced in this session** (it was row 5 · blue)")
    assert "unchanged" in ui_swap.compare_note(ctx, mine, 6)
    mine, new_row, log = ui_swap.add_row(ctx, mine, pictures["blue"])
    assert new_row == ROWS and "added row 40" in log and ctx.bank(mine).label_of(new_row) == ui_swap.UPLOAD_GROUP
    before, after = ui_swap.compare_row(ctx, mine, new_row, 2)
    assert before == [] and len(after) == 4
    assert ui_swap.compare_note(ctx, mine, new_row).startswith("**Row 40 was added in this session**")
    assert ui_bank.stats(ctx, mine)[0].startswith(f"**{ROWS + 1} rows")
    saved = MemoryBank.load(ui_swap.download(ctx, mine))
    assert len(saved) == ROWS + 1 and not torch.equal(saved.rows[5], original_rows[5])
    assert torch.equal(saved.rows[:5], original_rows[:5])
    mine, log = ui_swap.reset(ctx, mine)
    assert mine.bank is None and "No edits" in log


def test_swap_row_box_says_the_sessions_range(demo, ctx, pictures):
    """The Swap tab's row box said only "Bank row" while Generate's and Interpolate's give the range; this one's
    range changes with this session's edits: Add grows the bank, Reset shrinks it back. It has no maximum: gradio
    refuses an input above it before any handler runs, and Add puts the new row in the box first."""
    from gradio.state_holder import SessionState

    (box,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "swap-row"]
    assert box.label == f"Bank row (0–{ROWS - 1})" and box.maximum is None
    state = SessionState(demo)
    payload = {"path": pictures["red"], "orig_name": "red.png", "meta": {"_type": "gradio.FileData"}}

    def relabel_after(event, inputs, box_value=None):
        """Run an event through gradio, then (as the page does) its follow-up steps up to the box's relabelling,
        which reads the box as the event left it (Add and Replace write the row into it)."""
        data = run_event(demo, state, event, inputs)["data"]
        value = data[1] if box in event.outputs else box_value
        step = event
        while True:
            (step,) = [f for f in demo.fns.values() if f.trigger_after == step._id]
            if step.outputs == [box]:
                return data, run_event(demo, state, step, [None, value])["data"][0]
            run_event(demo, state, step, [])

    (_, new, _), row = relabel_after(event_named(demo, "swap_add"), [None, payload])
    assert new == ROWS  # the endpoint itself returns the number, for API clients
    assert (row["label"], row["value"]) == (f"Bank row (0–{ROWS})", ROWS)
    _, row = relabel_after(event_named(demo, "swap_replace"), [None, payload, 3])
    assert (row["label"], row["value"]) == (f"Bank row (0–{ROWS})", 3)
    # Reset: the added row is gone, and a box still on it falls back to the last row
    _, row = relabel_after(event_named(demo, "swap_reset"), [None], box_value=ROWS)
    assert (row["label"], row["value"]) == (f"Bank row (0–{ROWS - 1})", ROWS - 1)
    # the tab's own select re-reads the range (a model load or another tab may have changed the bank)
    (select,) = [f for f in demo.fns.values() if f.outputs == [box] and f.targets[0][1] == "select"]
    grown, _, _ = ui_swap.add_row(ctx, ctx.new_session(), pictures["blue"])
    assert select.fn(grown, 5) == {"__type__": "update", "label": f"Bank row (0–{ROWS})", "value": 5}
    assert "value" not in ui_swap.row_box(ctx, grown, None)


def test_model_calls_without_previews_move_the_progress_bar(demo, ctx, pictures):
    """Swap's Generate and compare and the Bank's "Generate 4" showed only a timer (on gmem-v1-xl a compare is 8
    images of 250 SDE steps); they now report each sampler step to gradio's progress bar."""
    seen = []

    def progress(fraction, desc=None):
        seen.append((round(fraction, 2), desc))

    s = ctx.new_session()
    ui_swap.generate_from_upload(ctx, s, pictures["red"], 2, 0, False, 2, progress)
    assert seen == [(0.5, "sampling: step 1/2"), (1.0, "sampling: step 2/2")]
    seen.clear()
    ui_swap.compare_row(ctx, s, 3, 2, progress=progress)
    assert [d for _, d in seen] == ["this session's bank: step 1/2", "this session's bank: step 2/2",
                                    "original bank: step 1/2", "original bank: step 2/2"]
    assert [f for f, _ in seen] == [0.25, 0.5, 0.75, 1.0]  # two calls fill the bar once, never back to 0
    seen.clear()
    ui_bank.row_generations(ctx, s, 3, 2, progress=progress)
    assert seen[-1] == (1.0, "sampling: step 2/2")
    for name in ("swap_generate", "swap_compare", "bank_row_generate"):  # gradio hands the handlers a progress
        default = inspect.signature(event_named(demo, name).fn).parameters["progress"].default
        assert isinstance(default, gr.Progress), name


def test_interpolate_frames_strip_and_gif(ctx, pictures):
    s = ctx.new_session()
    previews, (items, strip, gif, seed, details) = final(ui_interpolate.interpolate(
        ctx, s, "bank row", 2, None, "uploaded image", 0, pictures["blue"], "slerp", 5, 7, False, 3, "euler"))
    assert len(items) == 5 and details["weights"] == [0.0, 0.25, 0.5, 0.75, 1.0] and seed == 7
    captions = [c for p in previews if p[0] for _, c in p[0]]
    assert captions and all(len(c) <= len("w 0.00 · 250/250") and c.startswith("w ") for c in captions)
    assert [c for _, c in items] == ["w 0.00", "w 0.25", "w 0.50", "w 0.75", "w 1.00"]  # the seed is said once:
    assert ui_interpolate.done_status(details).startswith("**5 frames from seed 7**: row 2 · blue → upload")
    assert strip.width > strip.height
    with Image.open(gif) as g:
        assert g.n_frames == 2 * 5 - 2  # forth and back
    row2 = ctx.pipeline(s).generate(indices=[2], seeds=[7], method="euler", steps=3).images[0]
    assert items[0][0].tobytes() == ui_generate.upscale(row2).tobytes()  # w = 0 is endpoint A itself
    for mix in ("lerp", "concat", "mask"):
        items = final(ui_interpolate.interpolate(ctx, s, "bank row", 0, None, "bank row", 1, None, mix, 3, 0,
                                                 False, 1, "sde"))[1][0]
        assert len(items) == 3
    with pytest.raises(UserError, match="k \\(frames\\) must be between 2 and 12"):
        list(ui_interpolate.interpolate(ctx, s, "bank row", 0, None, "bank row", 1, None, "slerp", 10**9, 0, False,
                                        1, "euler"))


def test_checkpoint_switch(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = ctx.new_session()
    s.bank = ctx.bank(s).copy()
    s, text, _ = load_checkpoint(ctx, s, "gmem-v1-xl", "")
    assert "Could not load `gmem-v1-xl`" in text and "Still using **tiny**" in text and s.checkpoint == "tiny"
    assert s.bank is not None  # a failed switch keeps the session as it was
    pipe = tiny_pipeline()
    folder = save_checkpoint(tmp_path / "ckpt", Checkpoint(pipe.model, pipe.bank, sampler={"method": "euler", "steps": 3}))
    s, text, _ = load_checkpoint(ctx, s, "", str(folder))
    assert "only loads the named checkpoints" in text and s.checkpoint == "tiny"  # paths are off by default
    monkeypatch.setattr(ctx.limits, "allow_local_checkpoints", True)
    s, text, groups = load_checkpoint(ctx, s, "", str(folder))
    assert s.checkpoint == str(folder) and s.bank is None and "dropped" in text and "no (uploads are disabled)" in text
    with pytest.raises(gr.Error, match="no snippet encoder"):
        friendly(ui_swap.generate_from_upload)(ctx, s, __file__, 1, 0, False, 1)


def test_spaces_gpu_is_a_no_op_without_spaces():
    fn = lambda: 1  # noqa: E731
    assert spaces_gpu()(fn) is fn


def test_app_revision_pins_its_checkpoint_only(monkeypatch):
    """build_app(revision=...) loads its checkpoint at that version; a model picked later in the Model panel
    loads without it (a revision belongs to one Hub checkpoint); with a factory of one's own it is refused."""
    from gmem_explore.app.server import build_app

    loads = []

    def from_pretrained(name, device="cpu", **kwargs):
        loads.append((name, kwargs.get("revision")))
        return tiny_pipeline()

    monkeypatch.setattr(GMemPipeline, "from_pretrained", from_pretrained)
    demo = build_app(checkpoint="gmem-v1-xl", revision="b" * 40, use_spaces_gpu=False)
    demo.gmem_context.store.get("emoji-32")
    assert loads == [("gmem-v1-xl", "b" * 40), ("emoji-32", None)]
    with pytest.raises(ValueError, match="revision= pins the default factory's checkpoint"):
        build_app(lambda name: tiny_pipeline(), checkpoint="gmem-v1-xl", revision="v1")


def test_app_help_and_flags(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    import app

    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.checkpoint) == ("127.0.0.1", None, False, "emoji-32")
    with pytest.raises(SystemExit):
        app.parse_args(["--port", "0"])
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")  # what Spaces and docker set
    assert app.parse_args([]).port == 7861
    monkeypatch.setenv("GRADIO_SERVER_PORT", "auto")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "$GRADIO_SERVER_PORT is 'auto', not a port number" in capsys.readouterr().err
    assert app.parse_args(["--port", "9000"]).port == 9000  # the flag wins over a broken variable
    monkeypatch.delenv("GRADIO_SERVER_PORT")
    monkeypatch.setenv("GMEM_MAX_STEPS", "100")  # a Space's variables set the limits of `python app.py`
    monkeypatch.setenv("GMEM_CONCURRENCY", "2")
    args = app.parse_args([])
    assert (args.max_steps, args.concurrency, args.max_images) == (100, 2, 16)
    assert app.parse_args(["--max-steps", "50"]).max_steps == 50
    # an interpolation's frames are images too: an operator lowers them as well (48 stayed after --max-images 4)
    assert app.parse_args([]).max_frames == 48
    monkeypatch.setenv("GMEM_MAX_FRAMES", "12")
    assert app.parse_args([]).max_frames == 12 and app.parse_args(["--max-frames", "6"]).max_frames == 6
    with pytest.raises(SystemExit):
        app.parse_args(["--max-frames", "1"])
    assert "--max-frames must be at least 2" in capsys.readouterr().err
    monkeypatch.delenv("GMEM_MAX_FRAMES")
    # the upload limit too (a Space passes no flags), checked before the model loads: gradio failed at launch
    assert app.parse_args([]).max_file_size == "10mb"
    monkeypatch.setenv("GMEM_MAX_FILE_SIZE", "2mb")
    assert app.parse_args([]).max_file_size == "2mb" and app.parse_args(["--max-file-size", "1 MB"]).max_file_size
    monkeypatch.setenv("GMEM_MAX_FILE_SIZE", "lots")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "$GMEM_MAX_FILE_SIZE is 'lots': give a whole number and a unit" in capsys.readouterr().err
    monkeypatch.delenv("GMEM_MAX_FILE_SIZE")
    with pytest.raises(SystemExit):
        app.parse_args(["--max-file-size", "10 megs"])
    assert "--max-file-size is '10 megs'" in capsys.readouterr().err
    monkeypatch.setenv("GMEM_MAX_STEPS", "lots")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "$GMEM_MAX_STEPS is 'lots', not a whole number" in capsys.readouterr().err
    monkeypatch.delenv("GMEM_MAX_STEPS")
    monkeypatch.delenv("GMEM_CONCURRENCY")
    # the model too: a Space's GMEM_CHECKPOINT / GMEM_REVISION, the flags winning; a revision for a checkpoint that
    # has none (the embedded one, a folder) is refused before anything loads, naming where it came from
    assert (app.parse_args([]).checkpoint, app.parse_args([]).revision) == ("emoji-32", None)
    monkeypatch.setenv("GMEM_CHECKPOINT", "gmem-v1-xl")
    monkeypatch.setenv("GMEM_REVISION", "a" * 40)
    args = app.parse_args([])
    assert (args.checkpoint, args.revision) == ("gmem-v1-xl", "a" * 40)
    assert app.parse_args(["--revision", "main"]).revision == "main"
    with pytest.raises(SystemExit):
        app.parse_args(["--checkpoint", "emoji-32"])
    err = capsys.readouterr().err
    assert "revision '" + "a" * 40 + "' ($GMEM_REVISION) picks a version of a Hub checkpoint" in err
    assert "unset GMEM_REVISION" in err
    monkeypatch.delenv("GMEM_REVISION")
    with pytest.raises(SystemExit):
        app.parse_args(["--checkpoint", "emoji-32", "--revision", "v2"])
    assert "(--revision) picks a version" in capsys.readouterr().err
    monkeypatch.delenv("GMEM_CHECKPOINT")
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--host" in out.stdout and "--share" in out.stdout and "Interpolate" in out.stdout
    # each default is stated once: --port's own text, not also argparse's "(default: None)"; flags get none
    assert "(default: None)" not in out.stdout and "(default: False)" not in out.stdout
    assert "from 7860 up" in out.stdout and "$GMEM_MAX_STEPS if" in out.stdout and "else 500)" in out.stdout
    assert "$GMEM_MAX_FRAMES if" in out.stdout


def test_app_refuses_a_bad_checkpoint_with_a_message(tmp_path):
    """A folder that is not a checkpoint: an `error:` paragraph and status 2 (as for a bad flag), no traceback,
    and no server (a started server would not return, and the timeout would fail the test)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(tmp_path), "--device", "cpu"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("python app.py: error: could not load checkpoint") and "no config.json" in out.stderr
    assert "python app.py --checkpoint <folder" in out.stderr  # how to give the app another one
    assert "Traceback" not in out.stderr + out.stdout


# ---- through gradio_client -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(demo):
    from gmem_explore.app.server import launch

    launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()


def client(url):
    from gradio_client import Client

    # download_files=False: outputs come back as the server's file paths (same process here), which skips
    # gradio_client's one-by-one downloads (0.25 s per image on 2 busy cores)
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def test_every_endpoint_through_gradio_client(server, pictures):
    from gradio_client import handle_file

    c = client(server)
    names = set(c.view_api(return_format="dict", print_info=False)["named_endpoints"])
    expected = {"/generate", "/bank_map", "/bank_row", "/bank_row_generate", "/bank_page", "/bank_stats",
                "/swap_generate", "/swap_replace", "/swap_add", "/swap_compare", "/swap_download", "/swap_reset",
                "/interpolate", "/load_checkpoint"}
    assert names == expected
    gallery, seed, details = c.predict(RANDOM, 0, "red", None, 2, 3, False, 2, "euler", 1.0, api_name="/generate")
    assert len(gallery) == 2 and seed == 3 and gallery[1]["caption"].startswith("seed 4 · row ")
    _, selection, summary = c.predict("pca", "group", 0, 100, 0, 100, 0, api_name="/bank_map")
    assert len(selection) == ROWS
    assert len(c.predict(3, api_name="/bank_row")[2]) == ui_bank.NEIGHBOURS
    assert len(c.predict(api_name="/bank_row_generate", row=3)) == 4
    assert "page 1 of 1" in c.predict(1, api_name="/bank_page")[2]
    assert "40 rows" in c.predict(api_name="/bank_stats")[0]
    assert len(c.predict(handle_file(pictures["red"]), 2, 0, False, 2, api_name="/swap_generate")[0]) == 2
    row, log = c.predict(handle_file(pictures["red"]), 1, api_name="/swap_replace")
    assert row == 1 and "replaced row 1" in log
    row, log = c.predict(handle_file(pictures["blue"]), api_name="/swap_add")
    assert row == ROWS
    before, after = c.predict(1, 2, api_name="/swap_compare")
    assert len(before) == len(after) == 4
    assert len(MemoryBank.load(c.predict(api_name="/swap_download")["path"])) == ROWS + 1
    assert "No edits" in c.predict(api_name="/swap_reset")
    frames, strip, gif, seed, details = c.predict("bank row", 0, None, "bank row", 1, None, "lerp", 4, 2, False, 2,
                                                  "euler", api_name="/interpolate")
    assert len(frames) == 4 and details["frames"] == 4 and gif["path"].endswith(".gif")
    text, _ = c.predict("gmem-v1-xl", "", api_name="/load_checkpoint")
    assert "Could not load" in text
    with pytest.raises(Exception, match="not an image"):
        c.predict(handle_file(pictures["broken"]), 1, api_name="/swap_replace")
    assert len(c.predict(RANDOM, 0, "red", None, 1, 0, False, 1, "euler", 1.0, api_name="/generate")[0]) == 1


def test_two_sessions_do_not_share_an_edited_bank(server, pictures):
    from gradio_client import handle_file

    a, b = client(server), client(server)
    a.predict(handle_file(pictures["red"]), 6, api_name="/swap_replace")

    def compare(c):
        before, after = c.predict(6, 2, api_name="/swap_compare")
        return [x["image"]["path"] for x in before], [x["image"]["path"] for x in after]

    with ThreadPoolExecutor(2) as pool:  # both sessions at once
        (a_before, a_after), (b_before, b_after) = pool.map(compare, (a, b))
    read = lambda paths: [Path(p).read_bytes() for p in paths]  # noqa: E731
    assert read(a_before) != read(a_after)  # session a sees its swap
    assert read(b_before) == read(b_after)  # session b still samples from the original row
    assert "No edits" in b.predict(api_name="/swap_reset")


def test_edited_bank_reuses_the_umap_map(ctx, pictures, tmp_path, monkeypatch):
    import gmem_explore.bank.map2d as bankmap

    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    monkeypatch.setattr(bankmap, "umap_2d", lambda x, seed: bankmap.pca_2d(x))  # a stand-in fit, fast
    s = ctx.new_session()
    ui_bank.bank_map(ctx, s, "umap", "group", 0, 100, 0, 100, None)  # fits and caches the checkpoint's map
    monkeypatch.setattr(bankmap, "umap_2d", lambda x, seed: pytest.fail("refitted UMAP for a session edit"))
    s, _, _ = ui_swap.replace_row(ctx, s, pictures["red"], 4)
    s, new_row, _ = ui_swap.add_row(ctx, s, pictures["blue"])
    coords, idx, note, clusters = ui_bank.map_coords(ctx, s, "umap")
    assert sorted(idx.tolist()) == list(range(ROWS + 1)) and coords.shape == (ROWS + 1, 2)
    assert "2 row(s) edited" in note
    # the moved rows sit beside (and in the cluster of) a row of the checkpoint's map, not at its origin
    base, base_idx, base_clusters = mapping.layout(ctx.store.get().bank, "umap")
    span = float((base.max(0).values - base.min(0).values).norm())
    for r in (4, new_row):
        here = coords[idx.tolist().index(r)]
        gap = (base - here).norm(dim=1)
        assert float(gap.min()) < 0.05 * span
        near = base_clusters[gap < 0.05 * span].tolist()
        assert int(clusters[idx.tolist().index(r)]) in near
    _, _, rows, summary = ui_bank.bank_map(ctx, s, "umap", "group", 0, 100, 0, 100, new_row)
    assert new_row in rows and "not refitted" in summary


def test_every_event_survives_the_values_the_page_starts_with(demo):
    """Each handler, run through gradio with its inputs' initial values (what a first click sends), ends in a
    result or a gr.Error message, never a server error. It caught a tab handler whose one output got a list."""
    import asyncio

    from gradio.state_holder import SessionState

    state, failures = SessionState(demo), []
    for index, f in demo.fns.items():
        if f.fn is None or any("EventData" in str(p.annotation) or "SelectData" in str(p.annotation)
                               for p in inspect.signature(f.fn).parameters.values()):
            continue  # a js-only step, or a click on a thumbnail (it needs the clicked item)
        inputs = [None if isinstance(b, gr.State) else getattr(b, "value", None) for b in f.inputs]
        try:
            asyncio.run(demo.process_api(index, inputs, state=state, explicit_call=True))
        except gr.Error:
            pass
        except Exception as e:  # noqa: BLE001 - collected, so one run names every failing handler
            failures.append(f"{getattr(f.fn, '__name__', '?')} ({f.api_name}): {type(e).__name__}: {e}"[:300])
    assert not failures, failures
