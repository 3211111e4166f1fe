"""Images -> a MemoryBank: one row per image (the snippet encoder's feature), the image as its thumbnail, its group
as label, the same frequency for every row. `gmem build-bank`, the fine-tuning notebook and
scripts/train_default.py all build their banks here.

    bank = bank_from_images(pipe.encoder, data)                        # a data.ImageSet: labels and names with it
    bank = bank_from_images(encoder, images, labels, ["cats", "dogs"], progress=True)
"""
from __future__ import annotations

import torch

from .memory import MemoryBank
from ..values import as_whole


def bank_from_images(encoder, images, labels=None, label_names=None, *, freq: float = 1.0, batch_size: int = 256,
                     progress: bool = False, meta: dict | None = None) -> MemoryBank:
    """A bank with one row per image: encoder.encode(images) in float32, the images themselves as thumbnails, and
    frequency `freq` for every row (no row is preferred until you say so).

    `images`: uint8 (N, H, W, 3), or a data.ImageSet, whose labels and label names are used unless given (load it at
    the thumbnail size you want to keep: the thumbnails are the images as given). `progress`: a bar over the images
    when there is more than one batch of `batch_size` (a large folder through a big encoder takes minutes).
    `meta` is stored with the bank (its source, the image names, a licence)."""
    if encoder is None:
        raise RuntimeError("building a bank needs the checkpoint's snippet encoder; this checkpoint has none")
    if hasattr(images, "images"):  # a data.ImageSet (not imported here: data reads image files, the bank does not)
        labels = images.labels if labels is None else labels
        label_names = images.label_names if label_names is None else label_names
        images = images.images
    images = torch.as_tensor(images)
    if len(images) == 0:
        raise ValueError("no images to build a bank from")
    if as_whole(batch_size, 1) is None:  # 0 failed as "range() arg 3 must not be zero"
        raise ValueError(f"batch_size must be a whole number of images, 1 or more; got {batch_size!r}")
    starts = range(0, len(images), batch_size)
    bar = None
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm  # looked up when a bar is drawn, as everywhere in the package

        bar = tqdm(total=len(images), desc="encoding images", unit="image")
    parts = []
    with torch.no_grad():
        for i in starts:
            parts.append(encoder.encode(images[i:i + batch_size]).float())
            if bar is not None:
                bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    return MemoryBank(torch.cat(parts), torch.full((len(images),), float(freq)), labels, label_names, images, meta)
