"""Pictures of bank rows for banks without thumbnails: each row's generation, made on demand and kept on disk per model
(bank/gallery.py), so a restarted app, another session or a notebook finds them again. common.row_pictures shows a
bank's thumbnails where it has them, and these where it has none. Imports no other module of the app: common.py
holds one RowPictures in its AppContext."""
from __future__ import annotations

import contextlib

import torch

from ..bank.gallery import Gallery
from ..pipeline import GMemPipeline


class RowPictures(Gallery):
    """The app's gallery: pictures of rows (generation from seed 0 with the checkpoint's sampler, at most 64 px),
    keyed by the row's stored bytes, not its number: a row a session replaced gets a picture of its own, while an
    unedited row's picture serves every session (their copies share the model and the row)."""

    def get(self, pipe: GMemPipeline, rows: list[int], slot=contextlib.nullcontext(), gpu=lambda fn: fn
            ) -> list[torch.Tensor | None]:
        """uint8 (h, w, 3) images of `rows` of pipe.bank, generating the missing ones (in batches, holding `slot`
        while the model runs); None for a row that cannot be generated (NaN, infinite or all zeros)."""
        return self.pictures(pipe, rows, slot, gpu)
