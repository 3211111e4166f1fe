"""Interpolate tab: two snippets (bank rows or uploads) mixed by lerp / slerp / concat / mask in k steps, all
frames from one seed; shown as a strip, an animated GIF and the frames with their weights."""
from __future__ import annotations


import math

import gradio as gr
import torch

from ..bank.memory import MIX_METHODS, MemoryBank
from ..bank.search import partner_row
from ..events import Finished
from ..sampling import METHODS
from .common import (AppContext, Session, UserError, as_int, friendly, pick_seed, row_caption, row_pictures,
                     row_range, typing_a_seed_unticks_random, upscale)
from .runs import hidden_seed, live, Stopped, stopped_status, wire_stop
from .files import RAW_INPUTS, encode_upload, file_stem, image_upload, png_files, scratch_path
from ..viz import image_grid

ENDPOINT_SOURCES = ("bank row", "uploaded image")
GIF_SIZE = 128  # frames are enlarged (nearest) to this for the GIF
GIF_FRAME_MS = 120
# The strip's frames are at least STRIP_FRAME px (enlarged, nearest), at most STRIP_COLUMNS to a line: shown at its
# own size in a ~830 px column (1280 px window) a line of 6 fits, where 8 frames of 64 px in one line were too small
# to read and 48 in one line would be 17 px each once the image is shrunk to the column.
STRIP_FRAME = 128
STRIP_COLUMNS = 6
ENDPOINT_PICTURE = 128  # px of the picture of row A and row B beside their boxes


def strip_image(frames: torch.Tensor):
    """The frames as one image, in even lines of at most STRIP_COLUMNS (8 frames: two lines of 4), each frame at
    least STRIP_FRAME px."""
    k, h = frames.shape[0], frames.shape[1]
    per_line = math.ceil(k / math.ceil(k / STRIP_COLUMNS))
    return image_grid(frames, nrow=per_line, scale=max(1, math.ceil(STRIP_FRAME / h)))


def endpoint_picture(ctx: AppContext, session: Session, row):
    """The picture of a row box's row (None while the box holds no row of the bank: the run says why)."""
    try:
        r = as_int(row, "row", 0, len(ctx.bank(session)) - 1)
    except UserError:
        return None
    return row_pictures(ctx, session, [r], ENDPOINT_PICTURE)[0]


def default_endpoints(bank: MemoryBank) -> tuple[int, int]:
    """Rows A and B shown when the tab opens: row 0 and its partner (bank.search.partner_row), so that the first run
    shows a visible, smooth change (for emoji-32 a grinning face into a jack-o'-lantern)."""
    return (0, partner_row(bank, 0)) if len(bank) >= 2 else (0, 0)


def endpoint(ctx: AppContext, session: Session, which: str, source: str, row, upload):
    """(snippet or row index, description) for one end of the interpolation."""
    pipe = ctx.pipeline(session)
    if source == ENDPOINT_SOURCES[0]:
        r = as_int(row, f"row {which}", 0, len(pipe.bank) - 1)
        return r, row_caption(pipe.bank, r)
    if source == ENDPOINT_SOURCES[1]:
        snippet, _ = encode_upload(pipe, upload)
        return snippet, "upload"
    raise UserError(f"Unknown source {source!r} for {which}; choose one of {ENDPOINT_SOURCES}")


