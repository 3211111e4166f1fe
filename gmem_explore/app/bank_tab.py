"""Bank tab: the interactive map (UMAP or PCA, cached; mapping.py says what it shows, scatter.py/.js draw it in the
browser) with its box and lasso selections, paging through rows, one row's details (thumbnail, nearest neighbours,
generations) and statistics (size, dimension, frequency histogram).

Thumbnail grids here are for picking rows: a click selects the row (no enlarged preview, which would cover the
grid and outlive the next selection) and their captions are short enough to be read whole at grid size."""
from __future__ import annotations

import gradio as gr
import torch
from PIL import Image

from ..bank.map2d import is_cached, uniform_frequency
from ..images import ImageError
from . import scatter
from .common import (DISPLAY_SIZE, AppContext, Session, as_int, friendly, row_caption, row_pictures, thumbnails,
                     upscale)
from .runs import run_to_end
from .files import RAW_INPUTS, png_files
# the map's logic, named here too for the tab's callers (tests, benchmarks)
from .mapping import (COLOR_BY, SHOW_SELECTED, bank_map, box_mask, map_colours, map_coords, map_view,  # noqa: F401
                      region, ring_row, rings_of)

PAGE_SIZE = 48
NEIGHBOURS = 8


def stats(ctx: AppContext, session: Session):
    """(markdown summary, frequency histogram figure, or None when every row has the same frequency)."""
    from matplotlib.figure import Figure

    bank = ctx.bank(session)
    s = bank.stats()
    lines = [f"**{s['rows']:,} rows** × **{s['dim']}** dimensions ({s['dtype']})"
             + (f"; mean row norm {s['norm_mean']:.3f}" if "norm_mean" in s else "")
             + (f", {s['zero_rows']} zero rows" if s["zero_rows"] else "")
             + (f", {s['nonfinite_rows']} broken rows (NaN or infinite: never a neighbour; replace or remove them)"
                if s["nonfinite_rows"] else "")]
    uniform = uniform_frequency(bank) if len(bank) else None
    if uniform:
        lines.append(uniform)
    elif "freq_total" in s:
        lines.append(f"frequency: min {s['freq_min']:g}, max {s['freq_max']:g}, total {s['freq_total']:g}")
    if "groups" in s:
        lines.append("groups: " + ", ".join(f"{k} {v}" for k, v in s["groups"].items()))
    if session.bank is not None:
        lines.append(f"*this session's edited copy ({len(session.edits)} edits); the file on disk is unchanged*")
    if uniform or not len(bank):
        return "\n\n".join(lines), None
    fig = Figure(figsize=(5, 2.6), dpi=100)
    ax = fig.add_subplot()
    f = bank.column("freq")[:].float()  # an edited copy's column read, not copied into the copy
    ax.hist(f.numpy(), bins=min(50, max(5, len(bank) // 20)), color="tab:blue")
    ax.set_xlabel("frequency (how often a row is drawn)")
    ax.set_ylabel("rows")
    if f.max() > 100 * f.clamp_min(1e-12).min():
        ax.set_yscale("log")
    fig.tight_layout()
    return "\n\n".join(lines), fig


def colour_choices(bank) -> dict:
    """The Colour-by radio for this bank: "frequency" only where rows differ in frequency (in emoji-32 every row has
    frequency 1, and a map in one colour said "nothing to colour by"); the radio's note says why it is missing."""
    uniform = uniform_frequency(bank) if len(bank) else "the bank is empty"
    choices = [c for c in COLOR_BY if c != "frequency" or uniform is None]
    info = "" if uniform is None else f"no colouring by frequency: {uniform}"
    return {"choices": choices, "info": info}


def colour_radio(ctx: AppContext, session: Session, current) -> dict:
    """The radio's update when the tab opens: the session's bank may be another model's by now."""
    found = colour_choices(ctx.bank(session))
    return gr.update(**found, value=current if current in found["choices"] else found["choices"][0])


def page(ctx: AppContext, session: Session, number):
    """(thumbnails, rows, 'page k of K') for page `number` (1-based) of PAGE_SIZE rows."""
    bank = ctx.bank(session)
    pages = max(1, -(-len(bank) // PAGE_SIZE))
    number = as_int(number, "page", 1, pages)
    rows = list(range((number - 1) * PAGE_SIZE, min(number * PAGE_SIZE, len(bank))))
    return thumbnails(bank, rows), rows, number, f"page {number} of {pages} (rows {rows[0]}–{rows[-1]})" if rows else "empty bank"


SOURCE_SIDE = 256  # px a side a row's source image is decoded at (a JPEG's draft mode): it is shown 140 px high


def row_source(ctx: AppContext, session: Session, r: int):
    """(source image or None, a markdown line or None) for row r, where the app was given the image folder the bank
    was built from (python app.py --imagenet-train DIR). Rows this session added or replaced are said to be so; a
    folder with another number of files than the checkpoint's bank has rows is said to be one (its files may not
    line up with the rows); an unreadable file is named, never a failed row."""
    source = ctx.source
    if source is None:
        return None, None
    base = ctx.store.get(session.checkpoint).bank
    if r >= len(base):
        return None, "**source**: none (a row added in this session)"
    notes = []
    mismatch = source.check_rows(len(base))
    if mismatch:
        notes.append(f"⚠ {mismatch}")
    if session.bank is not None and not torch.equal(session.bank.column("rows")[r], base.column("rows")[r]):
        notes.append("this row was replaced in this session: the image is the original row's source")
    image = None
    try:
        found = source.row(r)
        line = f"**source**: {found.caption()} · `{found.path.relative_to(source.folder)}`"
        image = Image.fromarray(source.image(r, max_side=SOURCE_SIDE).numpy())
    except ImageError as e:
        line = f"**source**: {found.caption()}; its file cannot be shown: {e}"
    except (IndexError, OSError) as e:
        line = f"**source**: none: {e}"
    return image, "\n\n".join([line, *notes])


def row_details(ctx: AppContext, session: Session, row):
    """(row picture, markdown, nearest-neighbour thumbnails, their rows, source image) for one row. The picture is
    the bank's thumbnail, or for a bank without thumbnails the row's generation from seed 0 (row_pictures: kept on
    disk once made); the source image and its class are there when the app was given the bank's image folder."""
    bank = ctx.bank(session)
    r = as_int(row, "row", 0, len(bank) - 1)
    try:
        nn, sims = bank.nearest([r], NEIGHBOURS)  # the row itself left out
        pairs, why_none = [(int(i), float(s)) for i, s in zip(nn[0], sims[0])], None
    except ValueError as e:  # a broken row (NaN, infinite, all zeros) or no other row: its details, and why no neighbours
        pairs, why_none = [], f"no neighbours: {e}"
    # 'row 58 · cos 0.93': the group would not fit under a grid-sized thumbnail, the row's own details say it
    items = [(img, f"row {i} · cos {s:.2f}") for (img, _), (i, s) in zip(thumbnails(bank, [i for i, _ in pairs]), pairs)]
    info = [f"**{row_caption(bank, r)}**"]
    uniform = uniform_frequency(bank)
    if uniform is not None:  # a frequency that every row has says nothing about this row
        info.append(f"drawn uniformly, like every row (1 in {len(bank):,})")
    else:
        freq = bank.column("freq")[:]
        info.append(f"frequency {float(freq[r]):g} (drawn with probability {float(freq[r] / freq.sum()):.2e})")
    info.append(f"norm {float(bank.column('rows')[r].float().norm()):.3f}")
    if why_none:
        info.append(why_none)
    if bank.column("thumbnails") is None:  # the picture is not the row's image: say what it is
        info.append("picture: its generation from seed 0")
    picture = row_pictures(ctx, session, [r], DISPLAY_SIZE)[0]
    source, about_source = row_source(ctx, session, r)
    text = " · ".join(info) + (f"\n\n{about_source}" if about_source else "")
    return picture, text, items, [i for i, _ in pairs], source


def check_row(ctx: AppContext, session: Session, row) -> int:
    """The row as an int, or a UserError naming the bank's range. Run as its own step with no outputs before the
    step that fills the details, so a bad row shows one message instead of an error badge on every output."""
    return as_int(row, "row", 0, len(ctx.bank(session)) - 1)


def short_captions(items):
    """Grid captions cut to 'row N': 'row 12 · Smileys & Emotion' does not fit under a thumbnail."""
    return [(img, cap.split(" · ")[0]) for img, cap in items]


def row_generations(ctx: AppContext, session: Session, row, steps, n: int = 4, progress=None):
    """n images from one row with seeds 0..n-1 (the same seeds every time, so edits can be compared)."""
    pipe = ctx.pipeline(session)
    r = as_int(row, "row", 0, len(pipe.bank) - 1)
    steps = as_int(steps, "steps", 1, ctx.limits.max_steps)
    out = run_to_end(pipe.generate_iter(indices=[r] * n, seeds=list(range(n)), steps=steps,
                                        batch_size=ctx.limits.batch_size), progress)
    return [(upscale(im), f"row {r} · seed {s}") for im, s in zip(out.images, out.seeds)]


# no buttons: "Download All" of row-picking thumbnails gave image.png, image-2.png ... (rows are picked here, not saved)
GRID = {"allow_preview": False, "format": "png", "elem_classes": ["fit-grid"], "buttons": []}  # see the module docstring


def unmark() -> gr.Gallery:
    """No thumbnail marked. Runs whenever a grid gets new content: gradio marks the clicked thumbnail by position,
    so the mark would otherwise stay on whichever row now holds that place."""
    return gr.Gallery(selected_index=None)


def build(ctx: AppContext, state: gr.State, steps_default: int) -> dict:
    bank = ctx.store.get().bank
    method0 = "umap" if is_cached(bank, "umap") else "pca"
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                method = gr.Radio(["umap", "pca"], value=method0, label="Map",
                                  info="UMAP takes 10-60 s the first time on a CPU, then it is read from the cache")
                color = gr.Radio(value="group", label="Colour by", elem_id="bank-colour", **colour_choices(bank))
            # drawn in the browser (scatter.js): pan, zoom, hover for a row's picture, click for its details, shift+drag
            # a box or lasso a region for the grid beside it
            plot = scatter.map_component(ctx.maps, elem_id="bank-map")
            # the API's box (percent of the map's extent) and its endpoint, /bank_map: hidden, the page selects on
            # the map itself
            x0, x1, y0, y1 = [gr.Slider(0, 100, value=v, step=1, label=f"box {a} {e} %", visible=False)
                              for a, e, v in (("x", "from", 0), ("x", "to", 100), ("y", "from", 0), ("y", "to", 100))]
            draw = gr.Button("Draw map / select box", visible=False, elem_id="bank-map-button")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="bank-summary")
            selection = gr.Gallery(label="Selected rows (click one for details)", columns=4, height=300,
                                   elem_id="bank-selection", **GRID)
            selected_rows = gr.State([])
            # the clicked row's details sit right under the grid it was picked from
            with gr.Row():
                # no buttons: on a 64 px thumbnail they covered its label, and the rows' files are not the point
                thumb = gr.Image(label="Row picture", height=140, interactive=False, format="png", scale=1,
                                 min_width=120, buttons=[], elem_id="bank-thumb")
                # the row's image in the folder the bank was built from (--imagenet-train), its class in row_md
                source_image = gr.Image(label="Source image", height=140, interactive=False, format="png", scale=1,
                                        min_width=120, buttons=[], elem_id="bank-source",
                                        visible=ctx.source is not None)
                with gr.Column(scale=2, min_width=160):
                    row = gr.Number(0, precision=0, minimum=0, label="Row (press Enter, or click a thumbnail)",
                                    elem_id="bank-row")
                    row_md = gr.Markdown(elem_id="bank-row-info")
            gen_btn = gr.Button("Generate 4 from this row", elem_id="bank-generate")
    with gr.Row():
        with gr.Column(scale=1):
            stats_md = gr.Markdown(elem_id="bank-stats")
            hist = gr.Plot(label="Frequency histogram", visible=False)
        with gr.Column(scale=2):
            neighbours = gr.Gallery(label="Nearest neighbours (cosine; click one for its details)", columns=4,
                                    elem_id="bank-neighbours", **GRID)
            neighbour_rows = gr.State([])
            # no fixed height: a fixed one cut the captions off and added scroll bars
            generations = gr.Gallery(label="Generations (seeds 0-3)", columns=4, format="png",
                                     elem_id="bank-generations", elem_classes=["fit-grid"])
    with gr.Accordion("All rows, page by page", open=False):
        with gr.Row():
            prev_btn = gr.Button("◀ previous", size="sm")
            page_no = gr.Number(1, precision=0, minimum=1, label="Page", scale=0, min_width=100)
            next_btn = gr.Button("next ▶", size="sm")
            page_md = gr.Markdown()
        page_gallery = gr.Gallery(label="Rows", columns=12, elem_id="bank-pages", **GRID)
        page_rows = gr.State([])

    def as_update(found: dict) -> gr.HTML:
        return gr.HTML(value=found["title"], points=found["points"], rings=found["rings"])

    @friendly
    def on_map(session, method, color_by, x_from, x_to, y_from, y_to, row, progress=gr.Progress()):
        def placed(done, total):  # a map computed for the first time: about 2 minutes for 1.28M rows on 2 cores
            progress(done / max(total, 1), desc=f"mapping the bank: {done:,} of {total:,} rows placed")

        found, items, shown, summary = bank_map(ctx, session, method, color_by, x_from, x_to, y_from, y_to, row,
                                                progress=placed)
        return as_update(found), short_captions(items), shown, summary

    @friendly
    def on_ring(session, row, neighbour_rows):
        """The rings on the map follow the row just shown and its nearest neighbours (the browser redraws them)."""
        return gr.HTML(rings=rings_of(row, neighbour_rows, len(ctx.bank(session))))

    @friendly
    def on_point(session, evt: gr.EventData):
        """A click on a point of the map: its row goes into the row box (the details follow)."""
        return check_row(ctx, session, (evt._data or {}).get("row"))

    @friendly
    def on_region(session, evt: gr.EventData):
        data = evt._data or {}
        items, shown, summary = region(ctx, session, data.get("token"), data.get("polygon"))
        return short_captions(items), shown, summary

    @friendly
    def on_stats(session):
        text, fig = stats(ctx, session)
        return text, gr.Plot(value=fig, visible=fig is not None)

    @friendly
    def on_check(session, row):
        check_row(ctx, session, row)

    @friendly
    def on_details(session, row):
        return row_details(ctx, session, row)  # plain values: /bank_row's API answer is the picture's file

    @friendly
    def on_page(session, page_number):
        items, rows, number, text = page(ctx, session, page_number)
        return short_captions(items), rows, number, text

    @friendly
    def on_row_generate(session, row, progress=gr.Progress()):
        return png_files(row_generations(ctx, session, row, steps_default, progress=progress), "gmem")

    map_inputs = [state, method, color, x0, x1, y0, y1, row]
    map_outputs = [plot, selection, selected_rows, summary]
    draw_map = ctx.model_call(on_map)
    # RAW_INPUTS on the events an API client can call: the handlers check every value (as_int, as_float, the
    # choices); gradio's own checks answered "4", None or NaN with "Could not preprocess input component at index 7
    # (a `number` component) of the event handler ..." (and 2**64 reached the handler)
    draw.click(draw_map, map_inputs, map_outputs, api_name="bank_map", **RAW_INPUTS, **ctx.model_queue)
    for control in (method, color):
        control.change(draw_map, map_inputs, map_outputs, api_visibility="private", **RAW_INPUTS, **ctx.model_queue)
    details_outputs = [thumb, row_md, neighbours, neighbour_rows, source_image]
    # the rings follow the row just shown and its neighbours (a prop of the map: nothing is redrawn on the server)
    ring = dict(fn=on_ring, inputs=[state, row, neighbour_rows], outputs=plot, api_visibility="private",
                show_progress="hidden", queue=False, **RAW_INPUTS)
    # check first (no outputs), fill only on success: a bad row is one toast, not an error badge per output
    row.submit(on_check, [state, row], None, api_visibility="private", **RAW_INPUTS).success(
        on_details, [state, row], details_outputs, api_name="bank_row", **RAW_INPUTS).then(**ring)
    # a click on a point and a box or lasso on the map (scatter.js triggers them)
    plot.select(on_point, state, row, api_visibility="private", show_progress="hidden").success(
        on_details, [state, row], details_outputs, api_visibility="private").then(**ring)
    plot.region(on_region, state, [selection, selected_rows, summary], api_visibility="private")
    gen_btn.click(on_check, [state, row], None, api_visibility="private", **RAW_INPUTS).success(
        ctx.model_call(on_row_generate), [state, row], generations, api_name="bank_row_generate", **RAW_INPUTS,
        **ctx.model_queue)

    def pick(rows, evt: gr.SelectData):
        return rows[evt.index] if rows and evt.index is not None and evt.index < len(rows) else gr.update()

    # every grid keeps the rows it shows in a State beside it, so a click maps its position to a row
    for gal, rows_state in ((selection, selected_rows), (page_gallery, page_rows), (neighbours, neighbour_rows)):
        gal.select(pick, rows_state, row, api_visibility="private").then(
            on_details, [state, row], details_outputs, api_visibility="private").then(**ring)
    for gal in (selection, page_gallery, neighbours):
        gal.change(unmark, None, gal, api_visibility="private", queue=False)

    page_outputs = [page_gallery, page_rows, page_no, page_md]
    page_no.submit(on_page, [state, page_no], page_outputs, api_name="bank_page", **RAW_INPUTS)

    @friendly
    def on_step(session, page_number, delta):
        pages = max(1, -(-len(ctx.bank(session)) // PAGE_SIZE))
        # the box may name a page the bank no longer has (Reset dropped the rows added on the Swap tab, or another
        # model was loaded): step from the nearest page there is
        current = min(as_int(page_number, "page", 1, 10**12), pages) if page_number is not None else 1
        items, rows, number, text = page(ctx, session, min(max(current + delta, 1), pages))
        return short_captions(items), rows, number, text

    prev_btn.click(lambda s, p: on_step(s, p, -1), [state, page_no], page_outputs, api_visibility="private")
    next_btn.click(lambda s, p: on_step(s, p, 1), [state, page_no], page_outputs, api_visibility="private")
    return {"refresh": (on_stats, [state], [stats_md, hist]), "page": (on_page, page_outputs),
            "draw": dict(fn=draw_map, inputs=map_inputs, outputs=map_outputs, api_visibility="private",
                         **RAW_INPUTS, **ctx.model_queue),
            "colour": {"fn": lambda session, current: colour_radio(ctx, session, current), "inputs": [state, color],
                       "outputs": color},
            "details": (on_details, details_outputs), "row": row, "page_no": page_no}
