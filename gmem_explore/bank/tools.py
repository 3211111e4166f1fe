"""Tools for big memory banks (the released one: 640,000 x 768): statistics and nearest-row search.

Everything works in chunks of 65,536 rows, so a memory-mapped fp16 bank is never expanded whole to float32
(that would be 1.97 GB on top of the map). Rows are compared as the model sees them: L2-normalised.

    stats = statistics(bank)                         # JSON-able dict
    idx, sim = nearest_rows(bank, [12, 99], k=8)     # rows most similar to rows 12 and 99 (themselves excluded)
Low-rank compression is in lowrank.py.
"""
from __future__ import annotations

import math

import torch

from .memory import CHUNK, MemoryBank, chunks, normalize
from .checks import check_snippets
from ..devices import check_device
from ..values import is_whole



SIMILAR_BUT_DIFFERENT = 0.5  # cosine of the partner row in a bank without groups


def partner_row(bank: MemoryBank, row: int) -> int:
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


def statistics(bank: MemoryBank, sample: int = 4096, seed: int = 0) -> dict:
    """Size, norms, frequency concentration and how similar rows are (estimated on `sample` random rows, at least
    2: a similarity needs a pair; a bank of fewer rows than `sample` uses them all, and one of a single row has no
    similarity figures)."""
    if not is_whole(sample) or sample < 2:
        raise ValueError(f"sample must be a whole number of rows >= 2 (the similarity figures compare pairs of rows; "
                         f"a bank with fewer rows uses all of them); got {sample!r}")
    if not is_whole(seed):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    sample = int(sample)
    n, d = len(bank), bank.dim
    out = {"rows": n, "dim": d, "dtype": str(bank.rows.dtype).removeprefix("torch."),
           "megabytes": round(bank.rows.numel() * bank.rows.element_size() / 2**20, 1)}
    if n == 0:
        return out
    norms = torch.cat([bank.rows[a:b].float().norm(dim=1) for a, b in chunks(n)])
    finite = torch.isfinite(norms)  # NaN or infinite values (or a norm beyond float32)
    good = norms[finite]
    if len(good):  # NaN / infinite rows are only counted (nonfinite_rows), never part of a figure
        out.update(norm_mean=float(good.mean()), norm_std=float(good.std()) if len(good) > 1 else 0.0,
                   norm_min=float(good.min()), norm_max=float(good.max()))
    out.update(zero_rows=int((norms == 0).sum()), nonfinite_rows=int((~finite).sum()))
    if bank.freq is not None:
        p = bank.freq / bank.freq.sum()
        nz = p[p > 0]
        top = max(1, n // 100)
        out.update(freq_total=float(bank.freq.sum()), freq_min=float(bank.freq.min()), freq_max=float(bank.freq.max()),
                   never_drawn_rows=int((bank.freq == 0).sum()),
                   # exp(entropy): how many equally likely rows the frequencies amount to (n if uniform)
                   effective_rows=float(torch.exp(-(nz * nz.log()).sum())),
                   top_1pct_share=float(p.sort(descending=True).values[:top].sum()))
    g = torch.Generator().manual_seed(seed)
    usable = finite.nonzero().flatten()  # all rows (in order) when none is broken: the same draw as before
    pick = usable[torch.randperm(len(usable), generator=g)[:min(sample, len(usable))]].sort().values
    x = normalize(bank.rows[pick])
    sims = x @ x.T
    m = len(pick)
    if m > 1:
        off = sims[~torch.eye(m, dtype=torch.bool)].reshape(m, m - 1)
        out.update(sample_rows=m, mean_cosine=float(off.mean()),
                   mean_nearest_cosine=float(off.max(dim=1).values.mean()),
                   # norm of the mean direction: 0 for directions spread evenly, 1 if all rows point one way
                   mean_direction_norm=float(x.mean(0).norm()))
    return out


def nearest_rows(bank: MemoryBank, queries, k: int = 8, device="cpu", chunk: int = CHUNK,
                 exclude_self: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows by cosine similarity: (indices (Q, k), similarities (Q, k)), best first.

    `queries` are row indices (a list / 1-D integer tensor; each row itself is excluded unless exclude_self is
    False) or snippets (Q, D). On a GPU the bank streams through in chunks (fp16 matmuls when the bank is fp16).
    Broken (NaN / infinite) rows are never returned, so a bank of few usable rows gives fewer than k columns."""
    if not is_whole(k) or k < 1:
        raise ValueError(f"k (how many nearest rows) must be a whole number >= 1; got {k!r}")
    if not is_whole(chunk) or chunk < 1:
        raise ValueError(f"chunk (rows compared at a time) must be a whole number >= 1; got {chunk!r}")
    device = check_device(device)
    q_tensor = torch.as_tensor(queries)
    if q_tensor.numel() == 0:
        raise ValueError("no queries given: give row numbers (e.g. [12, 99]) or snippets (Q, D)")
    self_rows = None
    if not q_tensor.is_floating_point():
        self_rows = bank._check_index(q_tensor).to(device)
        q = bank.snippets(self_rows.cpu())
    else:
        q = normalize(check_snippets(q_tensor, bank.dim, "query"))
    want = min(int(k), len(bank) - (1 if self_rows is not None and exclude_self else 0))
    if want < 1:
        raise ValueError(f"nearest_rows needs a bank with another row than the query; this one has {len(bank)}")
    dtype = bank.rows.dtype if device.type == "cuda" and bank.rows.dtype in (torch.float16, torch.bfloat16) else torch.float32
    q = q.to(device, dtype)
    best_s = torch.full((q.shape[0], 0), -2.0, device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    for a, b in chunks(len(bank), chunk):
        rows = normalize(bank.rows[a:b].to(device)).to(dtype)
        sims = (q @ rows.T).float()
        sims[torch.isnan(sims)] = float("-inf")  # broken (NaN / infinite) rows: never a neighbour
        if self_rows is not None and exclude_self:
            inside = (self_rows >= a) & (self_rows < b)
            sims[inside.nonzero().flatten(), (self_rows[inside] - a)] = float("-inf")
        s, i = sims.topk(min(want, sims.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, s], 1).topk(min(want, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + a], 1).gather(1, order)
    # every query has the same number of usable rows (the bank's finite rows, less itself): drop the -inf tail
    found = torch.isfinite(best_s).all(dim=0)
    if not found.any():
        raise ValueError("the bank has no usable row to compare with: its other rows are NaN or infinite; replace or "
                         "remove them (bank.replace / bank.remove)")
    return best_i[:, found].cpu(), best_s[:, found].cpu()
