"""Figures of a memory bank as a whole, beside its 2-D map (bank/map2d.py): how often rows are drawn, and how the
snippet encoder keeps Twemoji's groups apart. Notebook 01 shows them; they take a MemoryBank and return a
matplotlib Figure (or numbers), so they work in any frontend. They read the bank's parts as stored
(bank.column): bank.rows and the other attributes copy an edited or shared bank's part for good (1.9 GB for the rows
of the 1.28M-row bank)."""
from __future__ import annotations

import torch

from ..bank.checks import chunks
from ..bank.memory import MemoryBank, normalize
from ..bank.map2d import subsample_indices


def frequency_figure(bank: MemoryBank):
    """Histogram of per-row frequency and the share of draws taken by the most frequent rows."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3), dpi=90)
    left, right = fig.subplots(1, 2)
    if bank.column("freq") is None:
        left.text(0.5, 0.5, "this bank has no frequencies:\nrows are drawn uniformly", ha="center", va="center")
        right.axis("off")
        return fig
    freq = bank.column("freq")[:].float()
    left.hist(freq.numpy(), bins=50, color="tab:blue")
    left.set(title=f"frequency of {len(bank):,} rows", xlabel="freq (how often the row is drawn)", ylabel="rows")
    if freq.max() > 0 and freq.max() / max(float(freq[freq > 0].min()), 1e-12) > 100:
        left.set_yscale("log")
    share = torch.cumsum(freq.sort(descending=True).values, 0) / freq.sum()
    x = torch.arange(1, len(freq) + 1).float() / len(freq)
    right.plot(x.numpy(), share.numpy(), lw=2.5, color="tab:blue", label="this bank")
    # dashed and on top: for a bank of equal frequencies (the emoji default) the two curves coincide
    right.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="uniform", zorder=3)
    right.set(title="share of draws vs share of rows", xlabel="most frequent fraction of rows", ylabel="fraction of draws")
    if bool((freq == freq[0]).all()):
        right.text(0.05, 0.9, "every row equally frequent:\nthe curves coincide", fontsize=8, va="top")
    right.legend(loc="lower right")
    fig.tight_layout()
    return fig


def neighbour_agreement(bank: MemoryBank, k: int = 10, queries: int = 2000, seed: int = 0) -> dict:
    """How rows cluster by group: the fraction of each row's k nearest neighbours (cosine, snippet space)
    that share its group, per group, against chance (the group's share of the bank).

    Uses at most `queries` rows as queries (2,000 x 640,000 similarities take a few seconds) so it scales to the
    released bank. Returns {group: (agreement, chance, rows)}; needs labels.
    """
    if bank.column("labels") is None:
        raise ValueError("neighbour_agreement needs a bank with labels (groups); this bank has none")
    labels = bank.column("labels")[:]
    q = subsample_indices(len(bank), queries, seed)
    idx, _ = bank.nearest(q, k=k)  # each row itself left out (even when a duplicate row ties with it)
    same = (labels[idx] == labels[q][:, None]).float().mean(1)
    out = {}
    for g in labels[q].unique().tolist():
        name = bank.label_names[g] if bank.label_names and 0 <= g < len(bank.label_names) else str(g)
        members = labels[q] == g
        out[name] = (float(same[members].mean()), float((labels == g).float().mean()), int((labels == g).sum()))
    return out


def group_similarity_figure(bank: MemoryBank):
    """Mean cosine similarity between group centroids: which groups the encoder keeps apart."""
    from matplotlib.figure import Figure

    if bank.column("labels") is None:
        raise ValueError("group_similarity_figure needs a bank with labels (groups)")
    labels, rows = bank.column("labels")[:], bank.column("rows")
    groups = labels.unique()  # sorted
    slot = torch.searchsorted(groups, labels)  # each row's group, as a position in `groups`
    sums = torch.zeros(len(groups), bank.dim)
    for a, b in chunks(len(bank)):  # unit rows summed chunk by chunk: never all rows in float32 at once
        sums.index_add_(0, slot[a:b], normalize(rows[a:b]))
    centroids = normalize(sums)  # the direction of a group's mean is that of its sum
    groups = groups.tolist()
    sim = (centroids @ centroids.T).numpy()
    names = [bank.label_names[g] if bank.label_names and 0 <= g < len(bank.label_names) else str(g) for g in groups]
    fig = Figure(figsize=(5.5, 4.5), dpi=90)
    ax = fig.subplots()
    im = ax.imshow(sim, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="cosine of group centroids")
    fig.tight_layout()
    return fig
