"""Files in and out of the app: uploads decoded and checked by our own code (never read outside gradio's upload
folder), and the files the app hands back to the browser (bank downloads, GIFs) in a scratch folder that cleans
itself."""
from __future__ import annotations

import base64
import re
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from ..images import MAX_BYTES, ImageError, load_rgb
from ..pipeline import GMemPipeline
from .common import UserError


# Events that read an upload box take their inputs unprocessed (FileData dicts, raw numbers): gradio's own
# Image.preprocess opens every upload with PIL and turns a bad file into a raw "Could not preprocess input
# component" error. A wrapper on the box's preprocess does not survive: a gr.update (e.g. visible=True) makes
# gradio re-create the component from its constructor arguments. Our handlers check every value themselves
# (as_int, as_float, upload_to_image), so nothing is lost, and the upload's original file name comes along.
RAW_INPUTS = {"preprocess": False}


# An upload larger than this a side is shrunk on arrival (to a PNG in the box): models take 32 to 256 px, and a
# 45 MP phone photo (8192 x 5464) was refused only when a run decoded it. Also the side images.load_rgb's JPEG draft
# aims at, so such a photo is decoded at 1/4 scale (2048 x 1366), never at 45 MP.
UPLOAD_SIDE = 1024


def image_upload(label: str, **kwargs) -> gr.Image:
    """An upload box; events reading it must pass **RAW_INPUTS and decode it with upload_to_image. Each upload is
    checked on arrival (checked_upload): an unreadable file is taken out of the box with a warning that says why,
    where the box showed a broken picture until a run failed on it, and a large image is shrunk."""
    # gradio's "Drop Image Here - or - Click to Upload" is cut off in the 190 px Interpolate boxes, and the text
    # stays on one line (a newline is not shown): at most about 20 characters fit there
    kwargs.setdefault("placeholder", "Drop image or click")
    box = gr.Image(type="filepath", label=label, sources=["upload", "clipboard"], **kwargs)
    box.upload(checked_upload, box, box, preprocess=False, api_visibility="private")
    return box


def checked_upload(upload):
    """What an upload box holds after an upload: nothing (and a warning) for a file that is not a readable image,
    a PNG at most UPLOAD_SIDE a side for a larger image, the upload itself otherwise."""
    if not upload:
        return gr.update()
    try:
        image = upload_to_image(upload, max_side=UPLOAD_SIDE)
    except (UserError, ImageError) as e:
        gr.Warning(f"{e} The upload was removed.")
        return None
    path = upload.get("path") if isinstance(upload, dict) else upload
    if isinstance(path, str) and not path.startswith("data:"):
        with Image.open(path) as original:  # the header only: its size before shrinking
            if max(original.size) <= UPLOAD_SIDE:
                return gr.update()
    name = Path(str(upload.get("orig_name") if isinstance(upload, dict) else path) or "upload").stem
    out = scratch_path(f"{file_stem(name)}-{image.shape[1]}x{image.shape[0]}.png")
    Image.fromarray(image.numpy()).save(out, format="PNG")
    gr.Info(f"The image was shrunk to {image.shape[1]}x{image.shape[0]} pixels (the model uses at most "
            f"{UPLOAD_SIDE} a side).")
    return str(out)


# A pasted image arrives as a base64 data URL inside the request: 14 M characters are 10 MB of image, the app's
# default upload limit (launch's max_file_size), which such a request would otherwise skip.
MAX_INLINE_CHARS = 14_000_000


