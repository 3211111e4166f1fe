"""Nearest rows by cosine similarity: the one search behind MemoryBank.nearest, `gmem bank nearest`, the app's
neighbours and the notebooks. It is exact and streams the bank in chunks of 65,536 rows, so a memory-mapped fp16
bank (the released one: 640,000 x 768) is never expanded whole to float32 (1.97 GB on top of the map). An
approximate index goes behind nearest(), with the same arguments.

    idx, sim = nearest(bank, [12, 99], k=8)      # rows most like rows 12 and 99 (themselves excluded)
    idx, sim = nearest(bank, snippets, k=5)      # rows most like (Q, D) snippet vectors
    other = partner_row(bank, 12)                # a row to mix or interpolate row 12 with

This module must not import memory.py (memory.py imports it for MemoryBank.nearest): the bank is used through its
rows, dim, snippets() and _check_index().
"""
from __future__ import annotations

import torch

from .checks import CHUNK, check_snippets, chunks
from .snippets import normalize
from ..devices import check_device
from ..values import whole

SIMILAR_BUT_DIFFERENT = 0.5  # cosine of the partner row in a bank without groups


def nearest(bank, queries, k: int = 8, *, exclude_self: bool = True, device="cpu",
            chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows by cosine similarity: (indices (Q, k), similarities (Q, k)), best first, on the CPU.

    `queries` are row numbers (an int, a list or a 1-D integer tensor; each row itself is left out unless
    exclude_self is False) or snippets ((Q, D) or (D,) floats). k beyond the rows there are gives them all. On a
    GPU (`device`) the bank streams through it in chunks, in fp16 when the bank is stored in fp16; `chunk` (rows
    compared at a time) never changes the answer.

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
    dtype = bank.rows.dtype if device.type == "cuda" and bank.rows.dtype in (torch.float16, torch.bfloat16) else torch.float32
    q = q.to(device, dtype)
    best_s = torch.full((q.shape[0], 0), -2.0, device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    for a, b in chunks(len(bank), chunk):
        rows = normalize(bank.rows[a:b].to(device)).to(dtype)
        sims = (q @ rows.T).float()
        sims[torch.isnan(sims)] = float("-inf")  # broken (NaN / infinite) rows: never a neighbour
        if skip_self:
            inside = (self_rows >= a) & (self_rows < b)
            sims[inside.nonzero().flatten(), (self_rows[inside] - a)] = float("-inf")
        s, i = sims.topk(min(want, sims.shape[1]), dim=1)
        # chunks smaller than k: until k rows have been seen, keep every one of them
        best_s, order = torch.cat([best_s, s], 1).topk(min(want, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + a], 1).gather(1, order)
    # every query has the same number of usable rows (the bank's finite rows, less itself): drop the -inf tail
    found = torch.isfinite(best_s).all(dim=0)
    if not found.any():
        raise ValueError("the bank has no usable row to compare with: its other rows are NaN or infinite; replace or "
                         "remove them (bank.replace / bank.remove)")
    return best_i[:, found].cpu(), best_s[:, found].cpu()


def partner_row(bank, row: int) -> int:
    """A row to interpolate or mix `row` with that shows a visible, smooth change: the row most like it from
    another group. Neighbouring rows are often near-duplicates (emoji-32's rows 0 and 1: two smileys, identical
    frames), and the least similar row turns the middle frames into a washed-out blur. Without groups: the row
    whose cosine to `row` is nearest SIMILAR_BUT_DIFFERENT. Broken (NaN) rows are never chosen."""
    if len(bank) < 2:
        raise ValueError("the bank has fewer than two rows: there is no other row to pair with")
    bank._check_index([row])
    rows = normalize(bank.rows.float())
    sims = torch.nan_to_num(rows @ rows[row], nan=float("-inf"))
    sims[row] = float("-inf")
    if bank.labels is not None and (bank.labels != bank.labels[row]).any():
        return int(torch.where(bank.labels != bank.labels[row], sims, torch.tensor(float("-inf"))).argmax())
    return int((sims - SIMILAR_BUT_DIFFERENT).abs().argmin())
