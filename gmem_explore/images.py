"""Turning whatever a user hands us (a path, bytes, a PIL image, an array) into RGB uint8, or a clear error.

Transparent images are composited over white (emoji and logos have transparent backgrounds; black would
change their meaning), palette / 16-bit / CMYK / greyscale images are converted, animated images give their
first frame, and images too small or too large to be sensible are refused before they are decoded in full. A
caller that needs only a small image (the app: models take 32 to 256 px) passes max_side: a large JPEG is then decoded
at a reduced scale (PIL's draft mode, 1/2 to 1/8) and any image is shrunk to fit, so a 45 MP photo is accepted
while the limit on decoded pixels (max_pixels) still holds.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .values import is_whole

MAX_PIXELS = 40_000_000  # about 6300 x 6300 decoded (120 MB as RGB); a decompression bomb beyond this is refused
MAX_BYTES = 50 * 1024 * 1024  # uploads larger than 50 MB are refused


class ImageError(ValueError):
    """An input that is not a usable image; the message says why and what to do."""


def open_image(source, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """A PIL image from a path, bytes, file object, PIL image, numpy array or uint8 tensor (H, W, 3).

    An image that would decode to more than `max_pixels` pixels is refused before it is decoded. `max_side`: the
    largest side the caller needs; a JPEG is then decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale that still
    holds it (PIL's draft), so the pixel limit applies to what is decoded, not to what the camera wrote.

    Errors about an input that came from a path name that path: in a folder of thousands of images the user has
    to find the one bad file."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, torch.Tensor):
        if source.is_meta:
            raise ImageError("the image tensor is on the 'meta' device (a shape without values); give real pixels")
        # NumPy has no bfloat16: floats go through float32 (values in [0, 1], as for arrays)
        source = (source.float() if source.is_floating_point() else source).detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return array_to_image(source)
    name = None  # the path, for the messages, when the input came from one
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image file: give the path of one image inside it (PNG, "
                             f"JPEG, WebP, GIF or BMP); to load a whole folder of images, use "
                             f"gmem_explore.data.load_folder(folder)")
        if not path.is_file():
            raise ImageError(f"No image file at {path}")
        name = str(path)
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"{name} is {path.stat().st_size >> 20} MB; images over {MAX_BYTES >> 20} MB are refused")
        # Read whole so no file handle stays open behind a lazily decoded (e.g. animated) image.
        source = path.read_bytes()
    empty = False  # an empty file is common (an interrupted copy or download) and worth saying so
    if isinstance(source, (bytes, bytearray)):
        empty = len(source) == 0
        if len(source) > MAX_BYTES:
            raise ImageError(f"the upload is {len(source) >> 20} MB; images over {MAX_BYTES >> 20} MB are refused")
        source = io.BytesIO(source)
    try:
        # PIL's own bomb check (its process-wide Image.MAX_IMAGE_PIXELS, left as it is) refuses headers over
        # about 179M pixels at open; ours, on the pixels actually decoded, follows
        img = Image.open(source)
        if max_side is not None and img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(f"{name or 'the image'} is {width}x{height} pixels; at most {max_pixels:,} pixels are "
                             f"accepted. Resize it first.")
        img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name or 'the image'} has more than {max_pixels:,} pixels; resize it first") from None
    except UnidentifiedImageError:
        # PIL's own text here is "cannot identify image file <_io.BytesIO object at 0x...>": it names our
        # in-memory buffer, not the user's file, so it is left out.
        why = "it is empty (0 bytes)" if empty else "its format is not recognised"
        raise ImageError(f"{_not_readable(name)}: {why}. {_remedy(name)}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{_not_readable(name)}: {_without_buffer_repr(e)}. {_remedy(name)}") from None
    return img


def _not_readable(name: str | None) -> str:
    return f"{name or 'the data'} is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP...)"


def _remedy(name: str | None) -> str:
    if name is None:
        return "Give a PNG, JPEG, WebP, GIF or BMP image."
    return "Re-save or replace that file, or move it out of the image folder."


def _without_buffer_repr(error: BaseException) -> str:
    """PIL's message with any repr of the BytesIO we handed it replaced: the address means nothing to a user."""
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", str(error)).rstrip(". ")
    return text or type(error).__name__


