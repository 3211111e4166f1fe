"""The memory bank: N snippets of dimension D (+ frequencies, labels, thumbnails) and what is done with them.

- memory.py     MemoryBank: rows, choosing rows (by frequency, from noise), edits, saving and loading
- overlay.py    Column: a part of a bank shared with its copies plus its own edits (copies cost O(edits))
- checks.py     what a bank refuses (shapes, NaN, dtypes that would spoil rows) and the messages
- snippets.py   normalize and mix (lerp, slerp, concat, mask): snippets as the model sees them
- build.py      images -> a bank (bank_from_images): one row per image through a snippet encoder
- search.py     nearest rows by cosine (nearest, behind MemoryBank.nearest) and a partner row to mix with
- index.py      the approximate index behind search.py (faiss IVF-PQ, cached on disk)
- stats.py      statistics (behind MemoryBank.stats): norms, broken rows, frequencies, groups, similarity
- lowrank.py    low-rank (SVD) compression and its error
- map2d.py      the 2-D map (UMAP / PCA) of a bank or its subsample, cached on disk
- whole_map.py  every row on that map (the rest placed from the fit) with k-means clusters, cached on disk
                (import it from the module: re-exporting the function here would hide the module of its name)
- gallery.py    a kept gallery of generated row pictures (one per row and model, on disk), for banks without images
- sources.py    the image folder a bank was built from (ImageNet's train folder for v2's full bank), row by row
"""
from .memory import CHOOSE_STRATEGIES, MemoryBank, index_from_noise, load_bank
from .snippets import MIX_METHODS, mix, normalize

__all__ = ["CHOOSE_STRATEGIES", "MIX_METHODS", "MemoryBank", "index_from_noise", "load_bank", "mix", "normalize"]
