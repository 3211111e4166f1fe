"""Nearest rows by cosine similarity: the one search behind MemoryBank.nearest, `gmem bank nearest`, the app's
neighbours and the notebooks.

- Banks of IndexOptions.min_rows rows or more (100,000) are searched through an approximate index (index.py: faiss
  IVF-PQ candidates re-ranked exactly; about 2 ms per query at 1.28M rows, recall@10 >= 0.95), built on
  first use with a progress bar and cached on disk. `exact=True`, smaller banks, GPUs and machines without faiss
  search exactly.
- Exact search on the CPU divides one matrix-vector product by row norms computed once per bank (about 80 ms per
  query over 1.28M x 768 fp16 rows), instead of re-normalising every row on every call (10 s). On a GPU the bank
  streams through it in chunks.
- What a bank keeps between searches (row norms, its index, which rows were edited since) is a SearchState that
  MemoryBank's edits keep up to date: replaced and added rows are searched exactly beside the index, removed ones
  are mapped out of it, so an edited bank is never answered from stale rows and never rebuilds its index.

    idx, sim = nearest(bank, [12, 99], k=8)      # rows most like rows 12 and 99 (themselves excluded)
    idx, sim = nearest(bank, snippets, k=5)      # rows most like (Q, D) snippet vectors
    other = partner_row(bank, 12)                # a row to mix or interpolate row 12 with

This module must not import memory.py (memory.py imports it for MemoryBank.nearest): the bank is used through its
column("rows") (the rows as stored, which an edited copy reads through its overlay without copying), dim, dtype,
snippets() and _check_index().
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import torch

from . import index as row_index
from .checks import CHUNK, check_snippets, chunks
from .overlay import Column
from .snippets import normalize
from ..devices import check_device
from ..values import whole

SIMILAR_BUT_DIFFERENT = 0.5  # cosine of the partner row in a bank without groups


@dataclass
class SearchState:
    """What a bank keeps between searches. `rows` is the bank's rows column (overlay.Column) it describes: a bank
    whose rows were assigned anew (not through its edit methods) starts over. The index is shared between a bank
    and its copies (it never changes); norms, row_of_id and extra are each bank's own: 5 + 5 MB at 1.28M rows, and
    a copy shares its original's until its first edit (every edit makes new ones, never writing shared ones)."""

    rows: Column
    norms: torch.Tensor  # (N,) float32 norm of every current row; NaN for broken rows
    index: row_index.RowIndex | None = None
    row_of_id: torch.Tensor | None = None  # int32 index id -> current row; -1 once removed or replaced; None: same
    extra: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # rows not in the index
    key: str | None = None  # index.fingerprint of the current rows once computed (6 s at 1.28M); None after an edit

    def copy_for(self, rows: Column) -> "SearchState":
        return replace(self, rows=rows)

    def own_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.norms, self.row_of_id, self.extra) if t is not None]

    def _ids(self) -> torch.Tensor:
        return self.row_of_id if self.row_of_id is not None else torch.arange(self.index.n, dtype=torch.int32)

    def replaced(self, row: int, rows: Column) -> None:
        self.rows, self.key = rows, None
        self.norms = self.norms.clone()
        self.norms[row] = row_index.row_norms(rows[row:row + 1])[0]
        if self.index is not None:
            ids = self._ids()
            self.row_of_id = torch.where(ids == row, -1, ids)
            self.extra = torch.cat([self.extra, torch.tensor([row])]).unique()

    def added(self, first: int, rows: Column) -> None:
        self.rows, self.key = rows, None
        self.norms = torch.cat([self.norms, row_index.row_norms(rows[first:])])
        if self.index is not None:
            self.extra = torch.cat([self.extra, torch.arange(first, rows.shape[0])])

    def removed(self, keep: torch.Tensor, rows: Column) -> None:
        self.rows, self.norms, self.key = rows, self.norms[keep], None
        new_number = torch.cumsum(keep.long(), 0) - 1  # old row -> new row (meaningless where not kept)
        if self.index is not None:
            ids = self._ids()
            alive = ids >= 0
            alive[alive.clone()] = keep[ids[alive].long()]
            self.row_of_id = torch.where(alive, new_number[ids.clamp_min(0).long()], -1).to(torch.int32)
            self.extra = new_number[self.extra[keep[self.extra]]]


def state_of(bank) -> SearchState:
    """The bank's search state, made (row norms: about 1.5 s at 1.28M rows) when it has none or its rows were
    replaced behind its back."""
    state = getattr(bank, "_search", None)
    rows = bank.column("rows")
    if state is None or state.rows is not rows or state.norms.shape[0] != len(bank):
        state = SearchState(rows, row_index.row_norms(rows))
        bank._search = state
    return state