def array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        channels_first = arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and min(arr.shape[1:]) > 4  # (3, 64, 64), not (4, 4, 5)
        hint = " (channels first: use x.permute(1, 2, 0) or np.moveaxis(x, 0, -1))" if channels_first else ""
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}{hint}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            arr = (arr * 255).round().astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        else:
            raise ImageError(f"image arrays must be uint8 in [0, 255] or floats in [0, 1]; got {arr.dtype}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB, alpha composited over `background`; first frame of animations; EXIF rotation applied."""
    if getattr(img, "is_animated", False):
        img.seek(0)
    if img.width == 0 or img.height == 0:
        raise ImageError("the image has no pixels (0 width or height)")
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "F":  # 32-bit float pixels: PIL would cut [0, 1] values to 0 (a black image)
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageError("the float image holds NaN or infinite pixels")
        img = Image.fromarray((arr * (255.0 if arr.max() <= 1.0 else 1.0)).round().clip(0, 255).astype(np.uint8))
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # I;16 modes are 16-bit by their mode (a dark one, every value <= 255, came out ~250x too bright when the
        # range was guessed from its maximum); "I" (32-bit, also how older Pillows open 16-bit PNGs) is guessed
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((arr / top * 255).round().clip(0, 255).astype(np.uint8))
    if img.mode == "P" or img.mode == "PA" or img.mode == "LA" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        base = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(base, img).convert("RGB")
    return img.convert("RGB")


MAX_SIZE = 1024  # pixels a side: GMem models are 32 to 256 px; 100,000 would ask for terabytes, not an image set


def check_size(size, allow_none: bool = False):
    """The side in pixels an image is resized to: a whole number in [1, MAX_SIZE] (None keeps sizes when allowed)."""
    if size is None and allow_none:
        return None
    if not is_whole(size, 1, MAX_SIZE):
        keep = " (or None to keep the images' own size)" if allow_none else ""
        raise ValueError(f"size must be a whole number of pixels in [1, {MAX_SIZE}]{keep}, the side the images are "
                         f"resized to (the model's input size, e.g. 32 or 256); got {size!r}")
    return int(size)


def load_rgb(source, size: int | None = None, max_pixels: int = MAX_PIXELS, max_side: int | None = None
             ) -> torch.Tensor:
    """uint8 (H, W, 3); resized to size x size (centre-cropped to square, bicubic antialiased) when size is given,
    else shrunk (aspect kept) to at most `max_side` pixels a side when that is given. `max_pixels`: the most pixels
    decoded (open_image)."""
    size = check_size(size, allow_none=True)
    img = open_image(source, max_pixels, max_side)
    try:
        img = to_rgb(img)
    except ImageError as e:
        if isinstance(source, (str, Path)):  # to_rgb never saw the path: add it, so the bad file can be found
            raise ImageError(f"{source}: {e}") from None
        raise
    if size is not None:
        img = ImageOps.fit(img, (int(size), int(size)), Image.BICUBIC)
    elif max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def load_batch(sources, size: int) -> torch.Tensor:
    """uint8 (N, size, size, 3) from a list of images of any kind."""
    sources = list(sources)
    if not sources:
        raise ValueError("no images given (an empty list): give at least one image")
    return torch.stack([load_rgb(s, size) for s in sources])


def as_uint8_batch(images, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) from a uint8 tensor / array of any size, or from a list of images of any kind (each
    loaded, centre-cropped and resized to size x size). Encoders call this before their own resizing."""
    if isinstance(images, (str, Path, bytes, bytearray, Image.Image)):  # one image, not a batch
        images = [images]
    elif not isinstance(images, (torch.Tensor, np.ndarray)) and hasattr(images, "__iter__"):
        images = list(images)  # a generator or another iterable of images
    if isinstance(images, (list, tuple)):
        images = load_batch(images, size)
    if isinstance(images, torch.Tensor) and images.is_meta:
        raise ValueError("images: the tensor is on the 'meta' device (a shape without values); give real pixels")
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3) or a list of PIL images; got {tuple(images.shape)} "
                         f"{images.dtype}. Use gmem_explore.images.load_batch to convert files.")
    return images
