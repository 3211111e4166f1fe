"""The Gradio app: build_app() assembles the tabs (generate_tab, bank_tab, swap_tab, interpolate_tab) around one
per-session state and a shared, read-only model store; launch() serves it with a bounded queue.

    from gmem_explore.app.server import build_app, launch
    demo = build_app()                                   # the embedded default checkpoint
    demo = build_app(pipeline_factory=lambda name: my_pipeline)   # tests inject a tiny model
    launch(demo, host="127.0.0.1", port=7860)
"""
from __future__ import annotations

import logging
from typing import Callable

import gradio as gr

from . import bank_tab, generate_tab, interpolate_tab, swap_tab
from ..bank.sources import ImageFolderSource
from ..pipeline import GMemPipeline, parameter_line
from .common import AppContext, Limits, PipelineStore, Session, friendly, row_range, spaces_gpu
from ..checkpoints.hub import CheckpointUnavailable, available

log = logging.getLogger(__name__)

TITLE = "GMem explorer"
# the header: what GMem is in one line, then what to do here
TAGLINE = ("**GMem** is a diffusion transformer that draws an image from a *memory snippet*, the feature vector of a "
           "real image kept in a memory bank, instead of from a class label.")
INTRO = ("Pick snippets from the bank, mix two, or swap in your own image, and watch the sampler work. Every image is "
         "captioned with its seed and bank row (settings and sources under Details), so any result can be made again.")
# a deliberate look: one theme (indigo and pink, the Space card's colours) and the header and the model's note on
# tinted panels. System fonts only: the themes' Google fonts are a download, and the app runs offline.
# Soft's own primary button (indigo 400 under white text) read as disabled: indigo 600 reads as the one to press.
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="pink", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]).set(
    button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
    button_primary_text_color="white", button_cancel_background_fill="*secondary_100",
    button_cancel_background_fill_hover="*secondary_200", button_cancel_text_color="*secondary_800",
    # the labels drawn over images (a gallery's, the strip's, the GIF's) at gradio's default size and place: Soft's
    # larger, inset ones covered the top of the Interpolate strip and ran under the GIF's buttons on a phone
    block_label_margin="0", block_label_text_size="*text_sm", block_label_padding="*spacing_sm *spacing_lg")
