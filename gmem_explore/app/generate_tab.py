"""Generate tab: snippets at random (by frequency), by bank row, by group, from an uploaded image or mixed from two bank
rows; live previews."""
from __future__ import annotations

import secrets

import gradio as gr
import torch

from ..events import Finished
from ..sampling import METHODS
from .common import (AppContext, Session, UserError, as_float, as_int, friendly, pick_seed, row_items, row_range,
                     typing_a_seed_unticks_random, upscale)
from .runs import hidden_seed, live, Stopped, stopped_status, wire_stop
from .files import RAW_INPUTS, encode_upload, image_upload, png_files

SOURCES = ("random (by frequency)", "bank row", "group", "uploaded image", "mix two rows")
# One plain sentence per choice, shown under the radio for the current choice.
SOURCE_HELP = {
    SOURCES[0]: "Each image gets a random bank row; rows with a higher frequency come up more often.",
    SOURCES[1]: "Every image uses the one bank row you pick; only the seed differs between them.",
    SOURCES[2]: "Each image gets a random row from the group you pick.",
    SOURCES[3]: "Your image is turned into a snippet, and every image is generated from it.",
    SOURCES[4]: "Two bank rows' snippets mixed (slerp) by the weight: a snippet the bank does not hold, so an image "
                "the model was not shown.",
}
MIX_METHOD = "slerp"  # keeps the mixed snippet's norm, as the Interpolate tab's default


def group_rows(bank, group: str) -> torch.Tensor:
    # read as stored: bank.labels would copy the labels of a session's edited bank for good (10 MB at 1.28M rows)
    labels = bank.column("labels")
    if labels is None or not bank.label_names:
        raise UserError("This bank has no groups; pick rows at random or by number instead.")
    if group not in bank.label_names:
        raise UserError(f"Unknown group {group!r}; choose one of {', '.join(bank.label_names)}")
    rows = (labels[:] == bank.label_names.index(group)).nonzero().flatten()
    if not len(rows):
        raise UserError(f"The group {group!r} has no rows in this bank.")
    return rows


def plan(ctx: AppContext, session: Session, source: str, row, group, upload, n: int, seed: int, row_b=None,
         weight=None) -> dict:
    """What to generate: keyword arguments for pipeline.generate plus a caption for each image."""
    pipe = ctx.pipeline(session)
    bank = pipe.bank
    seeds = [(seed + i) % (2**31) for i in range(n)]
    if source == SOURCES[0]:
        return {"kwargs": {"n": n, "choose": "noise"}, "seeds": seeds, "source": "random by frequency"}
    if source == SOURCES[1]:
        r = as_int(row, "row", 0, len(bank) - 1)
        return {"kwargs": {"indices": [r] * n}, "seeds": seeds, "source": "bank row"}
    if source == SOURCES[2]:
        rows = group_rows(bank, group)
        freq = bank.column("freq")  # the group's rows only, as stored
        weights = freq[rows].float() if freq is not None else torch.ones(len(rows))
        g = torch.Generator().manual_seed(seed)
        picked = rows[torch.multinomial(weights, n, replacement=True, generator=g)]
        return {"kwargs": {"indices": picked.tolist()}, "seeds": seeds, "source": f"group {group}"}
    if source == SOURCES[3]:
        snippet, _ = encode_upload(pipe, upload)
        return {"kwargs": {"snippets": snippet.repeat(n, 1)}, "seeds": seeds, "source": "uploaded image"}
    if source == SOURCES[4]:
        a = as_int(row, "first row", 0, len(bank) - 1)
        b = as_int(row_b, "second row", 0, len(bank) - 1)
        w = as_float(weight, "weight", 0.0, 1.0)
        snippet = pipe.mix(a, b, w, MIX_METHOD)
        return {"kwargs": {"snippets": snippet.repeat(n, 1)}, "seeds": seeds, "mix": (a, b, w),
                "source": f"mix of rows {a} and {b}, weight {w:g} on row {b} ({MIX_METHOD})"}
    raise UserError(f"Unknown snippet source {source!r}; choose one of {SOURCES}")


def captions(generation, mix: tuple | None = None) -> list[str]:
    """'seed N · row R' (or '· upload', '· mix A+B'): short enough for a thumbnail, the seed first so it is never
    cut off. The group, the mix's weight and the snippet source are in Details."""
    other = f"mix {mix[0]}+{mix[1]}" if mix else "upload"
    return [f"seed {seed} · " + (f"row {row}" if row is not None else other)
            for row, seed in zip(generation.indices, generation.seeds)]


