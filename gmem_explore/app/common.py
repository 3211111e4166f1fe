"""What every tab of the app shares: the per-session state, the model store, friendly errors, captions and
display helpers (a model run with previews and Stop: runs.py). No Gradio layout here (see server.py and
<tab>_tab.py); files coming in (uploads) and going out (downloads, GIFs) are in files.py.

Sessions never share mutable state: a session's edited bank lives in its own gr.State; pipelines in the store are
shared read-only (a session that edited its bank gets a shallow copy of the pipeline pointing at its own bank).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import secrets
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import gradio as gr
import torch
from PIL import Image

from ..bank.gallery import GalleryOptions
from ..bank.memory import MemoryBank
from ..bank.search import warm_index
from ..bank.sources import ImageFolderSource
from ..images import ImageError
from ..pipeline import GMemPipeline
from .pictures import RowPictures
from .scatter import MapStore

DISPLAY_SIZE = 128  # 32 px images are upscaled (nearest) to at least this for display; pixels stay crisp
MAX_SEED = 2**31 - 1  # what a browser number box holds exactly


class UserError(ValueError):
    """A message for the person using the app (shown by gr.Error); never a crash."""


@dataclass
class Session:
    """One browser session's state (kept in gr.State, so it is private to that session)."""

    checkpoint: str
    bank: MemoryBank | None = None  # the session's edited copy; None = the checkpoint's bank, untouched
    edits: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)  # tabs with a live run under way (live())
    stop_requested: set[str] = field(default_factory=set)  # tabs whose Stop was pressed (wire_stop)

    def __deepcopy__(self, memo):  # gr.State deep-copies its initial value per session; banks copy explicitly
        return Session(self.checkpoint, None if self.bank is None else self.bank.copy(), list(self.edits))


@dataclass
class Limits:
    """Upper bounds on what one request may ask for (a shared server must stay responsive)."""

    max_images: int = 16
    max_steps: int = 500
    max_frames: int = 48
    batch_size: int = 16
    preview_seconds: float = 0.4  # at most one preview image per this many seconds
    concurrency: int = 1  # model calls at once; one already uses every CPU core, more only on a big GPU
    # A request may name a server-side checkpoint folder or .pth only when the operator allows it: otherwise any
    # visitor could make the server read (and convert, writing beside it) whatever path they type.
    allow_local_checkpoints: bool = False
    # Memory for the sessions' edited bank copies, together: a copy is made at a session's first edit and lives
    # until the session expires (an hour after its last use), and an API client makes sessions for free. A copy
    # shares the checkpoint's rows and holds its row map and edits (bank/overlay.py), counted as at least 12 bytes
    # per bank row: 7.7 MB for gmem-v1-xl's 640,000 rows (~270 edited sessions), 15 MB at 1.28M.
    max_edited_bank_bytes: int = 2 << 30


class PipelineStore:
    """Pipelines by checkpoint name, loaded once and shared read-only; at most `capacity` kept in memory."""

    def __init__(self, factory: Callable[[str], GMemPipeline], default: str, capacity: int = 2):
        self.factory = factory
        self.default = default
        self.capacity = capacity
        self._pipes: OrderedDict[str, GMemPipeline] = OrderedDict()
        self._lock = threading.Lock()  # guards the two dicts only, never held during a load
        self._loading: dict[str, threading.Lock] = {}  # one per name being loaded

    def _cached(self, name: str) -> GMemPipeline | None:
        with self._lock:
            if name in self._pipes:
                self._pipes.move_to_end(name)
                return self._pipes[name]
            return None

    def get(self, name: str | None = None) -> GMemPipeline:
        """The pipeline, loaded on first use. A load (the 4.7 GB gmem-v1-xl: minutes) holds only its own name's
        lock: a second request for that model waits and reuses it, while every other request (a page of rows,
        the default model's generations) goes on; one global lock froze the whole app for the download."""
        name = name or self.default
        pipe = self._cached(name)
        if pipe is not None:
            return pipe
        with self._lock:
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            pipe = self._cached(name)  # loaded by the request we waited for
            if pipe is not None:
                return pipe
            pipe = self.factory(name)
            if pipe.bank is not None:  # a big bank's search index builds while the first pages are looked at
                warm_index(pipe.bank)
            with self._lock:
                self._pipes[name] = pipe
                self._loading.pop(name, None)
                while len(self._pipes) > self.capacity:
                    oldest = next(iter(self._pipes))
                    if oldest == self.default:  # the default stays: it is what new sessions start on
                        self._pipes.move_to_end(oldest)
                        oldest = next(iter(self._pipes))
                    self._pipes.pop(oldest)
            return pipe


