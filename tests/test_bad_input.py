"""The bad-input catalogue: every case gets an error that names the problem and says what to do (or, for unusual
but valid images, a correct RGB result); the process keeps working afterwards; no file on disk changes.

The table in docs/bad_input.md is generated from CASES below (`python tests/test_bad_input.py` rewrites it with
the messages the code gives today) and a test keeps the two in step.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # also when run as a script
from conftest import TINY, randomize  # noqa: E402

from gmem_explore import GMemPipeline, MemoryBank, build_model, mix  # noqa: E402
from gmem_explore.autoencoders import PixelSpace  # noqa: E402
from gmem_explore.checkpoints.folder import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from gmem_explore.data import load_folder  # noqa: E402
from gmem_explore.images import ImageError, load_rgb  # noqa: E402
from gmem_explore.checkpoints.official import UnsafeCheckpointError, convert_official  # noqa: E402
from gmem_explore.sampling import sample  # noqa: E402
from gmem_explore.train.trainer import TrainConfig, Trainer  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"


# ---- the world every case starts from --------------------------------------------------------------------
class World:
    """Built once per run: a tiny model and bank and a pristine saved checkpoint (cases get copies)."""

    def __init__(self, root: Path):
        torch.manual_seed(0)
        self.model = randomize(build_model(**TINY)).eval()
        g = torch.Generator().manual_seed(1)
        self.bank = MemoryBank(torch.randn(20, 16, generator=g), torch.arange(1, 21).double(),
                               torch.arange(20) % 3, ["a", "b", "c"],
                               torch.randint(0, 256, (20, 8, 8, 3), generator=g, dtype=torch.uint8))
        self.ckpt = root / "pristine"
        save_checkpoint(self.ckpt, Checkpoint(self.model, self.bank.copy(), sampler={"method": "euler", "steps": 2}))


class Env:
    """One case's world: the shared model, a private copy of the bank and pipeline, a private checkpoint copy."""

    def __init__(self, root: Path, world: World):
        self.root = root
        self.model = world.model
        self.bank = world.bank.copy()
        self.pipe = GMemPipeline(self.model, self.bank, PixelSpace(8), sampler={"method": "euler", "steps": 2})
        self.ckpt = root / "ckpt"
        shutil.copytree(world.ckpt, self.ckpt)

    def still_works(self) -> None:
        """The same objects still generate after the error: nothing was left half-changed."""
        out = self.pipe.generate(1, seeds=[0], steps=1, method="euler")
        assert out.images.shape == (1, 8, 8, 3) and out.images.dtype == torch.uint8
        assert len(self.bank) == 20 and torch.isfinite(self.bank.rows).all()


def write_bank_file(path: Path, rows, freq=None) -> Path:
    tensors = {"rows": torch.as_tensor(rows)}
    if freq is not None:
        tensors["freq"] = torch.as_tensor(freq)
    save_file(tensors, str(path), metadata={"format": json.dumps("gmem-explore-bank-1")})
    return path


def edit_config(env: Env, change: Callable[[dict], None]) -> None:
    path = env.ckpt / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def edit_weights(env: Env, change: Callable[[dict], None]) -> None:
    path = env.ckpt / "model.safetensors"
    state = {k: v.clone() for k, v in env.model.state_dict().items()}
    change(state)
    save_file(state, str(path))


