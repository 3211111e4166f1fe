"""Swap tab: an uploaded image -> its snippet -> images; put the snippet into this session's own copy of the bank
(replace a row or add one), compare a row before and after, download the edited bank, reset.

The bank file on disk is never written: the first edit copies the bank into the session's gr.State."""
from __future__ import annotations

import math
import os
import shutil
import threading
import weakref

import gradio as gr
import torch

from .common import (AppContext, Session, UserError, as_int, friendly, pick_seed, row_caption, row_items, row_range,
                     typing_a_seed_unticks_random, upscale)
from .runs import hidden_seed, run_to_end
from .files import RAW_INPUTS, encode_upload, file_stem, image_upload, png_files, scratch_path

MAX_EDITS = 1000  # edits (replaced and added rows) a session may make; beyond this a script (gmem build-bank) is
# the right tool. Replacements count too: each adds a line to the session's edit log, kept for the session's hour.
UPLOAD_GROUP = "your upload"  # the group of a row replaced or added here: its old group no longer describes it
NEAREST = 3  # bank rows shown beside the images from an upload
# One click on "Download the bank" saves the file: the click's handler writes it (or finds it written) and hands it to
# the file box, then this asks the browser to save that file, as a click on the box's link would.
SAVE_FILE_JS = """(f) => { if (f && f.url) { const a = document.createElement('a'); a.href = f.url;
  a.download = f.orig_name || ''; document.body.appendChild(a); a.click(); a.remove(); } }"""


def generate_from_upload(ctx: AppContext, session: Session, upload, n, seed, randomize, steps, progress=None,
                         holding_slot: bool = False):
    """(images, seed used, nearest rows): the images from an upload's snippet and the NEAREST bank rows to it as
    gallery items (their pictures, captioned 'row N · cos 0.93')."""
    pipe = ctx.pipeline(session)
    n = as_int(n, "number of images", 1, ctx.limits.max_images)
    steps = as_int(steps, "steps", 1, ctx.limits.max_steps)
    seed = pick_seed(seed, randomize)
    snippet, _ = encode_upload(pipe, upload)
    idx, sims = pipe.bank.nearest(snippet, NEAREST)
    rows = [int(i) for i in idx[0]]
    out = run_to_end(pipe.generate_iter(snippets=snippet.repeat(n, 1), seeds=[(seed + i) % 2**31 for i in range(n)],
                                        steps=steps, batch_size=ctx.limits.batch_size), progress)
    items = [(upscale(im), f"seed {s}") for im, s in zip(out.images, out.seeds)]
    near = row_items(ctx, session, rows, [f"row {r} · cos {float(c):.2f}" for r, c in zip(rows, sims[0])],
                     holding_slot=holding_slot)
    return items, seed, near


def upload_label(bank) -> int | None:
    """The label for a row made from an upload: the group UPLOAD_GROUP (added to this session's copy's own
    label_names when missing), -1 (no group) for a bank with numeric labels only, None for a bank without labels."""
    if bank.column("labels") is None:
        return None
    if not bank.label_names:
        return -1
    if UPLOAD_GROUP not in bank.label_names:
        bank.label_names.append(UPLOAD_GROUP)  # the session's copy has its own list (MemoryBank copies it)
    return bank.label_names.index(UPLOAD_GROUP)


def check_edit_limit(session: Session) -> None:
    """Refuse an edit beyond MAX_EDITS, before any work (decoding the upload, copying the bank)."""
    if len(session.edits) >= MAX_EDITS:
        raise UserError(f"This session already made {MAX_EDITS} edits, the limit; download the bank and build larger "
                        f"banks with a script (gmem build-bank), or press Reset to start again from the original.")


def replace_row(ctx: AppContext, session: Session, upload, row):
    pipe = ctx.pipeline(session)
    check_edit_limit(session)
    r = as_int(row, "row", 0, len(pipe.bank) - 1)
    snippet, thumb = encode_upload(pipe, upload)
    bank = ctx.private_bank(session)  # copy-on-first-edit: the file stays as it is
    before = row_caption(bank, r)
    bank.replace(r, snippet[0].to(bank.dtype), thumbnail=thumb if bank.column("thumbnails") is not None else None,
                 label=upload_label(bank))
    session.edits.append(f"replaced {before} with the uploaded image")
    return session, r, edit_log(session)