def same_snippet(a, b) -> bool:
    """Whether both ends are one snippet (the same row, or uploads with equal snippets): k identical frames would
    cost k runs of the sampler and show nothing."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)


def file_name(details: dict) -> str:
    """The stem of a finished interpolation's files, e.g. 'gmem-row0-to-row956-slerp-seed0': what makes it again
    (the frames add their weight: '...-seed0-w0.25.png')."""
    ends = [file_stem(str(details[k]).split(" · ")[0]) for k in ("from", "to")]  # 'row 0 · Smileys...' -> 'row0'
    return f"gmem-{ends[0]}-to-{ends[1]}-{details['mix']}-seed{details['seed']}"


def write_gif(frames: torch.Tensor, stem: str = "interpolation") -> str:
    """Frames forth and back (a seamless loop) as an animated GIF `stem`.gif in a fresh temporary folder."""
    images = [upscale(f, GIF_SIZE) for f in frames]
    loop = images + images[-2:0:-1]
    path = scratch_path(f"{stem}.gif")
    loop[0].save(path, save_all=True, append_images=loop[1:], duration=GIF_FRAME_MS, loop=0, disposal=2)
    return str(path)


def interpolate(ctx: AppContext, session: Session, a_source, a_row, a_upload, b_source, b_row, b_upload, mix,
                k, seed, randomize, steps, method, progress=None):
    """Generator: yields (frames gallery, strip, gif path, seed, details), previews first."""
    if mix not in MIX_METHODS:
        raise UserError(f"Unknown mixing method {mix!r}; choose one of {MIX_METHODS}")
    if method not in METHODS:
        raise UserError(f"Unknown sampler {method!r}; choose one of {METHODS}")
    k = as_int(k, "k (frames)", 2, ctx.limits.max_frames)
    steps = as_int(steps, "steps", 1, ctx.limits.max_steps)
    seed = pick_seed(seed, randomize)
    pipe = ctx.pipeline(session)
    a, a_name = endpoint(ctx, session, "A", a_source, a_row, a_upload)
    b, b_name = endpoint(ctx, session, "B", b_source, b_row, b_upload)
    if same_snippet(a, b):
        what = f"both {a_name}" if isinstance(a, int) else "the same image"
        raise UserError(f"A and B are {what}: all frames would be alike. Pick two different "
                        f"{'rows' if isinstance(a, int) else 'images'}.")
    weights = torch.linspace(0, 1, k).tolist()
    events = pipe.interpolate_iter(a, b, k, mix=mix, seed=seed, method=method, steps=steps,
                                   batch_size=ctx.limits.batch_size)
    yield [], None, None, seed, {"status": "starting", "seed": seed}

    def preview(event):  # the step's frames, captioned with that same step
        # 'w 0.14 · 3/8': with the word "step" the caption was cut under a frame (~110 px at 6 columns)
        return [(upscale(im), f"w {weights[event.start + i]:.2f} · {event.step}/{event.total}")
                for i, im in enumerate(event.preview())]

    for event in live(ctx, session, "interpolate", events, progress):
        if isinstance(event, Stopped):
            items = preview(event.at) if event.at is not None else gr.update()
            yield items, None, None, seed, {"status": f"stopped {event.where()}", "seed": seed}
        elif not isinstance(event, Finished):
            yield preview(event), None, None, seed, {"status": f"step {event.step}/{event.total}", "seed": seed}
        else:
            out = event.generation
            # the seed is the same for every frame: it is said once, in the line above the frames
            items = [(upscale(im), f"w {w:.2f}") for im, w in zip(out.images, weights)]
            strip = strip_image(out.images)
            details = {"status": "done", "seed": seed, "frames": k, "from": a_name, "to": b_name, "mix": mix,
                       "weights": [round(w, 4) for w in weights], "sampler": method, "steps": steps}
            yield items, strip, write_gif(out.images, file_name(details)), seed, details


def done_status(details) -> str:
    stopped = stopped_status(details, details.get("seed") if isinstance(details, dict) else None)
    if stopped:
        return stopped
    if not isinstance(details, dict) or details.get("status") != "done":
        return ""
    return (f"**{details['frames']} frames from seed {details['seed']}**: {details['from']} → {details['to']}, "
            f"{details['mix']}; w is B's share")


def build(ctx: AppContext, state: gr.State, steps_default: int, method_default: str) -> dict:
    pipe = ctx.store.get()
    last = max(len(pipe.bank) - 1, 0)
    row_a, row_b = default_endpoints(pipe.bank)

    def picture(which: str, row: int) -> gr.Image:
        # filled now where the bank has thumbnails; a bank without them gets its generated pictures when the tab opens
        thumbs = pipe.bank.column("thumbnails")
        value = upscale(thumbs[row], ENDPOINT_PICTURE) if thumbs is not None and len(pipe.bank) else None
        return gr.Image(value, label=f"Row {which}", height=ENDPOINT_PICTURE + 40, interactive=False, format="png",
                        buttons=[], elem_id=f"interp-picture-{which.lower()}")
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            with gr.Row():
                with gr.Column(min_width=140):
                    a_source = gr.Radio(list(ENDPOINT_SOURCES), value=ENDPOINT_SOURCES[0], label="A from")
                    a_row = gr.Number(row_a, precision=0, minimum=0, maximum=last, label=f"Row A (0–{last})",
                                      elem_id="interp-row-a")
                    a_upload = image_upload("Image A", height=140, visible=False, elem_id="interp-upload-a")
                    a_picture = picture("A", row_a)
                with gr.Column(min_width=140):
                    b_source = gr.Radio(list(ENDPOINT_SOURCES), value=ENDPOINT_SOURCES[0], label="B from")
                    b_row = gr.Number(row_b, precision=0, minimum=0, maximum=last, label=f"Row B (0–{last})",
                                      elem_id="interp-row-b")
                    b_upload = image_upload("Image B", height=140, visible=False, elem_id="interp-upload-b")
                    b_picture = picture("B", row_b)
            mix = gr.Radio(list(MIX_METHODS), value="slerp", label="Mix",
                           info="lerp: straight line; slerp: great circle; concat: first dims from A; mask: random dims")
            k = gr.Slider(2, ctx.limits.max_frames, value=8, step=1, label="Frames (k)", elem_id="interp-k")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="Seed (shared by all frames)", elem_id="interp-seed")
                randomize = gr.Checkbox(True, label="Random seed")
                typing_a_seed_unticks_random(seed, randomize)
            with gr.Accordion("Sampler", open=False):
                method = gr.Radio(list(METHODS), value=method_default, label="Sampler")
                steps = gr.Slider(1, ctx.limits.max_steps, value=steps_default, step=1, label="Steps")
            with gr.Row():
                go = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
                stop = gr.Button("Stop", variant="stop", elem_id="interp-stop")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="interp-status")
            strip = gr.Image(label="Strip", interactive=False, format="png", elem_id="interp-strip")
            with gr.Row():
                # min_width 240: on a phone the row wraps and the GIF gets the width; beside Details its 160 px box
                # cut its label to "Animation (" under the download buttons
                gif = gr.Image(label="Animation (GIF)", interactive=False, height=200, min_width=240,
                               elem_id="interp-gif")
                with gr.Accordion("Details", open=False):
                    details = gr.JSON()
            # 6 columns: gradio's grid columns are at least 100 px wide, and 8 overflowed the column sideways
            frames = gr.Gallery(label="Frames", columns=6, height="fit-content", format="png",
                                elem_id="interp-frames", elem_classes=["fit-grid"])  # no sideways scrolling
    seed_used = hidden_seed()

    def show_endpoint(which: str):
        def show(session, choice):
            # the row's range is re-read when it is shown: the session's bank may have changed model or grown
            if choice == ENDPOINT_SOURCES[0]:
                return ({**row_range(ctx.bank(session), f"Row {which}"), "visible": True}, gr.update(visible=True),
                        gr.update(visible=False))
            return gr.update(visible=False), gr.update(visible=False), gr.update(visible=True)
        return show

    def show_picture(session, row):
        return endpoint_picture(ctx, session, row)

    def show_pictures(session, row_a, row_b):
        return endpoint_picture(ctx, session, row_a), endpoint_picture(ctx, session, row_b)

    for which, source, row, upload, pic in (("A", a_source, a_row, a_upload, a_picture),
                                            ("B", b_source, b_row, b_upload, b_picture)):
        source.change(show_endpoint(which), [state, source], [row, pic, upload], queue=False,
                      api_visibility="private")
        # queued: for a bank without thumbnails a picture is a generation (it waits for a model slot)
        row.change(show_picture, [state, row], pic, api_visibility="private", show_progress="hidden")

    @ctx.gpu
    @friendly
    def on_interpolate(session, a_source, a_row, a_upload, b_source, b_row, b_upload, mix, k, seed, randomize,
                       steps, method, progress=gr.Progress()):
        for frames, strip, gif, used, details in interpolate(ctx, session, a_source, a_row, a_upload, b_source, b_row,
                                                             b_upload, mix, k, seed, randomize, steps, method,
                                                             progress):
            if details.get("status") == "done":  # files named for what makes them again, for downloads
                stem = file_name(details)
                frames = png_files(frames, stem)
                (strip, _), = png_files([(strip, "strip")], stem)
            yield frames, strip, gif, used, details

    wire_stop(go, stop, state, status, "interpolate")
    event = go.click(on_interpolate, [state, a_source, a_row, a_upload, b_source, b_row, b_upload, mix, k, seed,
                                      randomize, steps, method],
                     [frames, strip, gif, seed_used, details], api_name="interpolate", **RAW_INPUTS,
                     **ctx.model_queue)
    event.success(lambda used, info: (used, done_status(info)), [seed_used, details], [seed, status], queue=False,
                  api_visibility="private")
    # the pictures follow the session's bank when the tab opens (a row replaced on the Swap tab, another model)
    return {"rows": {"Row A": a_row, "Row B": b_row},
            "pictures": {"fn": show_pictures, "inputs": [state, a_row, b_row], "outputs": [a_picture, b_picture]}}
