"""Figures the notebooks show: PNG output of matplotlib figures, captioned image grids, titled figures as plain
cell outputs. Sizes are chosen to be read where a notebook is rendered without its kernel (GitHub, nbviewer, an
HTML export), which shows a PNG at its own size up to a page of about 900 px."""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import torch

# px per image in the figures a notebook keeps as outputs: 32 px emojis at 4x. At 72 px a figure of five columns
# was 380 x 160 px with 10 px captions
READABLE_CELL = 128
STATIC_COLUMNS = 8  # 8 columns of 132 px: the width of a rendered notebook's page


def figure_png(fig) -> bytes:
    """PNG bytes of a matplotlib Figure (figures here are built without pyplot: no global state, no window)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def show(obj, out=None):
    """Display a Figure (as PNG), a PIL image or anything else, into an ipywidgets Output when given."""
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is None:  # plain Python (tests calling callbacks): nothing can show it, skip the PNG encode
        return
    if hasattr(obj, "savefig"):
        obj = Image(data=figure_png(obj), format="png")
    with out if out is not None else contextlib.nullcontext():
        display(obj)


def short_label(name: str | None, width: int = 8) -> str:
    """A caption-sized group name: its first word, cut to `width` characters ("Food & Drink" -> "Food")."""
    return (name or "").split(" ")[0][:width]


def labelled_grid(images: torch.Tensor, titles: Sequence[str], ncols: int, cell: int = READABLE_CELL):
    """A PIL image: the images upscaled (nearest) to about `cell` pixels, a caption under each, ncols per row.
    Captions grow with the cell (10 px text under 72 px images, 14 px under 128 px).

    Drawn with PIL rather than matplotlib: a 32-image grid takes milliseconds instead of a second of subplots."""
    from PIL import Image, ImageDraw, ImageFont

    images = torch.as_tensor(images)
    n, h, w, _ = images.shape
    scale = max(1, cell // max(h, w))
    text = max(10, cell // 9)  # font size in px
    char = 0.6 * text  # the default font's average character width
    cw, chh, caption, pad = w * scale, h * scale, text + 4, 4
    longest = max((len(str(t)) for t in titles), default=0)
    width = max(cw, int(char * min(22, longest)))  # a column widens for captions up to 22 characters
    nrows = max(1, -(-n // ncols))
    canvas = Image.new("RGB", (ncols * (width + pad) + pad, nrows * (chh + caption + pad) + pad), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=text)
    for i, (img, title) in enumerate(zip(images, titles)):
        r, c = divmod(i, ncols)
        x, y = pad + c * (width + pad), pad + r * (chh + caption + pad)
        tile = Image.fromarray(img.numpy()).resize((cw, chh), Image.NEAREST)
        canvas.paste(tile, (x + (width - cw) // 2, y))
        draw.text((x, y + chh + 1), str(title)[: int(width // char)], fill="black", font=font)
    return canvas


def show_titled(figures: Sequence[tuple[str, object]]) -> None:
    """Display (title, figure) pairs as ordinary cell outputs: the title printed, the figure as a PNG. A rendered
    notebook (GitHub, nbviewer, an HTML export) shows these; a widget's pictures live in its Output areas, which
    need a live kernel."""
    for title, figure in figures:
        print(title)
        show(figure)
