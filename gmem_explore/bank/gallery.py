"""A kept gallery of generated row pictures: what a row draws, for banks that hold no images (the released ones).

    gallery = Gallery()                              # $GMEM_CACHE/gallery, or ~/.cache/gmem-explore/gallery
    pictures = gallery.pictures(pipe, [0, 5, 17])    # uint8 (h, w, 3) each; generated once, then read from disk

A row's picture is its generation from seed 0 (GalleryOptions.seed, the seed of the app's "Generate 4 from this row"
and the Swap tab's comparisons, so the picture is the first of those images) with the pipeline's own sampler
settings, shrunk to at most 64 px a side (GalleryOptions.size; smaller models' images are kept as they are). Missing
rows are generated together, in batches of GalleryOptions.batch_size; a row the bank refuses to hand out (NaN,
infinite, all zeros) gets None and is not kept.

On disk: one PNG per picture, `<folder>/<maker>-seed<S>-<size>px/<k[:2]>/<k>.png`, where `maker` is
fingerprints.image_maker of the network, autoencoder and sampler settings (another model or recipe draws anew) and
`k` hashes the row's stored bytes and dtype (a row edited anywhere gets a picture of its own; an unedited row's
picture serves every copy of the bank). The 256 subfolders keep each under ~5,000 files at 1.28M rows. Size
(measured): a photograph shrunk to 64 px is a PNG of 5-9 KB (8-12 KB of disk in 4 KB blocks): about 10 MB per 1,000
rows; emoji-32's 32 px pictures are about 2 KB (4 KB of disk): 4 MB per 1,000 rows. Only rows someone looked at are
kept; deleting the folder at any time costs only their regeneration.
Files are written atomically (safefiles.py): a picture that cannot be read back (damaged, truncated, not RGB) is
generated again and rewritten, with a warning naming it. A folder that cannot be written keeps the pictures in
memory only, with one warning. Pictures are also kept in memory (GalleryOptions.memory_rows per model).

Imports no pipeline: a pipeline is used through .model, .autoencoder, .sampler, .bank and .generate().
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import fingerprints
from ..safefiles import write_bytes_atomic


@dataclass(frozen=True)
class GalleryOptions:
    size: int = 64  # px a side kept: 12 KB raw per picture; the app shows pictures at 128 px (2x nearest)
    seed: int = 0  # every row's picture is its generation from this seed
    memory_rows: int = 1024  # pictures kept in memory per model (12 MB at 64 px)
    batch_size: int = 16  # rows generated together

    def __post_init__(self):
        for name, low in (("size", 1), ("seed", 0), ("memory_rows", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"GalleryOptions.{name} must be a whole number of at least {low}; got {value!r}")


def default_folder() -> Path:
    root = os.environ.get("GMEM_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "gmem-explore") / "gallery"


def row_key(rows, row: int) -> str:
    """32 hex digits of sha256 over one row as stored (dtype and bytes): `rows` is a bank's rows column."""
    value = rows[row].contiguous()
    digest = hashlib.sha256(f"{value.dtype} {tuple(value.shape)}|".encode())
    digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def shrink(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (h, w, 3) at most `size` px a side (Lanczos, aspect kept); smaller images as they are."""
    image = image.detach().cpu()
    if max(image.shape[:2]) <= size:
        return image.contiguous()
    pil = Image.fromarray(image.numpy())
    pil.thumbnail((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())


def png_bytes(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.numpy(), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def read_picture(path: Path, size: int) -> torch.Tensor:
    """A kept picture; ValueError saying what is wrong with a file we would not trust."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            img.load()  # a truncated or damaged PNG fails here (its chunks carry CRCs)
            if img.mode != "RGB" or max(img.size) > size or min(img.size) < 1:
                raise ValueError(f"a {img.mode} image of {img.size[0]}x{img.size[1]} px, not RGB of at most {size} px")
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for damaged files; each one is a damaged picture
        raise ValueError(f"{type(e).__name__}: {e}") from None


class Gallery:
    """Generated pictures of bank rows, kept on disk and in memory (see the module docstring).

    folder: where the pictures go (None: default_folder(); False: memory only). `generated` counts the rows
    generated so far (a test's way to see that a second gallery reads the first one's files)."""

    def __init__(self, folder=None, options: GalleryOptions | None = None):
        self.options = options or GalleryOptions()
        self.folder = None if folder is False else Path(folder).expanduser() if folder is not None else default_folder()
        self.writable = self.folder is not None
        self.generated = 0
        self._memory: dict[str, OrderedDict] = {}  # maker folder name -> OrderedDict[row key, picture]
        self._makers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (state, {ae/sampler: key})
        self._lock = threading.Lock()
        self._maker_lock = threading.Lock()

    # ---- keys -------------------------------------------------------------------------------------------------
    def maker(self, pipe) -> str:
        """The folder name of pipe's pictures: image_maker(...), the seed and the size. The network's hash is
        remembered per model object and recomputed when its tensors changed in place (training bumps their version
        counters) or were replaced (load_state_dict(assign=True))."""
        model = pipe.model
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        state = (sum(t._version for t in tensors), sum(t.data_ptr() for t in tensors), len(tensors))
        settings = pipe.sampler.to_config() if hasattr(pipe.sampler, "to_config") else pipe.sampler
        extra = (id(pipe.autoencoder), repr(sorted(settings.items())) if isinstance(settings, dict) else repr(settings))
        with self._maker_lock:
            known = self._makers.get(model)
            if known is None or known[0] != state:
                known = (state, {})
                self._makers[model] = known
            if extra not in known[1]:
                known[1][extra] = (fingerprints.image_maker(model, pipe.autoencoder, pipe.sampler), pipe.autoencoder)
            key = known[1][extra][0]
        return f"{key}-seed{self.options.seed}-{self.options.size}px"

    def path(self, maker: str, key: str) -> Path | None:
        return None if self.folder is None else self.folder / maker / key[:2] / f"{key}.png"

    # ---- pictures ---------------------------------------------------------------------------------------------
    def pictures(self, pipe, rows, hold=contextlib.nullcontext(), on_device=lambda fn: fn
                 ) -> list[torch.Tensor | None]:
        """uint8 (h, w, 3) pictures of `rows` of pipe.bank, from memory, disk, or generated (the missing ones
        together, holding `hold` while the model runs, through `on_device`: spaces.GPU on a ZeroGPU Space); None
        for a row that cannot be generated."""
        rows = [int(r) for r in rows]
        column = pipe.bank.column("rows")
        wrong = [r for r in rows if not 0 <= r < len(column)]
        if wrong:
            raise IndexError(f"row {wrong[0]} is not a row of the bank, which has rows 0 to {len(column) - 1}")
        keys = [row_key(column, r) for r in rows]
        maker = self.maker(pipe)
        found = self._from_memory(maker, keys)
        for key in dict.fromkeys(k for k in keys if k not in found):
            picture = self._from_disk(maker, key)
            if picture is not None:
                found[key] = picture
                self._remember(maker, key, picture)
        missing = {}  # row key -> the first row with it: rows of equal content are generated once
        for r, k in zip(rows, keys):
            if k not in found:
                missing.setdefault(k, r)
        missing = [(r, k) for k, r in missing.items()]
        if missing:
            made = on_device(self._generate)(pipe, [r for r, _ in missing], hold)
            self.generated += len(missing)
            for (_, key), image in zip(missing, made):
                picture = None if image is None else shrink(image, self.options.size)
                found[key] = picture
                if picture is not None:
                    self._remember(maker, key, picture)
                    self._write(maker, key, picture)
        return [found[k] for k in keys]

    def _from_memory(self, maker: str, keys: list[str]) -> dict:
        with self._lock:
            cache = self._memory.setdefault(maker, OrderedDict())
            found = {k: cache[k] for k in keys if k in cache}
            for k in found:
                cache.move_to_end(k)
        return found

    def _remember(self, maker: str, key: str, picture: torch.Tensor) -> None:
        with self._lock:
            cache = self._memory.setdefault(maker, OrderedDict())
            cache[key] = picture
            cache.move_to_end(key)
            while len(cache) > self.options.memory_rows:
                cache.popitem(last=False)

    def _from_disk(self, maker: str, key: str) -> torch.Tensor | None:
        path = self.path(maker, key)
        if path is None or not path.is_file():
            return None
        try:
            return read_picture(path, self.options.size)
        except (OSError, ValueError) as e:
            warnings.warn(f"the gallery picture {path} cannot be used ({e}); the row's picture is generated again "
                          f"and the file rewritten", stacklevel=3)
            return None

    def _write(self, maker: str, key: str, picture: torch.Tensor) -> None:
        path = self.path(maker, key)
        if path is None or not self.writable:
            return
        try:
            write_bytes_atomic(path, png_bytes(picture))
        except OSError as e:
            self.writable = False  # one warning, not one per picture
            warnings.warn(f"cannot write the gallery of row pictures in {self.folder} ({e}); pictures are kept in "
                          f"memory only for now. Set GMEM_CACHE to a writable folder to keep them.", stacklevel=3)

    def _generate(self, pipe, rows: list[int], hold) -> list[torch.Tensor | None]:
        seed, batch = self.options.seed, self.options.batch_size

        def run(chosen):
            return list(pipe.generate(indices=chosen, seeds=[seed] * len(chosen), batch_size=batch).images)

        with hold:
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
