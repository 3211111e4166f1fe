"""Interpolate tab: two snippets (bank rows or uploads) mixed by lerp / slerp / concat / mask in k steps, all
frames from one seed; shown as a strip, an animated GIF and the frames with their weights."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import torch

from .bank import MIX_METHODS, check_snippets, normalize
from .bank import mix as mix_snippets
from .sampling import METHODS
from .ui_common import (AppContext, Session, UserError, as_int, encode_upload, friendly, image_upload, pick_seed,
                        run_live, upscale)
from .viz import image_grid

ENDPOINT_SOURCES = ("bank row", "uploaded image")
GIF_SIZE = 128  # frames are enlarged (nearest) to this for the GIF
GIF_FRAME_MS = 120


def endpoint(ctx: AppContext, session: Session, which: str, source: str, row, upload):
    """(snippet or row index, description) for one end of the interpolation."""
    pipe = ctx.pipeline(session)
    if source == ENDPOINT_SOURCES[0]:
        r = as_int(row, f"row {which}", 0, len(pipe.bank) - 1)
        return r, f"row {r}"
    if source == ENDPOINT_SOURCES[1]:
        snippet, _ = encode_upload(pipe, upload)
        return snippet, "upload"
    raise UserError(f"Unknown source {source!r} for {which}; choose one of {ENDPOINT_SOURCES}")


def write_gif(frames: torch.Tensor) -> str:
    """Frames forth and back (a seamless loop) as an animated GIF in a fresh temporary folder."""
    images = [upscale(f, GIF_SIZE) for f in frames]
    loop = images + images[-2:0:-1]
    path = Path(tempfile.mkdtemp(prefix="gmem-interp-")) / "interpolation.gif"
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
    weights = torch.linspace(0, 1, k).tolist()
    yield [], None, None, seed, {"status": "starting", "seed": seed}

    def run_with_sampler(callback):
        # pipeline.interpolate's `method` names the mix, so the sampler choice needs this spelled-out version
        # of it: the same frames (mix of the two normalised snippets at each weight, one seed), any sampler.
        sa = pipe.bank.snippets([a]) if isinstance(a, int) else normalize(check_snippets(a, pipe.snippet_dim))
        sb = pipe.bank.snippets([b]) if isinstance(b, int) else normalize(check_snippets(b, pipe.snippet_dim))
        frames = torch.cat([mix_snippets(sa, sb, w, mix, seed) for w in weights])
        return pipe.generate(snippets=frames, seeds=[seed] * k, method=method, steps=steps,
                             batch_size=ctx.limits.batch_size, callback=callback)

    for kind, payload, *rest in run_live(pipe, run_with_sampler, progress, ctx.limits.preview_seconds):
        if kind == "preview":
            start, images = payload
            step, total = rest
            items = [(upscale(im), f"step {step}/{total} · w {weights[start + i]:.2f}") for i, im in enumerate(images)]
            yield items, None, None, seed, {"status": f"step {step}/{total}", "seed": seed}
        else:
            out = payload
            items = [(upscale(im), f"{i + 1}/{k} · w {w:.2f} · seed {seed}") for i, (im, w) in
                     enumerate(zip(out.images, weights))]
            strip = image_grid(out.images, nrow=k, scale=max(1, 64 // out.images.shape[1]))
            details = {"status": "done", "seed": seed, "frames": k, "from": a_name, "to": b_name, "mix": mix,
                       "weights": [round(w, 4) for w in weights], "sampler": method, "steps": steps}
            yield items, strip, write_gif(out.images), seed, details


def build(ctx: AppContext, state: gr.State, steps_default: int, method_default: str) -> dict:
    pipe = ctx.store.get()
    last = max(len(pipe.bank) - 1, 0)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            with gr.Row():
                with gr.Column(min_width=140):
                    a_source = gr.Radio(list(ENDPOINT_SOURCES), value=ENDPOINT_SOURCES[0], label="A from")
                    a_row = gr.Number(0, precision=0, minimum=0, label="Row A", elem_id="interp-row-a")
                    a_upload = image_upload("Image A", height=120)
                with gr.Column(min_width=140):
                    b_source = gr.Radio(list(ENDPOINT_SOURCES), value=ENDPOINT_SOURCES[0], label="B from")
                    b_row = gr.Number(min(1, last), precision=0, minimum=0, label="Row B", elem_id="interp-row-b")
                    b_upload = image_upload("Image B", height=120)
            mix = gr.Radio(list(MIX_METHODS), value="slerp", label="Mix",
                           info="lerp: straight line; slerp: great circle; concat: first dims from A; mask: random dims")
            k = gr.Slider(2, ctx.limits.max_frames, value=8, step=1, label="Frames (k)", elem_id="interp-k")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="Seed (shared by all frames)")
                randomize = gr.Checkbox(False, label="Random seed")
            with gr.Accordion("Sampler", open=False):
                method = gr.Radio(list(METHODS), value=method_default, label="Sampler")
                steps = gr.Slider(1, ctx.limits.max_steps, value=steps_default, step=1, label="Steps")
            with gr.Row():
                go = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            strip = gr.Image(label="Strip", interactive=False, format="png", elem_id="interp-strip")
            with gr.Row():
                gif = gr.Image(label="Animation (GIF)", interactive=False, height=200, elem_id="interp-gif")
                with gr.Accordion("Details", open=False):
                    details = gr.JSON()
            frames = gr.Gallery(label="Frames", columns=8, height="auto", format="png", elem_id="interp-frames")

    @ctx.gpu
    @friendly
    def on_interpolate(session, a_source, a_row, a_upload, b_source, b_row, b_upload, mix, k, seed, randomize,
                       steps, method, progress=gr.Progress()):
        yield from interpolate(ctx, session, a_source, a_row, a_upload, b_source, b_row, b_upload, mix, k, seed,
                               randomize, steps, method, progress)

    event = go.click(on_interpolate, [state, a_source, a_row, a_upload, b_source, b_row, b_upload, mix, k, seed,
                                      randomize, steps, method],
                     [frames, strip, gif, seed, details], api_name="interpolate", **ctx.model_queue)
    stop.click(None, cancels=[event], api_visibility="private")
    return {}
