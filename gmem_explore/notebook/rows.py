"""Rows as pictures in a notebook: what a row draws (its generation from seed 0, kept in the gallery on disk, so a
second run or the app finds it again) and, for a bank built from an image folder (v2's full bank: ImageNet's train
folder, in sorted file order), the image the row came from.

    from gmem_explore.notebook.rows import row_pictures, show_rows, show_source
    pictures = row_pictures(pipe, [0, 1, 2])     # uint8 (h, w, 3) each, at most 64 px; None for an unusable row
    show_rows(pipe, [0, 1, 2])                   # a captioned grid of them
    show_source(pipe, 12345, "/data/imagenet/train")   # the row's picture beside its source image and class

Generating a missing picture runs the model once per row (in batches of 16, seed 0, the checkpoint's sampler): for
gmem-v1-xl or v2 on a CPU that is minutes a batch; rows already looked at, here or in the app, are read from disk.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ..bank.gallery import Gallery, GalleryOptions, default_folder
from ..bank.sources import ImageFolderSource
from ..pipeline import GMemPipeline
from ..values import whole
from .figures import READABLE_CELL, STATIC_COLUMNS, labelled_grid, show

GREY = 200  # a row without a picture (NaN, infinite or all zeros: the bank refuses to hand it out)


@functools.lru_cache(maxsize=4)
def _gallery_at(folder: Path) -> Gallery:
    return Gallery(folder)


def default_gallery() -> Gallery:
    """The kernel's gallery in $GMEM_CACHE/gallery (or ~/.cache/gmem-explore/gallery), made once per folder."""
    return _gallery_at(default_folder())


def checked_rows(pipe: GMemPipeline, rows) -> list[int]:
    if isinstance(rows, (int, torch.Tensor)) and torch.as_tensor(rows).ndim == 0:
        rows = [rows]
    return [whole(r, "a bank row", 0, len(pipe.bank) - 1) for r in rows]


def row_pictures(pipe: GMemPipeline, rows, gallery: Gallery | None = None) -> list[torch.Tensor | None]:
    """The pictures of `rows` of pipe.bank: uint8 (h, w, 3), at most GalleryOptions.size px a side, read from the
    gallery or generated (the missing rows together, seed 0); None for a row that cannot be generated."""
    return (gallery or default_gallery()).pictures(pipe, checked_rows(pipe, rows))


def show_rows(pipe: GMemPipeline, rows, gallery: Gallery | None = None, ncols: int = STATIC_COLUMNS):
    """A captioned grid ('row N') of the rows' pictures, displayed and returned (a PIL image)."""
    rows = checked_rows(pipe, rows)
    pictures = row_pictures(pipe, rows, gallery)
    side = max((p.shape[0] for p in pictures if p is not None), default=GalleryOptions().size)
    tiles = [p if p is not None else torch.full((side, side, 3), GREY, dtype=torch.uint8) for p in pictures]
    grid = labelled_grid(torch.stack(tiles), [f"row {r}" for r in rows], min(ncols, max(1, len(rows))))
    show(grid)
    return grid


def as_source(source) -> ImageFolderSource:
    return source if isinstance(source, ImageFolderSource) else ImageFolderSource(source, progress=True)


def show_source(pipe: GMemPipeline, row, source, gallery: Gallery | None = None, max_side: int = 256):
    """The row's picture beside the image it came from in `source` (an ImageFolderSource, or the train folder's
    path), with its class: a matplotlib Figure, displayed and returned. A folder whose file count differs from the
    bank's rows is warned about (the rows may not line up with its files); a row beyond its files, or a file that is
    not an image, is a clear error."""
    from matplotlib.figure import Figure

    (r,) = checked_rows(pipe, [row])
    source = as_source(source)
    source.check_rows(len(pipe.bank))
    found = source.row(r)
    image = source.image(r, max_side=max_side)
    (picture,) = row_pictures(pipe, [r], gallery)
    fig = Figure(figsize=(2 * READABLE_CELL / 50, READABLE_CELL / 50 + 0.8), dpi=100)
    left, right = fig.subplots(1, 2)
    if picture is not None:
        left.imshow(picture.numpy(), interpolation="nearest")
    left.set_title(f"row {r}: generated (seed 0)", fontsize=9)
    right.imshow(image.numpy())
    right.set_title(f"source: {found.name or found.synset}"[:40], fontsize=9)
    fig.suptitle(f"{found.caption()}\n{os.path.join(found.synset, found.path.name)}", fontsize=8, y=0.02,
                 va="bottom")
    for ax in (left, right):
        ax.set_axis_off()
    show(fig)
    return fig