def in_upload_folder(path: Path) -> bool:
    """Whether `path` lies inside gradio's upload folder (GRADIO_TEMP_DIR, else <tmp>/gradio). An API request may
    send a bare {"path": ...} or a string that gradio passes through unchecked (its own check needs the FileData
    marker): without this, any image the server can read could be sent back through a generation or the bank."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder()).resolve()
    return Path(path).resolve().is_relative_to(root)


def upload_to_image(upload, size: int | None = None, max_side: int | None = UPLOAD_SIDE) -> torch.Tensor:
    """An upload (gradio FileData dict, path, PIL or array) -> uint8 (H, W, 3) through images.load_rgb, at most
    `max_side` pixels a side (None: as large as it is). Paths are read only inside gradio's upload folder
    (in_upload_folder).

    A file is read here and decoded from its bytes, so a message names the file the person uploaded
    ('bad.png'), never the server's temporary copy (/tmp/gradio/<hash>/bad.png)."""
    if isinstance(upload, dict):  # FileData from the page or gradio_client (events with preprocess=False)
        name = upload.get("orig_name") or Path(str(upload.get("path") or "upload")).name
        url = upload.get("url") or ""
        upload = upload.get("path") or (url if url.startswith("data:") else None)
    elif isinstance(upload, (str, Path)) and upload:
        name = Path(upload).name
    else:
        name = None
    if upload is None or (isinstance(upload, str) and not upload):
        raise UserError("Upload an image first (PNG, JPEG, WebP, GIF or BMP).")
    if isinstance(upload, str) and upload.startswith("data:"):  # a pasted image sent inline
        if len(upload) > MAX_INLINE_CHARS:  # inline images skip the server's upload size limit
            raise UserError(f"The pasted image {name!r} is over {MAX_INLINE_CHARS * 3 // 4 >> 20} MB inline; "
                            f"upload it as a file.")
        try:
            upload = base64.b64decode(upload.split(",", 1)[1], validate=False)
        except (IndexError, ValueError):
            raise UserError(f"The upload {name!r} is not a readable data URL; upload the image as a file.") from None
    elif isinstance(upload, (str, Path)):
        path = Path(upload)
        # before any look at the file: the answer must not tell whether some server path exists
        if not in_upload_folder(path):
            raise UserError(f"{name!r} is not a file uploaded to this app; upload the image again.")
        if path.is_dir():  # only an API request can name one
            raise UserError(f"The upload {name!r} is a folder, not an image file; upload an image.")
        if not path.is_file():
            raise UserError(f"The upload {name!r} is no longer on the server; upload it again.")
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"The upload {name!r} is {path.stat().st_size >> 20} MB; images over "
                            f"{MAX_BYTES >> 20} MB are refused. Upload a smaller image.")
        upload = path.read_bytes()
    try:
        return load_rgb(upload, size, max_side=max_side)
    except ImageError as e:
        text = str(e)
        if name is None:
            raise
        # open_image calls bytes "the data"; say which upload it was (and keep its 'it is empty (0 bytes)')
        text = text.replace("the data", f"the upload {name!r}", 1) if "the data" in text else \
            f"the upload {name!r}: {text}"
        raise UserError(text[0].upper() + text[1:]) from None


def encode_upload(pipe: GMemPipeline, upload) -> tuple[torch.Tensor, torch.Tensor]:
    """(snippet (1, D), uint8 thumbnail at the bank's thumbnail size or the model's image size)."""
    if pipe.encoder is None:
        raise UserError("This checkpoint has no snippet encoder, so images cannot be turned into snippets. "
                        "Use bank rows, or load a checkpoint that includes an encoder (the default does).")
    image = upload_to_image(upload)
    snippet = pipe.snippets_from_images(image[None])
    if not torch.isfinite(snippet).all():
        raise UserError("The encoder returned NaN for this image; try another image.")
    thumbs = pipe.bank.column("thumbnails")  # read as stored: never a copy of a shared bank's thumbnails
    size = thumbs.shape[1] if thumbs is not None else pipe.model.config.input_size
    return snippet, load_rgb(image, size)


# ---- files handed to the browser --------------------------------------------------------------------------
SCRATCH = Path(tempfile.gettempdir()) / "gmem-explore-app"
SCRATCH_TTL_S = 3600  # a download link is used within the hour; a bank download of gmem-v1-xl is ~1 GB


def scratch_folder() -> Path:
    """A fresh folder under SCRATCH for files the app returns (a bank download, a GIF, a gallery's PNGs). Folders
    older than SCRATCH_TTL_S are deleted first: one mkdtemp per click filled /tmp (a folder per interpolation, 8 MB
    per bank download). gradio copies a returned file into its cache, which Blocks(delete_cache=...) cleans."""
    SCRATCH.mkdir(exist_ok=True)
    cutoff = time.time() - SCRATCH_TTL_S
    for old in SCRATCH.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # removed by a concurrent call
            pass
    return Path(tempfile.mkdtemp(dir=SCRATCH))


def scratch_path(filename: str) -> Path:
    """A path for `filename` in a fresh scratch folder (scratch_folder)."""
    return scratch_folder() / filename


def file_stem(text: str) -> str:
    """A caption or a name as part of a file name: 'seed 284400 · row 480' -> 'seed284400-row480' (each ' · ' part
    without its spaces, joined by '-'; anything but letters, digits and . _ + - dropped, so no path can come of it)."""
    parts = (re.sub(r"[^A-Za-z0-9._+-]", "", part).strip(".") for part in str(text).split(" · "))
    return "-".join(p for p in parts if p) or "image"


def png_files(items, prefix: str) -> list[tuple[str, str]]:
    """Gallery items (PIL image, caption) -> (PNG file, caption), the files named '<prefix>-<caption>.png' in one
    scratch folder. A downloaded image then says what makes it again ('gmem-seed284400-row480.png'): gradio saved
    every image of a gallery as 'image.png' (its Download All zip: image.png, image-2.png, ...)."""
    if not items:
        return []
    folder = scratch_folder()
    files, used = [], set()
    for image, caption in items:
        stem = name = f"{prefix}-{file_stem(caption)}"
        copy = 2
        while name in used:  # equal captions (none today) must not overwrite each other
            name, copy = f"{stem}-{copy}", copy + 1
        used.add(name)
        path = folder / f"{name}.png"
        image.save(path, format="PNG")
        files.append((str(path), caption))
    return files
