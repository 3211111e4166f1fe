"""The memory bank: N snippets of dimension D (+ frequencies, labels, thumbnails) and what is done with them.

- memory.py     MemoryBank: rows, choosing rows (by frequency, from noise), edits, saving and loading
- checks.py     what a bank refuses (shapes, NaN, dtypes that would spoil rows) and the messages
- snippets.py   normalize and mix (lerp, slerp, concat, mask): snippets as the model sees them
- tools.py      statistics, nearest-row search, low-rank (SVD) compression
- map2d.py      the 2-D map (UMAP / PCA), cached on disk
A search index or an edit overlay goes here too.
"""
from .memory import CHOOSE_STRATEGIES, MemoryBank, index_from_noise, load_bank
from .snippets import MIX_METHODS, mix, normalize

__all__ = ["CHOOSE_STRATEGIES", "MIX_METHODS", "MemoryBank", "index_from_noise", "load_bank", "mix", "normalize"]