def add_row(ctx: AppContext, session: Session, upload):
    pipe = ctx.pipeline(session)
    check_edit_limit(session)
    snippet, thumb = encode_upload(pipe, upload)
    bank = ctx.private_bank(session)  # copy-on-first-edit: the file stays as it is
    label = upload_label(bank)
    (new,) = bank.add(snippet.to(bank.dtype), thumbnails=thumb[None] if bank.column("thumbnails") is not None else None,
                      labels=None if label is None else [label]).tolist()
    session.edits.append(f"added row {new} from the uploaded image")
    return session, new, edit_log(session)


def edit_log(session: Session) -> str:
    if not session.edits:
        return "No edits: the session uses the checkpoint's bank as it is on disk."
    return f"**{len(session.edits)} edit(s) in this session's copy** (the file on disk is unchanged):\n" + \
        "\n".join(f"- {e}" for e in session.edits[-20:])


def compare_row(ctx: AppContext, session: Session, row, steps, n: int = 4, progress=None):
    """Images from one row with seeds 0..n-1, from the original bank and from this session's edited copy."""
    original = ctx.store.get(session.checkpoint)
    mine = ctx.pipeline(session)
    r = as_int(row, "row", 0, len(mine.bank) - 1)
    steps = as_int(steps, "steps", 1, ctx.limits.max_steps)
    seeds = list(range(n))
    has_original = r < len(original.bank)  # a row this session added has no original
    after = run_to_end(mine.generate_iter(indices=[r] * n, seeds=seeds, steps=steps, batch_size=ctx.limits.batch_size),
                       progress, "this session's bank", (0.0, 0.5 if has_original else 1.0))
    after_items = [(upscale(im), f"seed {s}") for im, s in zip(after.images, after.seeds)]
    if has_original:
        before = run_to_end(original.generate_iter(indices=[r] * n, seeds=seeds, steps=steps,
                                                   batch_size=ctx.limits.batch_size),
                            progress, "original bank", (0.5, 1.0))
        before_items = [(upscale(im), f"seed {s}") for im, s in zip(before.images, before.seeds)]
    else:
        before_items = []
    return before_items, after_items


def compare_note(ctx: AppContext, session: Session, row) -> str:
    """The line above the two galleries: which row they show and whether this session changed it (a new row has
    no original, so its 'Original bank' gallery stays empty)."""
    original = ctx.store.get(session.checkpoint).bank
    mine = ctx.bank(session)
    try:
        r = as_int(row, "row", 0, len(mine) - 1)
    except UserError:
        return ""
    if r >= len(original):
        return (f"**Row {r} was added in this session**, so the original bank has no row {r}: "
                f"only this session's images are shown.")
    if mine is not original and not torch.equal(mine.column("rows")[r], original.column("rows")[r]):
        return f"**Row {r} was replaced in this session** (it was {row_caption(original, r)}); seeds 0-3 on both sides."
    return f"**{row_caption(mine, r)}** is unchanged in this session; seeds 0-3 on both sides."


def compared(ctx: AppContext, session: Session, row) -> tuple[dict, dict]:
    """After a compare: the note above the galleries, and the "Original bank" gallery shown only for a row the
    original bank has (a row added in this session has none: an empty box stood above its images)."""
    added = as_int(row, "row", 0, 2**62) >= len(ctx.store.get(session.checkpoint).bank)  # compare_row checked it
    return shown(compare_note(ctx, session, row)), gr.update(visible=not added)


def shown(text: str) -> dict:
    """A Markdown's update that shows it only while it has text."""
    return gr.update(value=text, visible=bool(text))


def row_box(ctx: AppContext, session: Session, row=None) -> dict:
    """The row box for this session's bank: its range in the label, as on the other tabs ("Bank row (0–1697)" once
    Add made row 1697; back to 0–1696 after Reset), and `row` as its value while it is still a row of the bank.

    The box has no maximum: gradio refuses an input above a Number's maximum before any handler runs ("Value 1697
    is greater than maximum value 1696"), and Add puts the new row in the box before its range can follow. The
    handlers check the row themselves (as_int names the range)."""
    bank = ctx.bank(session)
    update = row_range(bank, bounded=False)
    if isinstance(row, (int, float)) and math.isfinite(row):  # not None, NaN or inf (int(inf) raised)
        # a row added here is gone after Reset: the last one
        update["value"] = min(max(int(row), 0), max(len(bank) - 1, 0))
    return update