def done_status(seed_used, details) -> str:
    stopped = stopped_status(details, seed_used)
    if stopped:
        return stopped
    if not isinstance(details, dict) or details.get("status") != "done":
        return ""
    n = len(details.get("seeds") or [])
    where = "rows and groups in Details" if any(r is not None for r in details.get("rows") or []) else \
        f"all from one {details['source']}" if str(details.get("source", "")).startswith("mix") else \
        "all from your image's snippet"
    return (f"**{n} image{'s' if n != 1 else ''} from seed {seed_used}** (image i uses seed + i) · "
            f"{details.get('steps')} {details.get('method')} steps · {where}")


def generate(ctx: AppContext, session: Session, source, row, group, upload, n, seed, randomize, steps, method,
             guidance, progress=None, row_b=1, weight=0.5):
    """Generator: yields (gallery items, seed, details) with previews, then the final images. `row_b` and `weight`:
    the second row and its weight when the source is "mix two rows" (`row` is the first)."""
    limits = ctx.limits
    n = as_int(n, "number of images", 1, limits.max_images)
    steps = as_int(steps, "steps", 1, limits.max_steps)
    guidance = as_float(guidance, "guidance", 0.0, 20.0)
    if method not in METHODS:
        raise UserError(f"Unknown sampler {method!r}; choose one of {METHODS}")
    seed = pick_seed(seed, randomize)
    job = plan(ctx, session, source, row, group, upload, n, seed, row_b, weight)
    pipe = ctx.pipeline(session)
    events = pipe.generate_iter(seeds=job["seeds"], method=method, steps=steps, guidance=guidance,
                                batch_size=limits.batch_size, **job["kwargs"])
    yield [], seed, {"status": "starting", "seed": seed}

    def preview(event):  # the step's images, captioned with that same step
        return [(upscale(im), f"seed {job['seeds'][event.start + i]} · step {event.step}/{event.total}")
                for i, im in enumerate(event.preview())]

    for event in live(ctx, session, "generate", events, progress):
        if isinstance(event, Stopped):
            items = preview(event.at) if event.at is not None else gr.update()
            yield items, seed, {"status": f"stopped {event.where()}", "seed": seed}
        elif not isinstance(event, Finished):
            yield preview(event), seed, {"status": f"step {event.step}/{event.total}", "seed": seed}
        else:
            out = event.generation
            items = [(upscale(im), c) for im, c in zip(out.images, captions(out, job.get("mix")))]
            groups = [pipe.bank.label_of(r) if r is not None else None for r in out.indices]
            details = {"status": "done", "seed": seed, "seeds": out.seeds, "rows": out.indices,
                       "source": job["source"], **({"groups": groups} if any(groups) else {}),
                       **{k: v for k, v in out.settings.items() if k != "guidance_interval"}}
            yield items, seed, details


def source_rows(ctx: AppContext, session: Session, details) -> dict:
    """The Source rows gallery after a run: the picture of each bank row its images came from (once each, in their
    order); hidden for images from an upload and for a stopped run."""
    rows = details.get("rows") if isinstance(details, dict) and details.get("status") == "done" else None
    rows = list(dict.fromkeys(r for r in rows or [] if r is not None))
    return gr.update(value=row_items(ctx, session, rows) if rows else None, visible=bool(rows))


def random_pair(bank_len: int) -> tuple[int, int]:
    """Two different random rows (the same row twice when the bank has one): "Two random rows" for the mix."""
    if bank_len < 2:
        return 0, 0
    a = secrets.randbelow(bank_len)
    return a, (a + 1 + secrets.randbelow(bank_len - 1)) % bank_len