def fingerprint(bank) -> str:
    """index.fingerprint of the bank's current rows, hashed once per bank and kept in its search state until an
    edit: the index cache and the whole-bank map (whole_map.py) are both keyed by it, so a bank is hashed once."""
    state = state_of(bank)
    if state.key is None:
        current = state.index is not None and state.row_of_id is None and not len(state.extra)
        state.key = state.index.key if current else row_index.fingerprint(state.rows)
    return state.key


# one index build at a time: two sessions' first searches of a 1.28M-row bank (or a search beside warm_index) would
# otherwise build it twice at once (71 s and both cores each); the second waits, then reads the first one's cache
_BUILDING = threading.Lock()


def _index_of(bank, state: SearchState, options: row_index.IndexOptions, cache_dir, progress: bool):
    if state.index is None:
        with _BUILDING:
            if state.index is None:
                index = row_index.cached_index(state.rows, options, key=state.key, cache_dir=cache_dir,
                                               progress=progress)
                state.row_of_id, state.extra = None, torch.zeros(0, dtype=torch.long)
                state.key, state.index = index.key, index
    return state.index


def warm_index(bank, options: row_index.IndexOptions | None = None, cache_dir=None) -> threading.Thread | None:
    """Builds (or reads from its cache) the index of a bank of options.min_rows rows or more in a daemon thread, so
    that the first search does not wait for it (71-84 s at 1.28M rows on 2 cores); copies of the bank made after it
    is done share it. None (and nothing started) for smaller banks or without faiss."""
    options = options or row_index.IndexOptions()
    if len(bank) < options.min_rows or not row_index.available():
        return None
    state = state_of(bank)
    thread = threading.Thread(target=_index_of, args=(bank, state, options, cache_dir, False),
                              name="gmem-index-warm-up", daemon=True)
    thread.start()
    return thread


def _exact_cpu(state: SearchState, q: torch.Tensor, want: int, self_rows, skip_self: bool):
    """Exact top-`want` on the CPU from the norms computed once; queries 16 at a time bound the (Q, N) scores at
    82 MB for 1.28M rows. A single query's fp16 product is accurate to about 1e-3, so its best want + 64 rows are
    scored again in float32 (rerank): the answer is float32-exact at fp16's speed."""
    best_i, best_s = [], []
    for a in range(0, q.shape[0], 16):
        block = q[a:a + 16]
        scores = row_index.exact_scores(state.rows, state.norms, block)
        scores[torch.isnan(scores)] = float("-inf")
        if skip_self:
            scores[torch.arange(scores.shape[0]), self_rows[a:a + 16]] = float("-inf")
        if block.shape[0] == 1 and state.rows.dtype != torch.float32:
            s, i = scores.topk(min(want + 64, scores.shape[1]), dim=1)
            i, s = row_index.rerank(state.rows, state.norms, block, torch.where(torch.isfinite(s), i, -1), want)
        else:
            s, i = scores.topk(want, dim=1)
        best_i.append(i)
        best_s.append(s)
    return torch.cat(best_i), torch.cat(best_s)


def _indexed(bank, state: SearchState, q: torch.Tensor, want: int, self_rows, skip_self: bool,
             options: row_index.IndexOptions, cache_dir, progress: bool):
    """Index candidates (mapped to current rows, edited rows added), re-ranked exactly."""
    index = _index_of(bank, state, options, cache_dir, progress)
    ids = index.candidates(q, max(options.rerank, 2 * want))
    rows = ids if state.row_of_id is None else torch.where(ids >= 0, state.row_of_id[ids.clamp_min(0)].long(), -1)
    if len(state.extra):
        rows = torch.cat([rows, state.extra.expand(rows.shape[0], -1)], dim=1)
    if skip_self:
        rows = torch.where(rows == self_rows[:, None], -1, rows)
    return row_index.rerank(state.rows, state.norms, q, rows, want)


