"""Statistics of a bank, the one implementation behind MemoryBank.stats, `gmem bank stats`, the app's Bank tab and
the notebooks: size, row norms, broken rows, frequency concentration, groups and (on a sample) how similar rows are.

    s = statistics(bank)                  # JSON-able dict, with the similarity figures of 4,096 sampled rows
    s = statistics(bank, sample=None)     # without them (they cost a 4,096 x 4,096 product): bank.stats()

Norms are taken a chunk of 65,536 rows at a time, so a memory-mapped fp16 bank is never expanded whole to float32.
This module must not import memory.py (memory.py imports it for MemoryBank.stats).
"""
from __future__ import annotations

import torch

from .checks import chunks
from .snippets import normalize
from ..values import as_whole, whole


def statistics(bank, sample: int | None = 4096, seed: int = 0) -> dict:
    """Size, norms, frequency concentration, groups and how similar rows are (estimated on `sample` random rows, at
    least 2: a similarity needs a pair; a bank of fewer rows than `sample` uses them all, and one of a single row has
    no similarity figures; None leaves them out).

    NaN / infinite rows are only counted (nonfinite_rows), never part of a figure; norm figures are missing when
    no row is finite."""
    if sample is not None and as_whole(sample, 2) is None:
        raise ValueError(f"sample must be a whole number of rows >= 2 (the similarity figures compare pairs of rows; "
                         f"a bank with fewer rows uses all of them); got {sample!r}")
    seed = whole(seed, "seed")
    n, d, rows = len(bank), bank.dim, bank.column("rows")  # read as stored: an edited copy is never copied whole
    out = {"rows": n, "dim": d, "dtype": str(bank.dtype).removeprefix("torch."),
           "megabytes": round(n * d * bank.dtype.itemsize / 2**20, 1)}
    norms = torch.cat([rows[a:b].float().norm(dim=1) for a, b in chunks(n)]) if n else torch.zeros(0)
    finite = torch.isfinite(norms)  # NaN or infinite values (or a norm beyond float32)
    good = norms[finite]
    if len(good):
        out.update(norm_mean=float(good.mean()), norm_std=float(good.std()) if len(good) > 1 else 0.0,
                   norm_min=float(good.min()), norm_max=float(good.max()))
    out.update(zero_rows=int((norms == 0).sum()), nonfinite_rows=int((~finite).sum()))
    freq = None if bank.column("freq") is None else bank.column("freq")[:]
    if freq is not None and n:
        p = freq / freq.sum()
        nz = p[p > 0]
        top = max(1, n // 100)
        out.update(freq_total=float(freq.sum()), freq_min=float(freq.min()), freq_max=float(freq.max()),
                   never_drawn_rows=int((freq == 0).sum()),
                   # exp(entropy): how many equally likely rows the frequencies amount to (n if uniform)
                   effective_rows=float(torch.exp(-(nz * nz.log()).sum())),
                   top_1pct_share=float(p.sort(descending=True).values[:top].sum()))
    if bank.column("labels") is not None and bank.label_names:
        labels = bank.column("labels")[:]
        out["groups"] = {name: int((labels == i).sum()) for i, name in enumerate(bank.label_names)}
    if sample is not None:
        out.update(similarity(bank, finite, int(sample), seed))
    return out


def similarity(bank, finite: torch.Tensor, sample: int, seed: int) -> dict:
    """Cosine figures of up to `sample` random finite rows (all of them when there are fewer); {} below two rows."""
    g = torch.Generator().manual_seed(seed)
    usable = finite.nonzero().flatten()  # all rows (in order) when none is broken
    pick = usable[torch.randperm(len(usable), generator=g)[:min(sample, len(usable))]].sort().values
    m = len(pick)
    if m < 2:
        return {}
    x = normalize(bank.column("rows")[pick])
    off = (x @ x.T)[~torch.eye(m, dtype=torch.bool)].reshape(m, m - 1)
    return {"sample_rows": m, "mean_cosine": float(off.mean()),
            "mean_nearest_cosine": float(off.max(dim=1).values.mean()),
            # norm of the mean direction: 0 for directions spread evenly, 1 if all rows point one way
            "mean_direction_norm": float(x.mean(0).norm())}
