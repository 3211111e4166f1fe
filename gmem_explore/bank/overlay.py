"""Per-row storage that a bank shares with its copies: edits without copies.

A Column holds one per-row tensor of a bank (rows, freq, labels or thumbnails) as
- base: the rows it was made from (the memory-mapped file's, or the caller's tensor), never written once shared;
- delta: the rows written since (replacements and additions), appended, never written in place;
- src: once edited, where each current row lives: position p < len(base) is base[p], p >= len(base) is
  delta[p - len(base)]; None while row i is base[i]. int32 below 2**31 positions: 5 MB at 1.28M rows.
Every edit makes new delta and src tensors, so copy() shares all three by reference and is O(1): a session's copy of
the 1.28M x 768 fp16 bank (1.9 GB) with 100 edits holds its map (5 MB) and 100 rows (150 KB), and neither bank
ever sees the other's edits. A column that nothing shares and that has no delta is a plain tensor, edited in place
as before (MemoryBank(r).replace(0, x) writes into r).

Columns of one bank that were edited together share one src tensor: edits pass the same `maps` dict, which hands
columns in the same state (same src, base and delta lengths) the same new map, and a replace appends to every
edited column (the row's current value where only some of them change) to keep them in step.

Reading: column[i], column[a:b], column[index tensor or mask] return tensors (a plain column's are views of its
base, which must not be written into). This module imports only torch: index.py and search.py read columns too.
"""
from __future__ import annotations

import torch


def _positions_dtype(count: int) -> torch.dtype:
    return torch.int32 if count < 2**31 else torch.int64


class Column:
    """One per-row tensor as base + delta + map (see the module docstring). Read-only to its callers."""

    __slots__ = ("base", "delta", "src", "shared")

    def __init__(self, base: torch.Tensor, delta: torch.Tensor | None = None, src: torch.Tensor | None = None,
                 shared: bool = False):
        self.base = base
        self.delta = base[:0] if delta is None else delta
        self.src = src
        self.shared = shared  # another bank holds this base: never write into it

    # ---- reading --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.base.shape[0] if self.src is None else self.src.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.base.shape[1:]))

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def is_floating_point(self) -> bool:
        return self.base.is_floating_point()

    @property
    def edited(self) -> bool:
        """Whether rows are read through the map (a copy's or a shared bank's edits)."""
        return self.src is not None

    def __getitem__(self, key) -> torch.Tensor:
        if self.src is None:
            return self.base[key]
        if isinstance(key, int):
            return self._gather(self.src[key:key + 1] if key != -1 else self.src[-1:])[0]
        return self._gather(self.src[key])

    def _gather(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows at these positions of cat(base, delta), without making that cat: index_select on each (a boolean
        mask over 1.28M positions costs ten times as much)."""
        n0, flat = self.base.shape[0], positions.reshape(-1)
        if not n0:
            return self.delta.index_select(0, flat).reshape(*positions.shape, *self.base.shape[1:])
        out = self.base.index_select(0, flat.clamp_max(n0 - 1))
        new = (flat >= n0).nonzero().flatten()
        if len(new):
            out[new] = self.delta.index_select(0, flat[new] - n0)
        return out.reshape(*positions.shape, *self.base.shape[1:])

    def materialise(self) -> torch.Tensor:
        """Every current row as one tensor: the base itself when unedited, else a new tensor (O(rows))."""
        return self.base if self.src is None else self._gather(self.src)

    def private(self) -> torch.Tensor:
        """The rows as a tensor this bank alone holds, which its owner may write into (MemoryBank.rows and the
        other public attributes): a shared or edited column is copied first, once (1.9 GB for the rows of an
        edited 1.28M x 768 fp16 bank), and is a plain column from then on."""
        if self.src is not None or self.shared:
            self.base = self.materialise() if self.src is not None else self.base.clone()
            self.delta, self.src, self.shared = self.base[:0], None, False
        return self.base

    def own_tensors(self) -> list[torch.Tensor]:
        """The tensors this column holds beyond what it shares: its map and delta, and its base unless another
        bank shares it (a map and delta still shared with a copy that has not edited since count for both)."""
        return [t for t in (self.src, self.delta, None if self.shared else self.base) if t is not None]

    # ---- copying and editing ----------------------------------------------------------------------------
    def copy(self) -> "Column":
        """An independent column sharing this one's storage: both stop writing into their base."""
        self.shared = True
        return Column(self.base, self.delta, self.src, shared=True)

    @property
    def in_place(self) -> bool:
        return self.src is None and not self.shared

    def _map(self, maps: dict, key: tuple, make) -> torch.Tensor:
        key = (*key, id(self.src), self.base.shape[0], self.delta.shape[0])
        if key not in maps:
            maps[key] = make(self.src if self.src is not None else
                             torch.arange(self.base.shape[0], dtype=_positions_dtype(self.base.shape[0])))
        return maps[key]

    def replace(self, i: int, value: torch.Tensor, maps: dict) -> None:
        """Row i := value[0] (value: one row, in this column's dtype)."""
        if self.in_place:
            if not self.base.is_contiguous():  # rows sharing memory (stride 0): writing one would write them all
                self.base = self.base.clone()
            self.base[i] = value[0]
            return
        at = self.base.shape[0] + self.delta.shape[0]

        def make(src):
            src = src.to(_positions_dtype(at + 1), copy=True)
            src[i] = at
            return src
        self.src = self._map(maps, ("replace", i), make)
        self.delta = torch.cat([self.delta, value])

    def add(self, values: torch.Tensor, maps: dict) -> None:
        if self.in_place:
            self.base = torch.cat([self.base, values])
            return
        at, k = self.base.shape[0] + self.delta.shape[0], values.shape[0]

        def make(src):
            dtype = _positions_dtype(at + k)
            return torch.cat([src.to(dtype), torch.arange(at, at + k, dtype=dtype)])
        self.src = self._map(maps, ("add", k), make)
        self.delta = torch.cat([self.delta, values])

    def remove(self, keep: torch.Tensor, maps: dict) -> None:
        if self.in_place:
            self.base = self.base[keep]
            return
        self.src = self._map(maps, ("remove",), lambda src: src[keep])