def png_header(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG that claims a size in its header without carrying the pixels: a decompression bomb costs 57 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rgba_bytes() -> bytes:
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 200
    arr[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    return encode(Image.fromarray(arr, "RGBA"))


def palette_bytes() -> bytes:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    return encode(img, transparency=0)  # palette entry 0 is transparent: pixel (0, 0) becomes white


def animated_bytes() -> bytes:
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


class Evil:
    """A pickle that runs code when loaded: it would create the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_with_code(env: Env) -> None:
    torch.save({"network": Evil(env.root / "pwned"), "memorybank": torch.zeros(2, 16)}, env.ckpt / "model.safetensors")


def evil_pth(env: Env) -> None:
    torch.save({"network": Evil(env.root / "pwned")}, env.root / "evil.pth")


def load_pickle_weights_only(env: Env):
    try:
        return torch.load(env.root / "evil.pth", weights_only=True)
    finally:
        assert not (env.root / "pwned").exists(), "the pickle ran code"


def check_pickle_ran_nothing(env: Env):
    try:
        return load_checkpoint(env.ckpt)
    finally:
        assert not (env.root / "pwned").exists(), "the pickle ran code"


def nan_in(rows: torch.Tensor, value: float, row: int = 3) -> torch.Tensor:
    rows = rows.clone()
    rows[row, 5] = value
    return rows


def zero_row(rows: torch.Tensor, row: int = 3) -> torch.Tensor:
    rows = rows.clone()
    rows[row] = 0
    return rows


def snip(env: Env, n: int = 1, dim: int = 16) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(5))


def folder_with_one_bad_image(env: Env) -> None:
    """photos/cats/ holds two good PNGs and one text file named like an image: the user must learn which."""
    cats = env.root / "photos" / "cats"
    cats.mkdir(parents=True)
    for i in range(2):
        (cats / f"ok{i}.png").write_bytes(encode(Image.new("RGB", (8, 8), (i * 100, 0, 0))))
    (cats / "broken.png").write_text("not a picture, whatever the name says")


def _convert(name: str):
    """What `gmem convert <name> out/` runs."""
    return lambda env: convert_official(env.root / name, env.root / "out")


# The image messages must name the file and must not show PIL's repr of our in-memory buffer
# ("<_io.BytesIO object at 0x...>"): a lookahead, since a case gives regexes the message must match.
NO_BUFFER = r"\A(?!.*BytesIO)"


# ---- the catalogue ----------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    what: str  # the input, in words, for the table
    act: Callable[[Env], object]
    problem: str  # regex the message must match: it names what is wrong
    remedy: str | None  # regex for what to do; None for inputs that are accepted
    setup: Callable[[Env], None] | None = None  # corrupts files before the hashes are taken
    error: type = Exception
    check: Callable[[object], None] | None = None  # for accepted inputs: what the result must be


def _load(env: Env):
    return load_checkpoint(env.ckpt)


def _bank(path_name: str):
    return lambda env: MemoryBank.load(env.root / path_name)


def _gen(**kwargs):
    return lambda env: env.pipe.generate(**kwargs)


def _img(make):
    return lambda env: load_rgb(make())


def _rgb_is(pixel_checks):
    def check(img):
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[-1] == 3
        for (y, x), rgb in pixel_checks.items():
            assert tuple(img[y, x].tolist()) == rgb, (y, x, img[y, x].tolist())
    return check


def _truncate(rel: str, keep: float = 0.5):
    def setup(env: Env):
        path = env.ckpt / rel
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return setup


TRUNC_OK = r"truncated|not a (valid )?safetensors"
GEN_OK = dict(n=1, seeds=[0])

CASES = [
    # checkpoints ---------------------------------------------------------------------------------------------
    Case("ckpt-truncated-weights", "model.safetensors cut to half its length", _load, TRUNC_OK,
         r"re-?download|re-?save|replace|damaged|copy", _truncate("model.safetensors"), ValueError),
    Case("ckpt-truncated-header", "model.safetensors cut to 5 bytes (inside the length field)", _load, TRUNC_OK,
         r"re-?download|re-?save|replace|damaged|copy", _truncate("model.safetensors", 5 / 1e9), ValueError),
    Case("ckpt-empty-weights", "model.safetensors of 0 bytes", _load, r"empty|truncated",
         r"re-?download|re-?save|replace|damaged|copy",
         lambda env: (env.ckpt / "model.safetensors").write_bytes(b""), ValueError),
    Case("ckpt-missing-weights", "checkpoint folder without model.safetensors", _load, r"model\.safetensors",
         r"re-?download|re-?save|copy|complete",
         lambda env: (env.ckpt / "model.safetensors").unlink(), FileNotFoundError),
    Case("ckpt-wrong-keys", "weights with one key renamed", _load, r"missing keys.*unexpected keys",
         r"[Cc]heck that the model size",
         lambda env: edit_weights(env, lambda s: s.__setitem__("renamed.weight", s.pop("final_layer.linear.weight"))),
         ValueError),
    Case("ckpt-wrong-shapes", "weights of a wider network than config.json describes", _load,
         r"shape mismatch", r"[Cc]heck that the model size",
         lambda env: edit_config(env, lambda c: c["model"].__setitem__("hidden_size", 64)), ValueError),
    Case("ckpt-nan-weights", "one weight set to NaN", _load, r"NaN or infinite weights",
         r"corrupt|diverged|earlier checkpoint",
         lambda env: edit_weights(env, lambda s: s["blocks.0.attn.qkv.weight"].view(-1).__setitem__(3, math.nan)),
         ValueError),
    Case("ckpt-pickle-code", "a torch pickle that would run code, named model.safetensors", check_pickle_ran_nothing,
         r"not a (valid )?safetensors", r"re-?download|re-?save|convert|replace|damaged", pickle_with_code, ValueError),
    Case("pickle-weights-only", "torch.load(weights_only=True) of a pickle that would run code",
         load_pickle_weights_only, r"[Ww]eights only load failed|Unsupported global", r"trust|weights_only",
         evil_pth, Exception),
    Case("ckpt-config-not-json", "config.json that is not JSON", _load, r"not valid JSON", r"copy or save it again",
         lambda env: (env.ckpt / "config.json").write_text("{'model': oops"), ValueError),
    Case("ckpt-config-missing", "checkpoint folder without config.json", _load, r"no config\.json",
         r"save_checkpoint or `gmem convert` wrote", lambda env: (env.ckpt / "config.json").unlink(), FileNotFoundError),
    Case("ckpt-config-unknown-key", "config.json with an unknown model key", _load, r"Unknown model config keys.*wings",
         r"known keys: \[", lambda env: edit_config(env, lambda c: c["model"].__setitem__("wings", 2)), ValueError),
    Case("ckpt-config-bad-geometry", "config.json whose input size is not a multiple of the patch", _load,
         r"not a multiple of patch_size", r"Invalid model config",
         lambda env: edit_config(env, lambda c: c["model"].__setitem__("input_size", 9)), ValueError),
    Case("ckpt-config-wrong-format", "config.json of another format version", _load, r"has format",
         r"this version reads", lambda env: edit_config(env, lambda c: c.__setitem__("format", "other-9")), ValueError),
    Case("ckpt-bank-dim", "checkpoint whose bank has 8-d rows for a 16-d model", _load,
         r"dimension 8 but the model expects 16", r"put back the bank saved with this model",
         lambda env: write_bank_file(env.ckpt / "bank.safetensors", torch.randn(5, 8)), ValueError),
    # the released .pth (`gmem convert`) -----------------------------------------------------------------------
    Case("pth-is-png", "`gmem convert` given a PNG image instead of the .pth", _convert("photo.png"),
         r"photo\.png is not a PyTorch checkpoint \(\.pth\) at all: it starts with the bytes b'\\x89PNG",
         r"Expected the released GMem checkpoint .*written by torch\.save.*download",
         lambda env: (env.root / "photo.png").write_bytes(encode(Image.new("RGB", (4, 4)))), ValueError),
    Case("pth-is-text", "`gmem convert` given a text file (an HTML error page saved as .pth)", _convert("model.pth"),
         r"not a PyTorch checkpoint \(\.pth\) at all: it is text, starting '<!DOCTYPE html>",
         r"download that file again",
         lambda env: (env.root / "model.pth").write_text("<!DOCTYPE html><p>rate limited</p>"), ValueError),
    Case("pth-empty", "`gmem convert` given an empty .pth", _convert("model.pth"),
         r"not a PyTorch checkpoint \(\.pth\) at all: it is empty \(0 bytes\)", r"download that file again",
         lambda env: (env.root / "model.pth").write_bytes(b""), ValueError),
    Case("pth-pickle-code", "`gmem convert` given a torch pickle that would run code", _convert("evil.pth"),
         r"it is a pickle that asks to run code.*Nothing from it was executed", r"download it again from",
         evil_pth, UnsafeCheckpointError),
    Case("pth-folder", "`gmem convert` given a folder", lambda env: convert_official(env.ckpt, env.root / "out"),
         r"ckpt is a folder, not a checkpoint file", r"released \.pth file.*load_checkpoint\(folder\)", None,
         IsADirectoryError),
    # banks -----------------------------------------------------------------------------------------------------
    Case("bank-folder", "MemoryBank.load of an existing folder (a checkpoint folder)",
         lambda env: MemoryBank.load(env.ckpt), r"ckpt is a folder, not a file",
         r"such as .*ckpt/bank\.safetensors.*load_checkpoint\(folder\)", None, IsADirectoryError),
    Case("bank-not-a-bank", "a safetensors file without a 'rows' tensor", _bank("weights.safetensors"),
         r"not a memory bank file", r"found \[",
         lambda env: save_file({"w": torch.zeros(2)}, str(env.root / "weights.safetensors")), ValueError),
    Case("bank-lowrank-damaged", "a compressed (low-rank) bank file without its basis",
         lambda env: MemoryBank.load(env.root / "lr.safetensors"), r"damaged low-rank bank file.*\['basis'\]",
         r"compress the full bank again", lambda env: save_file({"coeffs": torch.zeros(2, 2), "mean": torch.zeros(4)},
         str(env.root / "lr.safetensors"), metadata={"format": "gmem-explore-lowrank-bank-1"}), ValueError),
    Case("bank-wrong-dim-add", "adding 8-d rows to a 16-d bank", lambda env: env.bank.add(torch.randn(2, 8)),
         r"shape \(N, 16\); got \(2, 8\)", r"encoder the model was trained with", None, ValueError),
    Case("bank-1d-rows", "bank rows given as a vector", lambda env: MemoryBank(torch.randn(16)),
         r"2-D \(N, D\)", r"rows\[None\]", None, ValueError),
    Case("bank-int-rows", "bank rows of integers", lambda env: MemoryBank(torch.ones(3, 16, dtype=torch.long)),
         r"floating point.*got torch\.int64", r"\.float\(\)", None, ValueError),
    Case("bank-empty-generate", "generating from an empty bank", lambda env: GMemPipeline(
        env.model, MemoryBank(torch.zeros(0, 16)), PixelSpace(8), sampler={"method": "euler", "steps": 2}).generate(1, seeds=[0]),
         r"empty", r"add rows", None, (ValueError, IndexError)),
    Case("bank-empty-nearest", "nearest neighbours in an empty bank",
         lambda env: MemoryBank(torch.zeros(0, 16)).nearest(snip(env)), r"empty", r"add rows", None,
         (ValueError, IndexError)),
    Case("bank-add-bad-freq", "adding a row with frequency -1 (the bank must stay as it was)",
         lambda env: env.bank.add(torch.randn(1, 16), freq=[-1.0]), r"freq must be non-negative",
         r"fix the counts or drop freq", None, ValueError),
    Case("bank-save-int8", "saving a bank with dtype int8", lambda env: env.bank.save(env.root / "i8.safetensors",
         dtype=torch.int8), r"cannot save bank rows as torch\.int8", r"use dtype torch\.float16", None, ValueError),
    Case("bank-save-fp16-overflow", "saving rows of magnitude 1e5 in float16",
         lambda env: MemoryBank(env.bank.rows * 1e5).save(env.root / "h.safetensors", dtype=torch.float16),
         r"do not fit in torch\.float16", r"dtype=torch\.float32, or normalise the rows", None, ValueError),
    Case("bank-nan-row", "a bank file with a NaN in row 3, then that row is used",
         lambda env: MemoryBank.load(env.root / "b.safetensors").snippets([3]), r"rows \[3\].*NaN", r"replace|remove",
         lambda env: write_bank_file(env.root / "b.safetensors", nan_in(env.bank.rows, math.nan)), ValueError),
    Case("bank-inf-row", "an infinite value in bank row 3, then that row is used",
         lambda env: MemoryBank(nan_in(env.bank.rows, math.inf)).snippets([2, 3]),
         r"row.*3.*(NaN|infinite)|(NaN|infinite).*row.*3", r"replace|remove", None, ValueError),
    Case("bank-nan-nearest", "nearest-neighbour search in a bank whose rows are all NaN (one NaN row is skipped)",
         lambda env: MemoryBank(torch.full((3, 16), math.nan)).nearest(env.bank.rows[:1]),
         r"no usable row.*NaN", r"replace or remove", None, ValueError),
    Case("bank-zero-row", "an all-zero bank row, then that row is used",
         lambda env: MemoryBank(zero_row(env.bank.rows)).snippets([3]), r"row.*3.*zero|zero.*row.*3",
         r"replace|remove", None, ValueError),
    Case("bank-zero-row-add", "adding an all-zero row", lambda env: env.bank.add(torch.zeros(1, 16)),
         r"all zeros", r"bank row|encoded image", None, ValueError),
    Case("bank-negative-freq", "a bank file with negative frequencies", _bank("b.safetensors"),
         r"non-negative", r"fix the counts or drop freq",
         lambda env: write_bank_file(env.root / "b.safetensors", env.bank.rows, -torch.ones(20)), ValueError),
    Case("bank-freq-length", "19 frequencies for 20 rows", lambda env: MemoryBank(env.bank.rows, torch.ones(19)),
         r"one entry per row \(20\); got shape \(19,\)", r"one count per row", None, ValueError),
    Case("bank-freq-nan", "a NaN frequency", lambda env: MemoryBank(env.bank.rows, torch.tensor([math.nan] + [1.0] * 19)),
         r"freq.*(NaN|finite)", r"fix freq|replace|uniform", None, ValueError),
    Case("bank-freq-zero", "frequencies that are all zero", lambda env: MemoryBank(env.bank.rows, torch.zeros(20)),
         r"sums to zero", r"uniform choice or fix freq", None, ValueError),
    Case("bank-index-range", "generating from bank row 20 of a 20-row bank", _gen(indices=[20], seeds=[0]),
         r"out of range.*0\.\.19", r"rows 0\.\.19", None, IndexError),
    # snippets --------------------------------------------------------------------------------------------------
    Case("snippet-wrong-dim", "an 8-d snippet for a 16-d model", _gen(snippets=torch.randn(1, 8), seeds=[0]),
         r"shape \(N, 16\); got \(1, 8\)", r"encoder the model was trained with", None, ValueError),
    Case("snippet-nan", "a snippet holding NaN", _gen(snippets=nan_in(torch.randn(4, 16), math.nan, 0)[:1], seeds=[0]),
         r"rows \[0\].*NaN or infinite|NaN or infinite.*rows \[0\]", r"replace those rows", None, ValueError),
    Case("snippet-zero", "an all-zero snippet", _gen(snippets=torch.zeros(1, 16), seeds=[0]), r"all zeros",
         r"bank row|encoded image", None, ValueError),
    Case("snippet-3d", "snippets of shape (1, 1, 16)", _gen(snippets=torch.randn(1, 1, 16), seeds=[0]),
         r"shape \(N, 16\)", r"encoder the model was trained with", None, ValueError),
    Case("mix-shapes", "mixing snippets of different shapes", lambda env: mix(torch.randn(1, 16), torch.randn(2, 16), 0.5),
         r"same shape", r"got \(1, 16\) and \(2, 16\)", None, ValueError),
    Case("mix-opposite", "mixing a snippet with its opposite halfway (slerp)",
         lambda env: mix(torch.ones(1, 16), -torch.ones(1, 16), 0.5, "slerp"),
         r"zero vector", r"another weight or the 'concat' or 'mask' method", None, ValueError),
    # images ----------------------------------------------------------------------------------------------------
    Case("image-not-image", "bytes that are not an image", _img(lambda: b"hello, not a picture" * 10),
         NO_BUFFER + r".*not an image", r"PNG, JPEG", None, ImageError),
    Case("image-truncated", "a PNG cut to half its length",
         _img(lambda: encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))[:600]),
         r"not an image|truncated", r"PNG, JPEG|again|re-?save", None, ImageError),
    Case("image-zero-pixels", "a PNG whose header says 0 x 0 pixels", _img(lambda: png_header(0, 0)),
         r"no pixels|0 width|not an image", r"PNG, JPEG|another image", None, ImageError),
    Case("image-zero-array", "an image array of shape (0, 0, 3)", _img(lambda: np.zeros((0, 0, 3), np.uint8)),
         r"no pixels|0 width", r"another image|width or height", None, ImageError),
    Case("image-huge", "a 57-byte PNG claiming 10000 x 10000 pixels (decompression bomb)",
         _img(lambda: png_header(10000, 10000)), r"10000x10000 pixels|more than 40,000,000 pixels", r"[Rr]esize it first", None, ImageError),
    Case("image-too-many-bytes", "an upload of 51 MB", _img(lambda: b"\0" * (51 << 20)), r"51 MB",
         r"over 50 MB are refused", None, ImageError),
    Case("image-array-range", "a float array with values up to 255", _img(lambda: np.full((4, 4, 3), 200.0)),
         r"uint8 in \[0, 255\] or floats in \[0, 1\]", r"float64", None, ImageError),
    Case("image-array-shape", "an array of shape (4, 4, 5)", _img(lambda: np.zeros((4, 4, 5), np.uint8)),
         r"\(H, W, 3\)", r"got shape \(4, 4, 5\)", None, ImageError),
    Case("image-16bit", "a 16-bit greyscale PNG (accepted: scaled to 8 bits)",
         _img(lambda: encode(Image.fromarray(np.full((4, 4), 65535, np.uint16)))), r"", None,
         check=_rgb_is({(0, 0): (255, 255, 255)})),
    Case("image-cmyk", "a CMYK JPEG (accepted: converted to RGB)",
         _img(lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)), r"", None,
         check=lambda img: (_rgb_is({})(img), img[4, 4, 0] > 200 and img[4, 4, 1] < 60) and None
         if img[4, 4, 0] > 200 and img[4, 4, 1] < 60 else pytest.fail(f"CMYK red became {img[4, 4].tolist()}")),
    Case("image-rgba", "an RGBA PNG, half transparent (accepted: composited over white)", _img(rgba_bytes), r"", None,
         check=_rgb_is({(0, 0): (200, 0, 0), (3, 3): (255, 255, 255)})),
    Case("image-palette", "a palette PNG with a transparent entry (accepted)", _img(palette_bytes), r"", None,
         check=_rgb_is({(0, 0): (255, 255, 255), (2, 2): (0, 0, 255)})),
    Case("image-animated", "an animated GIF, red then blue (accepted: first frame)", _img(animated_bytes), r"", None,
         check=_rgb_is({(1, 1): (255, 0, 0)})),
    Case("image-bad-file-in-folder", "a folder of images where one .png is really text (load_folder, build-bank)",
         lambda env: load_folder(env.root / "photos", size=8),
         NO_BUFFER + r".*photos/cats/broken\.png is not an image PIL can read.*format is not recognised",
         r"Re-save or replace that file, or move it out of the image folder", folder_with_one_bad_image, ImageError),
    Case("image-truncated-file", "a path to a PNG cut to half its length",
         lambda env: load_rgb(env.root / "cut.png"), NO_BUFFER + r".*cut\.png is not an image.*truncated",
         r"Re-save or replace that file",
         lambda env: (env.root / "cut.png").write_bytes(
             encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))[:600]),
         ImageError),
    Case("image-empty-file", "a path to an empty .jpg", lambda env: load_rgb(env.root / "empty.jpg"),
         NO_BUFFER + r".*empty\.jpg is not an image.*empty \(0 bytes\)", r"Re-save or replace that file",
         lambda env: (env.root / "empty.jpg").write_bytes(b""), ImageError),
    Case("image-missing-path", "a path to a file that does not exist",
         lambda env: load_rgb(env.root / "nope.png"), r"No image file", r"nope\.png", None, ImageError),
    # parameters ------------------------------------------------------------------------------------------------
    Case("steps-zero", "steps=0", _gen(**GEN_OK, steps=0), r"steps must be an integer in \[1, 5000\]", r"250", None,
         ValueError),
    Case("steps-negative", "steps=-3", _gen(**GEN_OK, steps=-3), r"steps must be an integer in \[1, 5000\]", r"250",
         None, ValueError),
    Case("steps-huge", "steps=10**9", _gen(**GEN_OK, steps=10**9), r"steps must be an integer in \[1, 5000\]", r"250",
         None, ValueError),
    Case("steps-float", "steps=2.5", _gen(**GEN_OK, steps=2.5), r"steps must be an integer", r"got 2\.5", None,
         ValueError),
    Case("n-zero", "n=0 images", _gen(n=0), r"positive integer", r"got 0", None, ValueError),
    Case("n-huge", "n=10**9 images in one call", _gen(n=10**9), r"too many", r"gmem sample", None, ValueError),
    Case("batch-zero", "batch_size=0", _gen(**GEN_OK, batch_size=0), r"batch_size must be a positive integer",
         r"got 0", None, ValueError),
    Case("seed-negative", "seed -1", _gen(n=1, seeds=[-1]), r"seeds must be integers in \[0, 2\^63 - 1\]", r"got -1",
         None, ValueError),
    Case("seed-huge", "seed 2**64", _gen(n=1, seeds=[2**64]), r"seeds must be integers in \[0, 2\^63 - 1\]",
         r"got 18446744073709551616", None, ValueError),
    Case("seed-text", "seed 'abc'", _gen(n=1, seeds=["abc"]), r"seeds must be integers", r"got 'abc'", None,
         ValueError),
    Case("seed-count", "3 seeds for 2 images", _gen(n=2, seeds=[1, 2, 3]), r"3 seeds for 2 images",
         r"one seed per image", None, ValueError),
    Case("sampler-unknown", "sampler 'ddim'", _gen(**GEN_OK, method="ddim"), r"Unknown sampler 'ddim'",
         r"choose one of \('sde', 'euler', 'heun', 'sde-heun'\)", None, ValueError),
    Case("sampler-direct-unknown", "sample(method='dpm') called directly",
         lambda env: sample(env.model, torch.randn(1, 3, 8, 8), snip(env), method="dpm"), r"Unknown sampler 'dpm'",
         r"choose one of", None, ValueError),
    Case("mix-unknown", "mixing method 'average'", lambda env: mix(snip(env), snip(env), 0.5, "average"),
         r"Unknown mixing method 'average'", r"choose one of \('lerp', 'slerp', 'concat', 'mask'\)", None,
         ValueError),
    Case("mix-weight", "mixing weight 1.5", lambda env: mix(snip(env), snip(env), 1.5), r"weight must lie in \[0, 1\]",
         r"got 1\.5", None, ValueError),
    Case("choose-unknown", "snippet choice 'random'", _gen(**GEN_OK, choose="random"), r"Unknown choice 'random'",
         r"choose one of", None, ValueError),
    Case("guidance-nan", "guidance NaN", _gen(**GEN_OK, guidance=math.nan), r"guidance must be a finite number >= 0",
         r"1 means none", None, ValueError),
    Case("guidance-interval", "guidance interval (0.9, 0.1)", _gen(**GEN_OK, guidance=2.0, guidance_interval=(0.9, 0.1)),
         r"guidance_interval must satisfy", r"0 <= low <= high <= 1", None, ValueError),
    Case("guidance-interval-number", "guidance interval 0.5 (one number, not a pair)",
         _gen(**GEN_OK, guidance=2.0, guidance_interval=0.5), r"must be a pair", r"e\.g\. \(0\.0, 1\.0\)", None,
         ValueError),
    Case("snippet-huge", "a snippet of values 1e20 (float32 cannot normalise it)",
         _gen(snippets=torch.full((1, 16), 1e20), seeds=[0]), r"no usable direction", r"rescale them", None, ValueError),
    Case("bank-row-fraction", "bank.remove([1.7]): a fractional row number", lambda env: env.bank.remove([1.7]),
         r"whole numbers", r"round it yourself", None, ValueError),
    Case("train-nan-latents", "training latents of which item 0 holds NaN",
         lambda env: Trainer(build_model(**TINY), torch.randn(4, 3, 8, 8) * torch.tensor([math.nan, 1, 1, 1]).view(4, 1, 1, 1), env.bank.rows[:4],
                             TrainConfig(progress=False), autoencoder=None, use_accelerate=False),
         r"training items \[0\] hold NaN", r"remove or re-encode", None, ValueError),
    Case("train-lr-nan", "a training config with lr NaN", lambda env: TrainConfig(lr=math.nan),
         r"lr a finite number > 0", r"lr nan", None, ValueError),
    Case("interpolate-frames", "interpolation with k=1 frame", lambda env: env.pipe.interpolate(0, 1, k=1),
         r"number of frames", r"\[2, 256\]", None, ValueError),
    Case("interpolate-mix-as-method", "interpolate(..., method='lerp'): a mix given as the sampler",
         lambda env: env.pipe.interpolate(0, 1, k=2, method="lerp"), r"names a mix",
         r"mix='lerp'.*`method` chooses the sampler", None, ValueError),
    Case("guidance-inf", "guidance infinity", _gen(**GEN_OK, guidance=math.inf), r"finite number >= 0",
         r"1 means none", None, ValueError),
    Case("indices-empty", "generate(indices=[])", lambda env: env.pipe.generate(indices=[]), r"indices is empty",
         r"at least one bank row", None, ValueError),
    Case("checkpoint-label-baseline", "a checkpoint folder whose config says it was trained on labels",
         lambda env: load_checkpoint(env.ckpt), r"condition='label', a baseline",
         r"Trainer\.sample.*condition='snippet'",
         lambda env: edit_config(env, lambda c: c.setdefault("training", {}).update(config={"condition": "label"})),
         ValueError),
    Case("pipeline-bank-dim", "a pipeline built from a 16-d model and an 8-d bank",
         lambda env: GMemPipeline(env.model, MemoryBank(torch.randn(4, 8)), PixelSpace(8)),
         r"dimension 8.*expects 16|16.*8", r"bank|encoder", None, ValueError),
]


# ---- running a case ---------------------------------------------------------------------------------------
def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(case: Case, root: Path, world: World) -> tuple[object, BaseException | None]:
    """Runs one case in its own copy of the world; asserts that no file changed. Returns (result, error)."""
    env = Env(root, world)
    if case.setup is not None:
        case.setup(env)
    before = file_hashes(root)
    result, error = None, None
    try:
        result = case.act(env)
    except Exception as e:  # noqa: BLE001 - the point is to catch whatever the code raises
        error = e
    assert file_hashes(root) == before, "a failed load or call changed files on disk"
    env.still_works()
    return result, error


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds waiting (each op took 20 ms instead of 0.2 ms on the
    shared 2-core CI machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, world):
    result, error = run_case(case, tmp_path, world)
    if case.remedy is None:  # an unusual but valid input: accepted and converted correctly
        assert error is None, f"{case.what} was refused: {error!r}"
        case.check(result)
        return
    assert error is not None, f"{case.what} was accepted: {result!r}"
    assert isinstance(error, case.error), f"expected {case.error}, got {type(error).__name__}: {error}"
    message = str(error)
    assert re.search(case.problem, message), f"the message does not name the problem: {message}"
    assert re.search(case.remedy, message), f"the message does not say what to do: {message}"


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_table_in_docs_lists_every_case():
    text = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/bad_input.md lacks {missing}; run `python tests/test_bad_input.py` to rewrite it"


# ---- the table --------------------------------------------------------------------------------------------
def render_table() -> str:
    import tempfile

    lines = ["# Bad input: what each case gets", "",
             "Generated by `python tests/test_bad_input.py` from the cases that `tests/test_bad_input.py` runs. "
             "Every refusal below is an ordinary Python exception with a message that names the problem and what to "
             "do; after each one the same pipeline still generates, and no file on disk changed (files are hashed "
             "before and after). Unusual but valid images are accepted and converted.", "",
             "| case | input | outcome |", "|---|---|---|"]
    base = tempfile.TemporaryDirectory()
    world = World(Path(base.name))
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            _, error = run_case(case, Path(tmp), world)
        if error is None:
            outcome = "accepted"
        else:
            text = str(error).replace(str(tmp), "<dir>").replace("|", "\\|").replace("\n", " ")
            outcome = f"{type(error).__name__}: {text[:300]}"
        lines.append(f"| `{case.id}` | {case.what} | {outcome} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.set_num_threads(1)
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_table())
    print(f"wrote {DOC} ({len(CASES)} cases)")