# .fit-grid (a gallery's elem_classes): gradio gives every gallery column at least 100 px, so a column count that
# does not fit the width scrolls sideways and cuts the last column off; these columns shrink to fit instead, and
# captions may use the thumbnail's whole width (gradio stops them at 80%). Without a set height a .fit-grid gallery
# is as tall as its rows: gradio's "auto" height is at least 450 px, which leaves empty space under two rows.
# A gallery without a fixed height (height="fit-content") gets overflow "auto": gradio's "scroll" draws a scroll bar
# beside one row of images that has nothing to scroll.
# A .fit-grid column is also never narrower than its gallery's --thumb-min, the width of its longest caption: a
# narrower gallery shows fewer columns (at most `columns`). In an 800 px window the Generate gallery's 4 columns
# would be 80 px: "seed 905427 · row 1225" would read "seed 9054…", the Bank's neighbours would lose their cosine
# and its generations their seed. The widths (captions measured in chromium, plus the 6-digit seeds and rows
# of gmem-v1-xl): "seed 123456 · row 639999" 150 px, "row 639999 · cos 0.99" 121, "row 639999 · seed 3" 115,
# "w 0.14 · 250/250" 98, "seed 2147483647" (the largest typed seed, Swap) 96, "row 639999" 73, "seed 3" 50. Rows take
# the square thumbnails' height: gradio's 100 px minimum row would stretch 45 px wide page thumbnails into tall,
# cropped strips.
# The strip's frames are as tall as the strip is wide allows (44 px on a phone, 15 px for 48 frames at 1280 px): the
# label "Strip" and the download buttons, drawn over the image's top 28 px, covered them; the image starts below.
# Phones (up to 480 px): the four tabs' 16 px side padding (in the theme's system font) pushed "Interpolate" into a
# "More tabs" menu at 400 px; 8 px keeps all four in view (gradio measures the tabs on a hidden copy of the buttons,
# so the rule is for both). A caption may wrap onto two lines, so that the Generate gallery shows two columns. Two
# 156 px columns need 320 px, and a 400 px phone's gallery is 318 px wide (360 px: 278): one column of 318 px images
# made 16 images 5,000 px tall.
CSS = """
.gradio-container { max-width: 1600px !important; margin: 0 auto !important; }
#header { padding: var(--spacing-lg) var(--spacing-xl); border-radius: var(--radius-lg);
  background: linear-gradient(90deg, var(--primary-50), var(--secondary-50)); }
#header h1 { margin: 0 0 var(--spacing-sm) 0; }
#model-note { padding: var(--spacing-md) var(--spacing-xl); border-left: 4px solid var(--primary-400);
  background: var(--background-fill-secondary); border-radius: var(--radius-md); }
#generate-status { min-height: 2.6em; }
#generate-gallery img, #swap-gallery img, #interp-frames img, #bank-selection img, #swap-before img,
#swap-after img, #interp-strip img, #bank-neighbours img, #bank-generations img, #bank-pages img
{ image-rendering: pixelated; }
.fit-grid .grid-container {
  grid-template-columns: repeat(auto-fill, minmax(max(var(--thumb-min, 0px),
      calc((100% - (var(--grid-cols) - 1) * var(--spacing-lg)) / var(--grid-cols))), 1fr)) !important;
  grid-auto-rows: auto !important; }
#generate-gallery { --thumb-min: 156px; }
#swap-gallery { --thumb-min: 104px; }
#bank-neighbours { --thumb-min: 128px; }
#bank-generations { --thumb-min: 120px; }
#interp-frames { --thumb-min: 104px; }
#bank-selection, #bank-pages, #swap-before, #swap-after { --thumb-min: 72px; }
.fit-grid .caption-label { max-width: 100% !important; }
.fit-grid .grid-wrap.fixed-height { min-height: 0 !important; max-height: none !important; overflow-y: auto; }
.grid-wrap:not(.fixed-height) { overflow-y: auto !important; }
#interp-strip .image-frame { padding-top: 28px; }
@media (max-width: 480px) {
  .tab-container button { padding: 0 var(--size-2) !important; }
  #generate-gallery { --thumb-min: 120px; }
  .fit-grid .caption-label { white-space: normal !important; }
}
"""


def default_factory(device: str = "cpu", revisions: dict | None = None) -> Callable[[str], GMemPipeline]:
    """Loads a checkpoint by name or path; `revisions` pins Hub names to a version (app.py --revision applies to
    its --checkpoint only: another model picked in the Model panel loads its newest version)."""
    def load(name: str) -> GMemPipeline:
        return GMemPipeline.from_pretrained(name, device=device, revision=(revisions or {}).get(name))
    return load


def describe(pipe: GMemPipeline, name: str) -> str:
    """The Model panel's line: pipe.describe()'s fields, as summary() and `gmem info` show them."""
    d = pipe.describe()
    enc = "yes" if d["encoder"] else "no (uploads are disabled)"
    return (f"**{name}** · {parameter_line(d['parameters'])} · {d['image_size']} px"
            f" · bank {d['bank']['rows']:,} × {d['bank']['dim']} · snippet encoder: {enc} · default sampler "
            f"{d['sampler']['method']}, {d['sampler']['steps']} steps · device {d['device']}")


def model_note(pipe: GMemPipeline, name: str) -> str:
    """What the model in use does, in a visitor's words, above the tabs: the checkpoint's own "about" (its config.json;
    emoji-32's says that it reproduces its rows and where new images come from), else a line made from its size."""
    d = pipe.describe()
    about = (d["info"] or {}).get("about")
    if not isinstance(about, str) or not about.strip():
        about = (f"{d['image_size']} px images drawn from a memory bank of {d['bank']['rows']:,} snippets; rows give "
                 f"images like their own source images, mixes and uploads give new ones.")
    return f"**What {name} does.** {about.strip()}"


def model_label(checkpoint: str) -> str:
    """The Model panel's label: 'Model: emoji-32' (a folder by its name, not its server path)."""
    name = str(checkpoint).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or str(checkpoint)
    return f"Model: {name}"


def load_failure(e: Exception) -> str:
    """Why a load failed, in a visitor's words. A missing Hub file's full text (how to download and convert it,
    which cache folders were searched) is for whoever runs the server: it goes to the server log instead."""

    if isinstance(e, CheckpointUnavailable):
        offline = "unreachable" in str(e) or "HF_HUB_OFFLINE" in str(e)
        return ("it is not available on this server (" + ("no internet" if offline else "the download failed")
                + " and no local copy)")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    return first[:200] + "…" if len(first) > 200 else first