# The file last written for each bank (the checkpoint's, shared; a session's edited copy) and the edit count it holds.
# A click used to save the whole bank again (8 MB for emoji-32, ~1 GB for gmem-v1-xl), kept an hour: a script
# clicking Download filled the server's disk without a single edit or model call.
_downloads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_downloads_lock = threading.Lock()


def download(ctx: AppContext, session: Session) -> str:
    """The bank as a .safetensors file: written once per state of the bank (the unedited checkpoint bank once for
    every session; an edited copy again only after a further edit, replacing its previous file)."""
    bank = ctx.bank(session)
    edits = len(session.edits) if session.bank is not None else 0
    with _downloads_lock:
        held = _downloads.get(bank)
        if held is not None and held[0] == edits and os.path.isfile(held[1]):
            os.utime(os.path.dirname(held[1]))  # still in use: the scratch folder's hourly cleanup passes it by
            return held[1]
        if held is not None:  # the same copy, edited since: its earlier file is out of date
            shutil.rmtree(os.path.dirname(held[1]), ignore_errors=True)
        # named for its model: "emoji-32-bank-edited.safetensors" beside other downloads says what it is
        model = file_stem(os.path.basename(str(session.checkpoint).rstrip("/\\")).removesuffix(".pth"))
        path = scratch_path(f"{model}-bank-edited.safetensors" if session.bank is not None else
                            f"{model}-bank.safetensors")
        bank.save(path)  # streamed: an edited copy is written as the shared rows plus its edits, never copied whole
        _downloads[bank] = (edits, str(path))
    return str(path)


def reset(ctx: AppContext, session: Session):
    session.bank = None
    session.edits = []
    return session, edit_log(session)


