"""Pictures of bank rows for banks without thumbnails: each row's generation, made on demand and kept per model
(common.row_pictures shows a bank's thumbnails where it has them, and these where it has none). Imports no other
module of the app: common.py holds one RowPictures in its AppContext."""
from __future__ import annotations

import contextlib
import hashlib
import threading
import weakref
from collections import OrderedDict

import torch

from ..bank.memory import MemoryBank
from ..pipeline import GMemPipeline

ROW_PICTURES_PER_MODEL = 256  # generated row pictures kept per model: 256 of 256 px RGB are 50 MB (gmem-v1-xl)
ROW_PICTURE_SEED = 0  # a row's picture is its generation from this seed, as the Bank and Swap tabs' "seed 0"


class RowPictures:
    """Generated pictures of bank rows, for banks without thumbnails: built on demand, one generation (seed 0, the
    checkpoint's sampler) per row, and kept per model in a least-recently-used dict of ROW_PICTURES_PER_MODEL.

    Keyed by the row's stored bytes, not its number: a row a session replaced gets a picture of its own, while an
    unedited row's picture serves every session (their copies share the model and the row)."""

    def __init__(self, capacity: int = ROW_PICTURES_PER_MODEL):
        self.capacity = capacity
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict[key, image]
        self._lock = threading.Lock()
        self.generated = 0  # rows generated so far (tests count the misses)

    @staticmethod
    def key(bank: MemoryBank, row: int) -> str:
        return hashlib.sha1(bank.column("rows")[row].contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()

    def get(self, pipe: GMemPipeline, rows: list[int], slot=contextlib.nullcontext(), gpu=lambda fn: fn,
            batch_size: int = 16) -> list[torch.Tensor | None]:
        """uint8 (H, W, 3) images of `rows` of pipe.bank, generating the missing ones (in batches, holding `slot`
        while the model runs); None for a row that cannot be generated (NaN, infinite or all zeros)."""
        keys = [self.key(pipe.bank, r) for r in rows]
        with self._lock:
            cache = self._by_model.setdefault(pipe.model, OrderedDict())
            found = {k: cache[k] for k in keys if k in cache}
            for k in found:
                cache.move_to_end(k)
        missing = list(dict.fromkeys((r, k) for r, k in zip(rows, keys) if k not in found))
        if missing:
            made = gpu(self._generate)(pipe, [r for r, _ in missing], slot, batch_size)
            self.generated += len(missing)
            with self._lock:
                for (_, k), image in zip(missing, made):
                    found[k] = image
                    if image is not None:
                        cache[k] = image
                while len(cache) > self.capacity:
                    cache.popitem(last=False)
        return [found[k] for k in keys]

    @staticmethod
    def _generate(pipe: GMemPipeline, rows: list[int], slot, batch_size: int) -> list[torch.Tensor | None]:
        def run(chosen):
            return list(pipe.generate(indices=chosen, seeds=[ROW_PICTURE_SEED] * len(chosen),
                                      batch_size=batch_size).images)
        with slot:
            try:
                return run(rows)
            except ValueError:  # an unusable row (the bank refuses it by number): the others still get pictures
                out = []
                for r in rows:
                    try:
                        out += run([r])
                    except ValueError:
                        out.append(None)
                return out