def load_checkpoint(ctx: AppContext, session: Session, name: str, path: str):
    """Switch this session to another checkpoint; on failure the session keeps its current model, and the
    message says which one."""
    # a dropdown with custom values passes on whatever an API client sends (4.0, a list): only text names a checkpoint
    target = (path.strip() if isinstance(path, str) else "") or (name.strip() if isinstance(name, str) else "")
    if not target:
        raise gr.Error("Choose a checkpoint name or type a local checkpoint folder.")

    def still(why: str):
        current = session.checkpoint
        return session, (f"⚠️ Could not load {why}.\n\nStill using "
                         + describe(ctx.store.get(current), current)), gr.update()

    if target not in available() and target != ctx.store.default and not ctx.limits.allow_local_checkpoints:
        return still(f"`{target}`: this server only loads the named checkpoints {', '.join(available())} "
                     f"(loading folders by path is off)")
    try:
        pipe = ctx.store.get(target)
    except Exception as e:  # noqa: BLE001 - any failure to load leaves the app on its current model
        log.warning("could not load checkpoint %r for a session (it stays on %r): %s", target, session.checkpoint, e)
        why = load_failure(e)
        gr.Warning(f"Could not load {target}: {why}; still using {session.checkpoint}")
        return still(f"`{target}`: {why}")
    dropped = session.bank is not None
    session.checkpoint, session.bank, session.edits = target, None, []
    note = "\n\n(this session's edited bank belonged to the previous model and was dropped)" if dropped else ""
    bank = pipe.bank
    groups = gr.update(choices=bank.label_names or [], value=(bank.label_names or [None])[0])
    return session, describe(pipe, target) + note, groups