def build(ctx: AppContext, state: gr.State, steps_default: int) -> dict:
    pipe = ctx.store.get()
    # one row of two columns (controls | pictures): as two rows, the left column's upload box left a blank band
    # under the nearest rows, above the before/after comparison, as tall as the controls were taller
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            upload = image_upload("Your image", height=220, elem_id="swap-upload")
            # the Generate tab's words for the same settings (image i uses seed + i here too); one above the other,
            # as side by side "Number of images" wrapped onto two lines and pushed its slider below the other's
            n = gr.Slider(1, ctx.limits.max_images, value=4, step=1, label="Number of images")
            steps = gr.Slider(1, ctx.limits.max_steps, value=steps_default, step=1, label="Steps")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="Seed (image i uses seed + i)", elem_id="swap-seed")
                randomize = gr.Checkbox(True, label="Random seed")
                typing_a_seed_unticks_random(seed, randomize)
            go = gr.Button("Generate from this image", variant="primary", elem_id="swap-generate")
            gr.Markdown("### Put it into the bank (this session's copy)")
            # no maximum: see row_box
            row = gr.Number(0, precision=0, minimum=0, label=f"Bank row (0–{max(len(pipe.bank) - 1, 0)})",
                            elem_id="swap-row")
            with gr.Row():
                replace_btn = gr.Button("Replace this row", elem_id="swap-replace")
                add_btn = gr.Button("Add as a new row", elem_id="swap-add")
            compare_btn = gr.Button("Generate from the row: original vs edited", variant="primary",
                                    elem_id="swap-compare")
            # one button a row: side by side they wrapped onto three lines in a 300 px column
            download_btn = gr.Button("Download the bank (.safetensors)", elem_id="swap-download")
            file_out = gr.File(label="Bank file", interactive=False, visible=False, elem_id="swap-file")
            reset_btn = gr.Button("Reset to the original bank", variant="stop", elem_id="swap-reset")
            log = gr.Markdown(edit_log(Session(ctx.store.default)), elem_id="swap-log")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="From your image", columns=4, height="fit-content", format="png",
                                 elem_id="swap-gallery", elem_classes=["fit-grid"])
            # the rows themselves, as pictures: a row number alone says nothing about what the model draws from it
            nearest = gr.Gallery(label="Nearest bank rows (cosine)", columns=4, height="fit-content", format="png",
                                 allow_preview=False, buttons=[], elem_id="swap-nearest", elem_classes=["fit-grid"])
            # shown once it has a line to say: an empty Markdown still took its height above the galleries
            note = gr.Markdown(elem_id="swap-note", visible=False)
            # fit-content: a fixed height cut the captions off; the galleries are as tall as their one row. Their
            # seeds are always 0-3 (so edits compare alike), whatever the Seed box above says: the labels say so, as
            # the Bank tab's "Generations (seeds 0-3)" does
            before = gr.Gallery(label="Original bank (seeds 0-3)", columns=4, height="fit-content", format="png",
                                elem_id="swap-before", elem_classes=["fit-grid"])
            after = gr.Gallery(label="This session's bank (seeds 0-3)", columns=4, height="fit-content", format="png",
                               elem_id="swap-after", elem_classes=["fit-grid"])
    seed_used = hidden_seed()

    @friendly
    def on_generate(session, upload, n, seed, randomize, steps, progress=gr.Progress()):
        items, used, near = generate_from_upload(ctx, session, upload, n, seed, randomize, steps, progress,
                                                 holding_slot=True)  # a model_call holds its slot
        return png_files(items, "gmem-upload"), used, near

    @friendly
    def on_replace(session, upload, row):
        return replace_row(ctx, session, upload, row)

    @friendly
    def on_add(session, upload):
        return add_row(ctx, session, upload)

    @friendly
    def on_compare(session, row, steps, progress=gr.Progress()):
        before, after = compare_row(ctx, session, row, steps, progress=progress)
        r = int(float(row))  # compare_row checked it
        return png_files(before, f"gmem-row{r}-original"), png_files(after, f"gmem-row{r}-edited")

    @friendly
    def on_download(session):
        return download(ctx, session)

    @friendly
    def on_reset(session):
        return reset(ctx, session)

    model = ctx.model_queue
    quiet = {"queue": False, "api_visibility": "private"}  # the display-only follow-up steps below
    go.click(ctx.model_call(on_generate), [state, upload, n, seed, randomize, steps], [gallery, seed_used, nearest],
             api_name="swap_generate", **RAW_INPUTS, **model).success(lambda used: used, seed_used, seed, **quiet)
    # the endpoints return the row as a number (API clients read it); a quiet step then gives the box its range
    relabel = {"fn": lambda session, r: row_box(ctx, session, r), "inputs": [state, row], "outputs": row, **quiet}
    # an edit makes a shown download out of date: its link goes (it gave the bank without this edit), Download again
    stale_file = {"fn": lambda: gr.update(value=None, visible=False), "inputs": None, "outputs": file_out, **quiet}
    replace_btn.click(ctx.model_call(on_replace), [state, upload, row], [state, row, log], api_name="swap_replace",
                      **RAW_INPUTS, **model).success(**relabel).success(**stale_file)
    add_btn.click(ctx.model_call(on_add), [state, upload], [state, row, log], api_name="swap_add", **RAW_INPUTS,
                  **model).success(**relabel).success(**stale_file)
    # RAW_INPUTS: compare_row checks the row and steps itself; gradio's checks answered "4" or None with "Could not
    # preprocess input component at index 2 (a `slider` component) ..."
    compare_btn.click(ctx.model_call(on_compare), [state, row, steps], [before, after], api_name="swap_compare",
                      **RAW_INPUTS, **model).success(lambda session, r: compared(ctx, session, r), [state, row],
                                                     [note, before], **quiet)
    # the file box appears once there is a file (a link to save it again, where a browser blocks the saving)
    download_btn.click(on_download, state, file_out, api_name="swap_download").success(
        lambda: gr.update(visible=True), None, file_out, **quiet).success(None, file_out, None, js=SAVE_FILE_JS,
                                                                          **quiet)
    reset_btn.click(on_reset, state, [state, log], api_name="swap_reset").success(**stale_file).success(
        lambda: shown(""), None, note, **quiet).success(**relabel)
    return {"log": log, "row": row, "relabel": relabel}
