"""MemoryBank: the external memory of GMem, N snippets of dimension D with optional frequency, labels and
thumbnails of their source images.

Rows may be stored unnormalised and in fp16 (640,000 x 768 fp16 = 0.98 GB); every snippet handed to a model is
L2-normalised in float32 at use, as in the released code. Files are safetensors, written atomically and opened
memory-mapped, so the released bank opens at once and is never held twice.

The arithmetic of single snippets (normalize, mix) lives in snippets.py and the checks on inputs in
checks.py; both are importable from here as before.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import search
from .overlay import Column
from .checks import (CHUNK, LOW_RANK_FORMAT, as_labels, as_thumbnails, check_bank_rows, check_counts, check_frequencies,
                     check_low_rank, check_metadata, check_noise, check_snippets, chunks, missing_extra_message, refuse_meta,
                     row_indices, rows_spoiled_by_cast, spoiled_rows_message)
from ..safefiles import load_tensors, write_streaming
from .snippets import MIX_METHODS, mix, normalize
from .stats import statistics
from ..values import as_whole

# the public names, including those defined in snippets.py and importable from here as before
__all__ = ["CHOOSE_STRATEGIES", "MIX_METHODS", "SAVE_DTYPES", "MemoryBank", "cumulative_frequency", "index_from_noise",
           "load_bank", "mix", "normalize"]

CHOOSE_STRATEGIES = ("frequency", "uniform")
# dtypes a bank file may store its rows in: MemoryBank.load reads floating-point rows only
SAVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def cumulative_frequency(freq: torch.Tensor | None, n: int) -> torch.Tensor:
    """float64 CDF over rows; uniform when there are no frequencies."""
    if freq is None:
        return torch.arange(1, n + 1, dtype=torch.float64) / n
    p = freq.double()
    return torch.cumsum(p / p.sum(), 0)


def index_from_noise(noise: torch.Tensor, freq: torch.Tensor | None, num_rows: int | None = None) -> torch.Tensor:
    """The released snippet choice: a deterministic function of each sample's initial noise.

    m = mean(z) * sqrt(numel(z)) is ~N(0, 1) for Gaussian z, u = Phi(m) is ~U(0, 1), and the row is the first k
    with cumsum(freq / sum(freq))[k] > u: rows are drawn with probability proportional to freq.
    `noise` is one sample (C, H, W) or a batch (B, C, H, W); returns one index per sample (shape (B,)).
    """
    noise = check_noise(noise)
    freq = None if freq is None else torch.as_tensor(freq)
    n = num_rows if freq is None else len(freq)
    if not n:
        raise ValueError("the bank is empty (index_from_noise needs freq or num_rows > 0): add rows first")
    flat = noise.reshape(noise.shape[0], -1).double()
    m = flat.mean(dim=1) * math.sqrt(flat.shape[1])
    u = 0.5 * (1 + torch.erf(m / math.sqrt(2)))
    if freq is not None:
        check_counts(freq)  # a negative count would make the cdf fall back and pick rows by chance
    if freq is not None and not (freq > 0).any():
        raise ValueError("freq has no positive entry: no row could ever be drawn; fix freq or choose uniformly")
    cdf = cumulative_frequency(freq.cpu() if freq is not None else None, n)
    # u can reach 1.0 (|m| > 8.3, or rounding at the top of the cdf): then no cdf entry exceeds it, and the
    # answer is the last row that can be drawn, never a trailing row of frequency 0
    last = n - 1 if freq is None else int((freq > 0).nonzero().max())
    return torch.searchsorted(cdf, u.cpu(), right=True).clamp_max(last)


class MemoryBank:
    """N snippets (rows) of dimension D with optional per-row frequency, integer labels and thumbnails.

    The bank keeps the tensors it is given, without copying. replace writes into them (rows, and thumbnails /
    labels when given), so MemoryBank(r).replace(0, x) changes the caller's r; add and remove build new tensors
    and leave the caller's alone. bank.copy() is a private copy that costs O(edits), not O(rows): it shares the
    storage and records its own edits (overlay.py), and from then on neither bank writes into the shared tensors.
    An edit is all-or-nothing: a refused add / replace / remove leaves the bank exactly as it was."""

    def __init__(self, rows, freq=None, labels=None, label_names=None, thumbnails=None, meta=None):
        refuse_meta(rows, "bank rows")
        rows = torch.as_tensor(rows)
        if rows.ndim != 2:
            raise ValueError(f"bank rows must be a 2-D (N, D) matrix; got shape {tuple(rows.shape)} (use rows[None] for one row)")
        if not rows.is_floating_point():
            raise ValueError(f"bank rows must be floating point; got {rows.dtype} (convert them with .float())")
        self._cols: dict[str, Column | None] = {"rows": Column(rows), "freq": None, "labels": None, "thumbnails": None}
        self.freq = None if freq is None else torch.as_tensor(freq).double()
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.label_names = list(label_names) if label_names is not None else None
        self.thumbnails = None if thumbnails is None else torch.as_tensor(thumbnails)
        self.meta = dict(meta or {})
        self._removed = 0  # rows removed so far: named when an edit asks for a row past the end
        self.validate()

    # ---- the per-row tensors ------------------------------------------------------------------------------
    # Each is a Column (overlay.py): storage shared with the bank's copies plus this bank's own edits. Reading the
    # public attribute (bank.rows, bank.freq, ...) hands out a tensor this bank alone holds, which the caller may
    # write into; for a bank that shares its storage with a copy (either side) or was edited as a copy, that first
    # copies the column once (1.9 GB for the rows of a 1.28M x 768 fp16 bank). Code that only reads uses
    # bank.column(name), bank.dtype, snippets() and the bank's own methods, which never copy.
    rows = property(lambda self: self._cols["rows"].private(), lambda self, value: self._set("rows", value),
                    doc="(N, D) rows (a private tensor: see the note above)")
    freq = property(lambda self: self._private("freq"), lambda self, value: self._set("freq", value))
    labels = property(lambda self: self._private("labels"), lambda self, value: self._set("labels", value))
    thumbnails = property(lambda self: self._private("thumbnails"), lambda self, value: self._set("thumbnails", value))

    def _private(self, name: str) -> torch.Tensor | None:
        column = self._cols[name]
        return None if column is None else column.private()

    def _set(self, name: str, value) -> None:
        if name == "rows" and value is None:
            raise ValueError("a bank needs rows; bank.rows cannot be None")
        self._cols[name] = None if value is None else Column(torch.as_tensor(value))

    def column(self, name: str) -> Column | None:
        """The rows, freq, labels or thumbnails as stored, to read without copying anything (None when the bank
        has no such part): len, shape, dtype and indexing (column[i], column[a:b], column[indices]) give tensors,
        which must not be written into (they may be storage the bank shares with its copies); column[:] is every
        row, a new tensor of the whole part for an edited copy."""
        if name not in self._cols:
            raise KeyError(f"a bank has no part {name!r}; its parts are {tuple(self._cols)}")
        return self._cols[name]

    def _read(self, name: str) -> torch.Tensor | None:
        """A whole small part (freq, labels) to read, never written into."""
        column = self._cols[name]
        return None if column is None else column[:]

    @property
    def dtype(self) -> torch.dtype:
        """The rows' stored dtype (bank.rows.dtype, without copying the rows)."""
        return self._cols["rows"].dtype

    def own_bytes(self) -> int:
        """Memory this bank's tensors hold beyond what it shares with the bank it was copied from (or its copies),
        search state included: about 5 MB + 1.5 KB per edited row for an edited copy of the 1.28M x 768 fp16
        bank, its whole size for a bank that shares nothing."""
        tensors = [t for c in self._cols.values() if c is not None for t in c.own_tensors()]
        state = getattr(self, "_search", None)
        tensors += [] if state is None else state.own_tensors()
        unique = {id(t): t for t in tensors}  # parts edited together share one map
        return sum(t.numel() * t.element_size() for t in unique.values())

    # ---- shape and checks -------------------------------------------------------------------------------
    def __len__(self):
        return len(self._cols["rows"])

    @property
    def dim(self) -> int:
        return self._cols["rows"].shape[1]

    def __repr__(self):
        extras = [name for name in ("freq", "labels", "thumbnails") if self._cols[name] is not None]
        return f"MemoryBank({len(self)} rows x {self.dim}, {self.dtype}, with {extras or 'rows only'})"

    def validate(self, check_values: bool = False) -> None:
        """Shapes and frequencies always; row values (NaN, infinite) when asked, since that touches every page."""
        n = len(self)
        check_frequencies(self._read("freq"), n)
        labels, thumbnails = self._cols["labels"], self._cols["thumbnails"]
        if labels is not None and labels.shape != (n,):
            raise ValueError(f"labels must have one entry per row ({n}); got shape {tuple(labels.shape)}")
        if thumbnails is not None and (thumbnails.ndim != 4 or thumbnails.shape[0] != n
                                       or thumbnails.shape[-1] != 3 or thumbnails.dtype != torch.uint8):
            raise ValueError(f"thumbnails must be uint8 (N={n}, H, W, 3); got {tuple(thumbnails.shape)} {thumbnails.dtype}")
        if check_values:
            for start, stop in chunks(n):
                if not torch.isfinite(self._cols["rows"][start:stop]).all():
                    raise ValueError(f"bank rows hold NaN or infinite values (first bad chunk at row {start})")

    def _check_index(self, indices) -> torch.Tensor:
        return row_indices(indices, len(self))  # fractions refused, boolean masks allowed (bank_checks)

    # ---- reading --------------------------------------------------------------------------------------
    def snippets(self, indices) -> torch.Tensor:
        """Normalised float32 snippets of the given rows, ready for the model; unusable rows (NaN, infinite, all
        zeros) are refused by number, since the model would turn them into noise or an unconditional sample."""
        idx = self._check_index(indices)
        rows = self._cols["rows"][idx].float()
        check_bank_rows(rows, idx)
        return normalize(rows)

    def label_of(self, index: int) -> str | None:
        if self._cols["labels"] is None:
            return None
        label = int(self._cols["labels"][self._check_index([index])[:1]][0])
        return self.label_names[label] if self.label_names and 0 <= label < len(self.label_names) else str(label)

    def choose(self, n: int, strategy: str = "frequency", generator: torch.Generator | None = None) -> torch.Tensor:
        """n row indices (a long tensor; empty for n = 0) drawn with replacement, uniformly or proportionally to
        freq."""
        if strategy not in CHOOSE_STRATEGIES:
            raise ValueError(f"Unknown choice strategy {strategy!r}; choose one of {CHOOSE_STRATEGIES} (or use from_noise)")
        if as_whole(n, 0) is None:
            raise ValueError(f"choose needs a whole number of rows n >= 0; got {n!r}")
        n = as_whole(n)
        if len(self) == 0:
            raise IndexError("the bank is empty: add rows first")
        if n == 0:  # torch.multinomial refuses 0 draws; an empty answer is the same with or without freq
            return torch.zeros(0, dtype=torch.long)
        freq = self._read("freq")
        if strategy == "frequency" and freq is not None:
            check_frequencies(freq, len(self))  # freq may have been set by hand since the bank was made
            # shares in float64 first: counts beyond float32's range would otherwise turn infinite
            return torch.multinomial((freq / freq.sum()).float(), n, replacement=True, generator=generator)
        return torch.randint(len(self), (n,), generator=generator)

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The released rule: rows chosen from the initial noise by frequency."""
        return index_from_noise(noise, self._read("freq"), len(self))

    def nearest(self, queries, k: int = 8, *, exclude_self: bool = True, device="cpu", chunk: int = CHUNK,
                exact: bool = False, **index) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows by cosine similarity to row numbers or snippets: (indices (Q, k), similarities (Q, k)), best
        first; a query row is not its own neighbour unless exclude_self is False. Banks of 100,000 rows or more
        are searched through an approximate index unless exact=True. See search.nearest, which this is (its
        index_options, cache_dir and progress pass through)."""
        return search.nearest(self, queries, k, exclude_self=exclude_self, device=device, chunk=chunk, exact=exact,
                              **index)

    # ---- editing (in place; use copy() for a private edited copy) ---------------------------------------
    def copy(self) -> "MemoryBank":
        """An independent bank: edits to the copy never show in this bank, nor this bank's in the copy. It shares
        this bank's storage (memory-mapped rows stay mapped once) and records its own edits (overlay.py), so a copy
        costs O(edits), not O(rows); both banks stop writing into the shared storage."""
        out = MemoryBank.__new__(MemoryBank)
        out._cols = {name: None if c is None else c.copy() for name, c in self._cols.items()}
        out.label_names = None if self.label_names is None else list(self.label_names)
        out.meta, out._removed = dict(self.meta), self._removed
        state = self._search_state()
        if state is not None:  # the copy searches with the same index, its own edits
            out._search = state.copy_for(out._cols["rows"])
        return out

    def _search_state(self):
        """The search state, if it still describes these rows (edits keep it up to date)."""
        state = getattr(self, "_search", None)
        return state if state is not None and state.rows is self._cols["rows"] else None

    def _check_edit(self, indices) -> torch.Tensor:
        """Row numbers to edit; past the end of a bank that lost rows, the error says rows moved."""
        try:
            return self._check_index(indices)
        except IndexError as e:
            if not self._removed:
                raise
            raise IndexError(f"{e}. {self._removed} row(s) were removed from this bank: a removed row cannot be "
                             f"edited, and the rows after it moved down (row r is now r - rows removed before it); "
                             f"use the row's current number, or add it again with bank.add") from None

    def _rows_to_store(self, rows, what: str) -> torch.Tensor:
        """Checked rows in this bank's dtype; rows that a float16 bank cannot hold are refused, not stored as inf."""
        rows, spoiled = rows_spoiled_by_cast(check_snippets(rows, self.dim, what), self.dtype)
        if spoiled:
            raise ValueError(spoiled_rows_message(
                what, spoiled, self.dtype, "Normalise them first (gmem_explore.bank.memory.normalize(rows)): the model "
                "only uses their direction."))
        return rows

    def _new_frequencies(self, freq, n: int, current: torch.Tensor | None) -> torch.Tensor | None:
        """Frequencies for n new rows: those given, else the mean of the bank's (`current`; 1 in an empty bank)."""
        if current is None:
            if freq is not None:
                raise ValueError(missing_extra_message("frequencies (rows are drawn uniformly)", "freq"))
            return None
        if freq is None:
            fill = float(current.mean()) if len(current) else 1.0
            return torch.full((n,), fill, dtype=torch.float64)
        freq = torch.as_tensor(freq).double()
        if freq.numel() != n:
            raise ValueError(f"give one frequency per new row ({n}); got {freq.numel()}")
        freq = freq.reshape(n)
        check_counts(freq)  # the sum is checked on the whole bank: new rows may all have 0
        return freq

    def _new_labels(self, labels, n: int) -> torch.Tensor | None:
        if self._cols["labels"] is None:
            if labels is not None:
                raise ValueError(missing_extra_message("labels", "labels"))
            return None
        return torch.full((n,), -1) if labels is None else as_labels(labels, n)

    def _new_thumbnails(self, thumbnails, n: int) -> torch.Tensor | None:
        if self._cols["thumbnails"] is None:
            if thumbnails is not None:
                raise ValueError(missing_extra_message("thumbnails", "thumbnails"))
            return None
        size = tuple(self._cols["thumbnails"].shape[1:])
        if thumbnails is None:  # blank (white) tiles, so a grid shows where a row has no picture
            return torch.full((n, *size), 255, dtype=torch.uint8)
        return as_thumbnails(thumbnails, n, size)

    def add(self, rows, freq=None, labels=None, thumbnails=None) -> torch.Tensor:
        """Append rows; returns their indices. Missing extras get freq = mean freq, label -1, blank thumbnail; an
        extra the bank does not have (labels for a bank without labels, ...) is refused rather than dropped.
        Everything is checked before the bank changes."""
        rows = self._rows_to_store(rows, "new rows")
        n_new = rows.shape[0]
        current = self._read("freq")
        freq = self._new_frequencies(freq, n_new, current)
        labels = self._new_labels(labels, n_new)
        thumbnails = self._new_thumbnails(thumbnails, n_new)
        if freq is not None:  # an empty bank given only counts of 0 could draw nothing
            check_frequencies(torch.cat([current, freq]), len(self) + n_new)
        first = len(self)
        state, maps = self._search_state(), {}
        for name, values in (("rows", rows), ("freq", freq), ("labels", labels), ("thumbnails", thumbnails)):
            if self._cols[name] is not None:
                self._cols[name].add(values, maps)
        if state is not None:
            state.added(first, self._cols["rows"])
        return torch.arange(first, first + n_new)

    def replace(self, index: int, row, thumbnail=None, label=None) -> None:
        """Overwrite one row (and optionally its thumbnail and label) in place: the bank's tensors are written
        into, so for MemoryBank(r) this changes the caller's r (bank.copy() first to keep r). Everything is
        checked before anything is written; a thumbnail or label for a bank without them is refused."""
        i = int(self._check_edit([index])[0])
        row = self._rows_to_store(row, "replacement row")
        if row.shape[0] != 1:
            raise ValueError(f"replace takes one row; got {row.shape[0]} (use add for more rows)")
        thumbnail = None if thumbnail is None else self._new_thumbnails(thumbnail, 1)
        label = None if label is None else self._new_labels([label], 1)
        state, maps = self._search_state(), {}
        for name, value in (("rows", row), ("freq", None), ("labels", label), ("thumbnails", thumbnail)):
            column = self._cols[name]
            if column is None or (value is None and column.in_place):
                continue
            # an edited column takes every replace (the row's value as it was where it did not change): the
            # bank's edited columns then share one map of rows
            column.replace(i, column[[i]] if value is None else value, maps)
        if state is not None:
            state.replaced(i, self._cols["rows"])

    def remove(self, indices) -> None:
        """Drop rows (with their extras). Refused when the rows left all have frequency 0: such a bank could draw
        no row, and its file could not be loaded."""
        idx = self._check_edit(indices)
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[idx] = False
        freq = self._read("freq")
        if freq is not None and keep.any() and not freq[keep].sum() > 0:
            raise ValueError(f"removing rows {idx.tolist()[:10]} would leave only rows of frequency 0, which could "
                             f"never be drawn; remove fewer rows, raise the others' counts (bank.freq[i] = ...), or "
                             f"drop frequencies for uniform choice (bank.freq = None) first")
        state, maps = self._search_state(), {}
        for column in self._cols.values():
            if column is not None:
                column.remove(keep, maps)
        self._removed += len(idx.unique())
        if state is not None:
            state.removed(keep, self._cols["rows"])

    # ---- files ----------------------------------------------------------------------------------------
    def save(self, path, dtype: torch.dtype | None = None) -> None:
        """Atomic safetensors write (the old file survives any failure, and no partial file is left), streamed a
        slice of at most 64 MB at a time: an edited copy is written as its shared rows and its own edits without
        either being copied whole (saving over the memory-mapped file the bank was read from is safe too).
        dtype=torch.float16 halves the size; it is refused when a row does not fit in float16 (values beyond
        65504). A bank that MemoryBank.load would refuse (frequencies that sum to 0, ...) is refused here, before
        the file is touched."""
        if dtype is not None and dtype not in SAVE_DTYPES:
            raise ValueError(f"cannot save bank rows as {dtype!r}: MemoryBank.load reads floating-point rows only; "
                             f"use dtype torch.float16 (half the size), torch.bfloat16, torch.float32 or "
                             f"torch.float64, or None to keep {self.dtype}")
        if Path(path).is_dir():
            raise IsADirectoryError(f"{path} is a folder: give the bank a file name, e.g. {Path(path) / 'bank.safetensors'}")
        try:
            self.validate()
        except ValueError as e:
            raise ValueError(f"cannot save this bank, MemoryBank.load would refuse the file: {e}") from None
        rows = self._cols["rows"]
        if dtype is not None and dtype != self.dtype:
            spoiled = [i + a for a, b in chunks(len(self)) for i in rows_spoiled_by_cast(rows[a:b], dtype)[1]]
            if spoiled:
                raise ValueError(spoiled_rows_message(
                    f"cannot save this bank in {dtype}", spoiled, dtype, "Save with dtype=torch.float32, or normalise "
                    "the rows first (bank.rows = gmem_explore.bank.memory.normalize(bank.rows)): the model only uses their "
                    "direction."))
        tensors = {name: column for name, column in self._cols.items() if column is not None}
        meta = {**self.meta, "format": "gmem-explore-bank-1", "label_names": self.label_names}  # ours win
        check_metadata(meta)
        write_streaming(path, tensors, {"rows": dtype} if dtype is not None else None, meta)

    @classmethod
    def load(cls, path, mmap: bool = True) -> "MemoryBank":
        """A bank file (memory-mapped). A compressed bank (`gmem bank compress --out`, LowRankBank.save) is read too:
        its rows are reconstructed in float16, as LowRankBank.load(path).to_bank() does, with meta['low_rank']
        set to the rank."""
        tensors, meta = load_tensors(path, mmap=mmap)
        if meta.get("format") == LOW_RANK_FORMAT:  # as LowRankBank.load(path).to_bank()
            coeffs, basis, mean = check_low_rank(tensors, meta, path)
            return cls(low_rank_rows(coeffs, basis, mean), tensors.get("freq"), tensors.get("labels"),
                       meta.get("label_names"), tensors.get("thumbnails"),
                       meta={"low_rank": meta.get("report", {}).get("rank")})
        if "rows" not in tensors:
            raise ValueError(f"{path} is not a memory bank file: it has no 'rows' tensor (found {sorted(tensors)})")
        meta.pop("format", None)
        label_names = meta.pop("label_names", None)
        return cls(tensors["rows"], tensors.get("freq"), tensors.get("labels"), label_names,
                   tensors.get("thumbnails"), meta)

    def stats(self, sample: int | None = None, seed: int = 0) -> dict:
        """Size, dimension, norms, frequencies and groups (stats.statistics, which this is); the similarity figures
        too when `sample` rows are given (they cost a sample x sample product)."""
        return statistics(self, sample, seed)


def low_rank_rows(coeffs: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor, dtype=torch.float16) -> torch.Tensor:
    """The rows of a compressed bank, coeffs @ basis + mean, rebuilt chunk by chunk in `dtype`."""
    rows = torch.empty(coeffs.shape[0], basis.shape[1], dtype=dtype)
    for a, b in chunks(coeffs.shape[0]):
        rows[a:b] = (coeffs[a:b].float() @ basis.float() + mean.float()).to(dtype)
    return rows


def load_bank(path) -> MemoryBank:
    return MemoryBank.load(Path(path))