def nearest(bank, queries, k: int = 8, *, exclude_self: bool = True, device="cpu", chunk: int = CHUNK,
            exact: bool = False, index_options: row_index.IndexOptions | None = None, cache_dir=None,
            progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows by cosine similarity: (indices (Q, k), similarities (Q, k)), best first, on the CPU.

    `queries` are row numbers (an int, a list or a 1-D integer tensor; each row itself is left out unless
    exclude_self is False) or snippets ((Q, D) or (D,) floats). k beyond the rows there are gives them all. On a
    GPU (`device`) the bank streams through it in chunks, in fp16 when the bank is stored in fp16; `chunk` (rows
    compared at a time) never changes the answer. `exact=False` lets banks of index_options.min_rows rows or more
    be searched through the approximate index (built on first use with a progress bar unless progress=False,
    cached in cache_dir, default ~/.cache/gmem-explore/index); exact=True always compares every row.

    Broken rows (NaN or infinite values) are never returned, so a bank with few usable rows gives fewer than k
    columns. They are skipped rather than refused: a search asks which rows are like this one, a broken row is like
    nothing, and one broken row among 640,000 (a damaged file, a failed edit) would otherwise stop every search in
    the app and the CLI until it was repaired. They are not hidden: `gmem bank stats` counts them (nonfinite_rows),
    bank.snippets refuses them by number (also as a query row here), and a search with no usable row left says so."""
    k = whole(k, "k (how many nearest rows)", 1)
    chunk = whole(chunk, "chunk (rows compared at a time)", 1)
    device = check_device(device)
    if len(bank) == 0:
        raise ValueError("nearest rows of an empty bank: the bank is empty; add rows first")
    q_tensor = queries if isinstance(queries, torch.Tensor) else torch.as_tensor(queries)
    if q_tensor.numel() == 0:
        raise ValueError("no queries given: give row numbers (e.g. [12, 99]) or snippets (Q, D)")
    self_rows = None
    if not q_tensor.is_floating_point():
        self_rows = bank._check_index(q_tensor)
        q = bank.snippets(self_rows)  # a broken query row is refused by number
        self_rows = self_rows.to(device)
    else:
        q = normalize(check_snippets(q_tensor, bank.dim, "query"))
    skip_self = self_rows is not None and exclude_self
    want = min(k, len(bank) - (1 if skip_self else 0))
    if want < 1:
        raise ValueError(f"nearest rows need a bank with another row than the query; this one has {len(bank)}")
    options = index_options or row_index.IndexOptions()
    if device.type == "cpu":
        state = state_of(bank)
        q = q.float()
        if not exact and len(bank) >= options.min_rows and want <= options.rerank and row_index.available():
            best_i, best_s = _indexed(bank, state, q, want, self_rows, skip_self, options, cache_dir, progress)
        else:
            best_i, best_s = _exact_cpu(state, q, want, self_rows, skip_self)
        return _usable(best_i, best_s)
    dtype = bank.dtype if bank.dtype in (torch.float16, torch.bfloat16) else torch.float32
    stored = bank.column("rows")
    q = q.to(device, dtype)
    best_s = torch.full((q.shape[0], 0), -2.0, device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    for a, b in chunks(len(bank), chunk):
        rows = normalize(stored[a:b].to(device)).to(dtype)
        sims = (q @ rows.T).float()
        sims[torch.isnan(sims)] = float("-inf")  # broken (NaN / infinite) rows: never a neighbour
        if skip_self:
            inside = (self_rows >= a) & (self_rows < b)
            sims[inside.nonzero().flatten(), (self_rows[inside] - a)] = float("-inf")
        s, i = sims.topk(min(want, sims.shape[1]), dim=1)
        # chunks smaller than k: until k rows have been seen, keep every one of them
        best_s, order = torch.cat([best_s, s], 1).topk(min(want, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + a], 1).gather(1, order)
    return _usable(best_i.cpu(), best_s.cpu())


def _usable(best_i: torch.Tensor, best_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns no query filled (broken rows are -inf): every query has the same number of usable rows
    in exact search (the bank's finite rows, less itself)."""
    found = torch.isfinite(best_s).all(dim=0)
    if not found.any():
        raise ValueError("the bank has no usable row to compare with: its other rows are NaN or infinite; replace or "
                         "remove them (bank.replace / bank.remove)")
    return best_i[:, found], best_s[:, found]


def partner_row(bank, row: int) -> int:
    """A row to interpolate or mix `row` with that shows a visible, smooth change: the row most like it from
    another group. Neighbouring rows are often near-duplicates (emoji-32's rows 0 and 1: two smileys, identical
    frames), and the least similar row turns the middle frames into a washed-out blur. Without groups: the row
    whose cosine to `row` is nearest SIMILAR_BUT_DIFFERENT. Broken (NaN) rows are never chosen."""
    if len(bank) < 2:
        raise ValueError("the bank has fewer than two rows: there is no other row to pair with")
    bank._check_index([row])
    state = state_of(bank)  # norms once: a float32 copy of a 1.28M-row bank would be 3.9 GB
    query = state.rows[row].float()
    sims = torch.nan_to_num(row_index.exact_scores(state.rows, state.norms, (query / query.norm())[None])[0],
                            nan=float("-inf"))
    sims[row] = float("-inf")
    labels = None if bank.column("labels") is None else bank.column("labels")[:]
    if labels is not None and (labels != labels[row]).any():
        return int(torch.where(labels != labels[row], sims, torch.tensor(float("-inf"))).argmax())
    return int((sims - SIMILAR_BUT_DIFFERENT).abs().argmin())