@dataclass
class AppContext:
    store: PipelineStore
    limits: Limits = field(default_factory=Limits)
    gpu: Callable = lambda fn: fn  # spaces.GPU on Hugging Face ZeroGPU Spaces, identity elsewhere
    # the image folder the bank's rows were made from (python app.py --imagenet-train DIR): the Bank tab shows a
    # row's source image and class beside its picture
    source: ImageFolderSource | None = None
    # Model runs at once, counted by the runs themselves: gradio frees a queue slot when a request is cancelled,
    # but a plain handler's thread runs on to its end, so submit-and-cancel used to start any number of runs.
    model_slots: threading.BoundedSemaphore = field(init=False)
    # the sessions' edited bank copies still alive (a copy leaves when its session expires or resets)
    edited_banks: weakref.WeakSet = field(init=False)
    # pictures of the rows of banks without thumbnails, generated on demand (row_pictures)
    generated_rows: RowPictures = field(init=False)
    # the Bank tab's maps as the browsers were sent them, by token (scatter.py)
    maps: MapStore = field(init=False)

    def __post_init__(self):
        self.model_slots = threading.BoundedSemaphore(self.limits.concurrency)
        self.edited_banks = weakref.WeakSet()
        self.generated_rows = RowPictures(options=GalleryOptions(batch_size=self.limits.batch_size))
        self.maps = MapStore()
        self._edit_lock = threading.Lock()

    def private_bank(self, session: Session) -> MemoryBank:
        """The session's own copy of its bank, made at its first edit (the checkpoint's bank and file stay as they
        are), within limits.max_edited_bank_bytes for all sessions together."""
        if session.bank is not None:
            return session.bank
        base = self.store.get(session.checkpoint).bank
        with self._edit_lock:
            held = sum(max(bank_bytes(b), copy_bytes(b)) for b in list(self.edited_banks))
            # a copy shares the checkpoint's rows (bank/overlay.py): what it adds is its row map and its edits
            if held + copy_bytes(base) > self.limits.max_edited_bank_bytes:
                raise UserError(f"The server already holds {len(self.edited_banks)} sessions' edited banks "
                                f"({held / 2**20:.0f} MB), its limit; edits are refused until some expire (an hour "
                                f"after their last use). Try again later, or run the app yourself (README).")
            session.bank = base.copy()
            self.edited_banks.add(session.bank)
        return session.bank

    def model_call(self, fn: Callable) -> Callable:
        """A plain (non-generator) model handler that runs holding a model slot (on the GPU of a ZeroGPU Space).
        Live generators go through live(ctx, ...) instead, which holds a slot while it iterates."""
        on_device = self.gpu(fn)

        @functools.wraps(fn)
        def holding_a_slot(*args, **kwargs):
            with self.model_slots:
                return on_device(*args, **kwargs)
        return holding_a_slot

    @property
    def model_queue(self) -> dict:
        """Event options for calls that run the model: one shared queue slot pool for all of them."""
        return {"concurrency_id": "model", "concurrency_limit": self.limits.concurrency}

    def new_session(self) -> Session:
        return Session(self.store.default)

    def pipeline(self, session: Session) -> GMemPipeline:
        """The session's pipeline: the shared one, or a shallow copy that samples from the session's own bank."""
        pipe = self.store.get(session.checkpoint)
        if session.bank is None:
            return pipe
        view = copy.copy(pipe)
        view.bank = session.bank
        return view

    def bank(self, session: Session) -> MemoryBank:
        return session.bank if session.bank is not None else self.store.get(session.checkpoint).bank


def bank_bytes(bank: MemoryBank) -> int:
    """Memory a session's edited copy holds of its own: its edits and row map, not the rows it shares with the
    checkpoint's bank (MemoryBank.own_bytes; about 5 MB + 1.5 KB per edit for gmem-v1-xl's 1.28M-row bank)."""
    return bank.own_bytes()


def copy_bytes(bank: MemoryBank) -> int:
    """About what a session's copy of `bank` holds once edited: its row map and, once searched, its own row norms
    and index map (int32 / float32 per row each); its edited rows come on top (MemoryBank.own_bytes)."""
    return 12 * len(bank)


def spaces_gpu(duration: int = 120) -> Callable:
    """spaces.GPU when the `spaces` package is importable (Hugging Face Spaces), otherwise a no-op decorator."""
    try:
        import spaces  # noqa: F401  (only present on Spaces)
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# ---- errors -------------------------------------------------------------------------------------------------
FRIENDLY = (UserError, ImageError, ValueError, IndexError, KeyError, TypeError, OSError, RuntimeError)


def friendly(fn):
    """Turn expected failures into gr.Error (a red message in the page); the server keeps running.

    Works for plain functions and generators (live previews)."""
    def convert(e: Exception):
        if isinstance(e, gr.Error):
            return e
        return gr.Error(str(e).strip() or type(e).__name__)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except FRIENDLY as e:
                raise convert(e) from e
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FRIENDLY as e:
            raise convert(e) from e
    return wrapper