def build(ctx: AppContext, state: gr.State) -> dict:
    pipe = ctx.store.get()
    bank = pipe.bank
    steps = pipe.sampler.steps
    last = max(len(bank) - 1, 0)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            with gr.Group(elem_id="generate-snippets"):  # what the snippets are: the source and its own inputs
                source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Snippets from", info=SOURCE_HELP[SOURCES[0]],
                                  elem_id="generate-source")
                row = gr.Number(0, precision=0, minimum=0, maximum=last, label=f"Bank row (0–{last})", visible=False,
                                elem_id="generate-row")
                row_b = gr.Number(len(bank) // 2, precision=0, minimum=0, maximum=last, label=f"Second row (0–{last})",
                                  visible=False, elem_id="generate-row-b")
                weight = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Weight of the second row", visible=False,
                                   elem_id="generate-weight")
                pick = gr.Button("Two random rows", size="sm", visible=False, elem_id="generate-pick")
                group = gr.Dropdown(bank.label_names or [], value=(bank.label_names or [None])[0], label="Group",
                                    visible=False)
                upload = image_upload("Image to take the snippet from", visible=False, height=160,
                                      elem_id="generate-upload")
            with gr.Group(elem_id="generate-seeds"):  # how many and which seeds
                n = gr.Slider(1, ctx.limits.max_images, value=4, step=1, label="Number of images")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed (image i uses seed + i)",
                                     elem_id="generate-seed")
                    randomize = gr.Checkbox(True, label="Random seed", elem_id="generate-random")
                    typing_a_seed_unticks_random(seed, randomize)
            with gr.Accordion("Sampler", open=False, elem_id="generate-sampler"):
                method = gr.Radio(list(METHODS), value=pipe.sampler.method, label="Sampler",
                                  info="sde: the paper's Euler-Maruyama; euler / heun: ODE", elem_id="generate-method")
                steps_in = gr.Slider(1, ctx.limits.max_steps, value=min(steps, ctx.limits.max_steps), step=1,
                                     label="Steps", elem_id="generate-steps")
                guidance = gr.Slider(0.0, 10.0, value=1.0, step=0.25, label="Guidance (1 = none)",
                                     info="classifier-free guidance with a zero snippet; GMem v1 was trained without it")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
        with gr.Column(scale=2):
            # the run's progress bar is drawn over this line, not over the gallery: gradio's progress overlay covers
            # every output it is shown on, and the live previews under it could not be seen for the whole run
            status = gr.Markdown(elem_id="generate-status")
            # height "fit-content": gradio's "auto" pins the grid between 450 px and 55% of the window (scrolling
            # inside it); fit-content makes the gallery exactly as tall as its rows of images.
            gallery = gr.Gallery(label="Images", columns=4, height="fit-content", format="png",
                                 elem_id="generate-gallery", object_fit="contain", elem_classes=["fit-grid"])
            # the bank rows the images came from, as pictures (source_rows)
            sources = gr.Gallery(label="Source rows", columns=8, height="fit-content", format="png", visible=False,
                                 allow_preview=False, buttons=[], elem_id="generate-sources", elem_classes=["fit-grid"])
            with gr.Accordion("Details", open=False):
                details = gr.JSON(label="Seeds, rows and settings")
    seed_used = hidden_seed()

    def show_inputs(session, choice):
        # The row's range is re-read whenever a row box is shown: the session's bank may belong to another
        # model by now, or have grown by rows added on the Swap tab.
        rows = row_range(ctx.bank(session))
        mix = choice == SOURCES[4]
        first = {**rows, "visible": True} if choice in (SOURCES[1], SOURCES[4]) else gr.update(visible=False)
        second = {**row_range(ctx.bank(session), "Second row"), "visible": True} if mix else gr.update(visible=False)
        return (gr.update(info=SOURCE_HELP.get(choice, "")), first, second, gr.update(visible=mix),
                gr.update(visible=mix), gr.update(visible=choice == SOURCES[2]), gr.update(visible=choice == SOURCES[3]))

    source.change(show_inputs, [state, source], [source, row, row_b, weight, pick, group, upload], queue=False,
                  api_visibility="private")
    pick.click(lambda session: random_pair(len(ctx.bank(session))), state, [row, row_b], queue=False,
               api_visibility="private")

    @ctx.gpu
    @friendly
    def on_generate(session, source, row, group, upload, n, seed, randomize, steps, method, guidance, row_b=1,
                    weight=0.5, progress=gr.Progress()):
        for items, used, details in generate(ctx, session, source, row, group, upload, n, seed, randomize, steps,
                                             method, guidance, progress, row_b, weight):
            if details.get("status") == "done":  # the final images as files named for their seed and row
                items = png_files(items, "gmem")
            yield items, used, details

    wire_stop(go, stop, state, status, "generate")
    event = go.click(on_generate, [state, source, row, group, upload, n, seed, randomize, steps_in, method, guidance,
                                   row_b, weight],
                     [gallery, seed_used, details], api_name="generate", show_progress_on=[status], **RAW_INPUTS,
                     **ctx.model_queue)
    event.success(lambda used, info: (used, done_status(used, info)), [seed_used, details], [seed, status],
                  queue=False, api_visibility="private")
    event.success(lambda session, info: source_rows(ctx, session, info), [state, details], sources,
                  api_visibility="private", show_progress="hidden")
    # a failed run leaves no earlier run's images, details or summary behind (they read as this run's results)
    event.failure(lambda: ([], None, FAILED), None, [gallery, details, status], queue=False, api_visibility="private")
    return {"group": group, "row": row, "row_b": row_b, "steps": steps_in, "method": method}


FAILED = "**No images**: the run failed; the red message at the top right says why."