def build_app(pipeline_factory: Callable[[str], GMemPipeline] | None = None, checkpoint: str = "emoji-32",
              limits: Limits | None = None, device: str = "cpu", use_spaces_gpu: bool = True,
              revision: str | None = None, imagenet_train=None) -> gr.Blocks:
    """The app's Blocks. The default checkpoint is loaded now, so a broken one fails before the server starts.
    `revision` pins `checkpoint` (a Hub name) to a version; it is for the default factory only. `imagenet_train`:
    the image folder the bank was built from (ImageNet's train folder for v2's full bank): the Bank tab then shows
    a row's source image and class (bank/sources.py); a folder that is not there fails here, before the server."""

    if revision is not None and pipeline_factory is not None:
        raise ValueError("revision= pins the default factory's checkpoint; a pipeline_factory of your own "
                         "chooses its versions itself")
    factory = pipeline_factory or default_factory(device, {checkpoint: revision})
    source = ImageFolderSource(imagenet_train) if imagenet_train else None
    ctx = AppContext(PipelineStore(factory, checkpoint), limits or Limits(),
                     spaces_gpu() if use_spaces_gpu else (lambda fn: fn), source)
    pipe = ctx.store.get()
    steps_default = min(pipe.sampler.steps, ctx.limits.max_steps)
    method_default = pipe.sampler.method

    # delete_cache: gradio's copies of uploads and returned files older than an hour go, checked hourly (a public
    # Space otherwise keeps every upload, GIF and bank download until it restarts)
    # fill_width: gradio's fixed 1280 px page left a 1440 px window's Generate images at 188 px with empty margins;
    # the page takes the window's width (CSS keeps it to 1600 px) and the images grow with it
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600), fill_width=True) as demo:
        # Per-session: gr.State deep-copies this for every browser tab; dropped an hour after the last change.
        state = gr.State(ctx.new_session(), time_to_live=3600)
        gr.Markdown(f"# {TITLE}\n{TAGLINE} {INTRO}", elem_id="header")
        note = gr.Markdown(model_note(pipe, checkpoint), elem_id="model-note")
        # the label names the model in use, so a visitor sees it without opening the panel
        with gr.Accordion(model_label(checkpoint), open=False, elem_id="model-panel") as model_panel:
            with gr.Row():
                ck_name = gr.Dropdown(available(), value=checkpoint if checkpoint in available() else None,
                                      allow_custom_value=True, label="Checkpoint",
                                      info="emoji-32 is built in; gmem-v1-xl downloads 4.7 GB from the Hub, "
                                           "gmem-v2-xl-160ep / -600ep about 7.5 GB (network, bank, VA-VAE)")
                # only where the operator allows paths: elsewhere every path typed here would be refused
                ck_path = gr.Textbox(label="…or a local checkpoint folder", placeholder="/path/to/checkpoint",
                                     visible=ctx.limits.allow_local_checkpoints)
                ck_btn = gr.Button("Load", scale=0)
            ck_md = gr.Markdown(describe(pipe, checkpoint), elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate") as generate_page:
                gen = generate_tab.build(ctx, state)
            with gr.Tab("Bank", id="bank") as bank_page:
                bank = bank_tab.build(ctx, state, steps_default)
            with gr.Tab("Swap", id="swap") as swap_page:
                swap = swap_tab.build(ctx, state, steps_default)
            with gr.Tab("Interpolate", id="interpolate") as interpolate_page:
                interp = interpolate_tab.build(ctx, state, steps_default, method_default)

        def on_load(session, name, folder):
            return load_checkpoint(ctx, session, name, folder)

        # every row box's label and maximum follow the session's bank: after a model load, and when its tab opens
        # (the Swap tab's "add" grows the bank)
        row_boxes = {"Bank row": gen["row"], "Second row": gen["row_b"], **interp["rows"]}

        def ranges(*names):
            """The row boxes' updates: a list for several outputs, the update itself for one (gradio takes a
            one-element list as the box's value and fails to show it)."""
            def updates(session):
                found = [row_range(ctx.bank(session), name) for name in names]
                return found[0] if len(found) == 1 else found
            return updates

        def after_load(session):
            """The dropdown names the model in use, also after a failed switch (it kept the old one), and the row
            boxes give the range of that model's bank."""
            return [gr.update(value=session.checkpoint if session.checkpoint in available() else None),
                    gr.update(label=model_label(session.checkpoint)), *ranges(*row_boxes)(session)]

        def show_note(session):
            """The note above the tabs says what the model now in use does (each checkpoint its own)."""
            return model_note(ctx.store.get(session.checkpoint), session.checkpoint)

        loaded = ck_btn.click(on_load, [state, ck_name, ck_path],
                              [state, ck_md, gen["group"]], api_name="load_checkpoint", **ctx.model_queue)
        loaded.then(after_load, state, [ck_name, model_panel, *row_boxes.values()], api_visibility="private")
        loaded.then(show_note, state, note, api_visibility="private")
        generate_page.select(ranges("Bank row", "Second row"), state, [gen["row"], gen["row_b"]], queue=False,
                             api_visibility="private")
        interpolate_page.select(ranges(*interp["rows"]), state, list(interp["rows"].values()), queue=False,
                               api_visibility="private")
        interpolate_page.select(**interp["pictures"], api_visibility="private", show_progress="hidden")
        swap_page.select(**swap["relabel"])  # its own rule: the box has no maximum (swap_tab.row_box)

        stats_fn, stats_in, stats_out = bank["refresh"]
        page_fn, page_out = bank["page"]
        details_fn, details_out = bank["details"]
        bank_page.select(stats_fn, stats_in, stats_out, api_name="bank_stats")
        bank_page.select(**bank["colour"], queue=False, api_visibility="private")
        bank_page.select(lambda s: page_fn(s, 1), state, page_out, api_visibility="private")
        bank_page.select(details_fn, [state, bank["row"]], details_out, api_visibility="private")
        bank_page.select(**bank["draw"])  # the map (packed once per bank and colouring; the browser keeps it)
    demo.gmem_context = ctx  # for tests and benchmarks: the store, limits and sessions' factory
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           max_queue: int = 32, max_file_size: str = "10mb", **kwargs):
    """Serve with a bounded queue: model calls run `Limits.concurrency` at a time (set in build_app), light calls
    (paging, row details) 4 at a time; at most `max_queue` requests wait (later ones are told the queue is full);
    uploads larger than `max_file_size` are refused."""
    demo.queue(max_size=max_queue, default_concurrency_limit=4)
    # footer_links: the footer shows only "Use via API", where the README sends API users (no gradio settings or
    # branding links); so CSS must not hide the footer, or that link goes with it
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                       show_error=True, css=CSS, theme=THEME, footer_links=["api"], **kwargs)


__all__ = ["build_app", "launch", "friendly"]