# ---- checking what came from the page ---------------------------------------------------------------------
def as_int(value, name: str, low: int, high: int) -> int:
    """An integer in [low, high] from a number box (which may send None, floats, NaN or strings)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number; got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UserError(f"{name} must be a finite number; got {value!r}")
    if number != int(number):
        raise UserError(f"{name} must be a whole number; got {value!r}")
    if not low <= number <= high:
        raise UserError(f"{name} must be between {low} and {high}; got {int(number)}")
    return int(number)


def as_float(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number; got {value!r}") from None
    if not low <= number <= high:  # also false for NaN
        raise UserError(f"{name} must be between {low} and {high}; got {value!r}")
    return number


RANDOM_SEEDS = 1_000_000  # random seeds stay below this: at most 6 digits fit a thumbnail caption ("seed N · row R")
# beside the row and are easy to retype; a million is more variety than anyone browses. Typed seeds may go to MAX_SEED.


def pick_seed(seed, randomize: bool) -> int:
    """A random seed when the "Random seed" box is ticked, else the seed box's. The box must send a real bool: an API
    client's "false" is a truthy string, and it used to draw a random seed where the client asked for its own."""
    if not isinstance(randomize, bool):
        raise UserError(f"Random seed must be true or false; got {randomize!r}")
    return secrets.randbelow(RANDOM_SEEDS) if randomize else as_int(seed, "seed", 0, MAX_SEED)


def typing_a_seed_unticks_random(seed: gr.Number, randomize: gr.Checkbox) -> None:
    """A seed typed into the box is the seed wanted: the "Random seed" box is unticked, where the typed seed used to
    be ignored for a random one. One rule on every tab: "Random seed" starts ticked (each click shows new images,
    whose seeds the captions and the seed box then show) and typing a seed unticks it. Only a person's typing
    (.input): the seed a run copies into the box leaves the tick as it is."""
    seed.input(lambda: False, None, randomize, queue=False, api_visibility="private")


# ---- display ------------------------------------------------------------------------------------------------
def upscale(image: torch.Tensor, size: int = DISPLAY_SIZE) -> Image.Image:
    """uint8 (H, W, 3) -> PIL, enlarged by a whole factor (nearest) so that it is at least `size` pixels wide."""
    img = Image.fromarray(torch.as_tensor(image).cpu().numpy())
    factor = max(1, -(-size // max(img.width, 1)))
    return img.resize((img.width * factor, img.height * factor), Image.NEAREST) if factor > 1 else img


def row_caption(bank: MemoryBank, row: int) -> str:
    label = bank.label_of(row)
    return f"row {row}" + (f" · {label}" if label not in (None, "-1") else "")


def thumbnails(bank: MemoryBank, rows, size: int = 64) -> list[tuple[Image.Image, str]]:
    """Gallery items for bank rows: the source thumbnail (grey when the bank has none) and 'row N · group'."""
    items = []
    thumbs = bank.column("thumbnails")  # read as stored: a shared bank's thumbnails are never copied
    for r in rows:
        r = int(r)
        if thumbs is not None:
            img = upscale(thumbs[r], size)
        else:
            img = Image.new("RGB", (size, size), (200, 200, 200))
        items.append((img, row_caption(bank, r)))
    return items


# ---- pictures of bank rows ----------------------------------------------------------------------------------
def row_pictures(ctx: AppContext, session: Session, rows, size: int = DISPLAY_SIZE,
                 holding_slot: bool = False) -> list[Image.Image]:
    """A picture of each bank row, at least `size` px: its thumbnail, or for a bank without thumbnails its
    generation from seed 0 (ctx.generated_rows: generated once per row and model, kept on disk). Generating holds a
    model slot: a caller that already holds one (a model_call handler) says so with holding_slot, as the slots are
    not reentrant. A row that has no picture (a broken row of a bank without thumbnails) is a grey tile."""
    pipe = ctx.pipeline(session)
    rows = [int(r) for r in rows]
    thumbs = pipe.bank.column("thumbnails")  # read as stored: a shared bank's thumbnails are never copied
    if thumbs is not None:
        return [upscale(thumbs[r], size) for r in rows]
    if not rows:
        return []
    images = ctx.generated_rows.get(pipe, rows, contextlib.nullcontext() if holding_slot else ctx.model_slots,
                                    ctx.gpu)
    return [upscale(im, size) if im is not None else Image.new("RGB", (size, size), (200, 200, 200))
            for im in images]


def row_items(ctx: AppContext, session: Session, rows, captions=None, size: int = DISPLAY_SIZE,
              holding_slot: bool = False) -> list[tuple[Image.Image, str]]:
    """Gallery items for bank rows: row_pictures captioned 'row N' (or with `captions`)."""
    rows = [int(r) for r in rows]
    captions = captions or [f"row {r}" for r in rows]
    return list(zip(row_pictures(ctx, session, rows, size, holding_slot), captions))


def row_range(bank, name: str = "Bank row", bounded: bool = True):
    """A row box's label and bounds for this bank, e.g. "Bank row (0–1696)": banks differ between models and grow
    with edits, so the boxes re-read them when shown. `bounded=False`: the label only (Swap's box, see
    ui_swap.row_box)."""
    last = max(len(bank) - 1, 0)
    return gr.update(label=f"{name} (0–{last})", **({"maximum": last} if bounded else {}))
