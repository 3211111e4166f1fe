"""Checks a MemoryBank makes before it acts: snippet rows (shape, dtype, NaN, zero rows), frequencies, labels,
thumbnails, rows that a narrower dtype would spoil, and the messages that say what is wrong and how to fix it.

They are apart from memory.py so that it holds the bank itself (storage, choice, edits, files) and can be read
in one sitting; pipeline.py, search.py and notebook/remix.py use check_snippets on their own inputs too. This
module must not import memory.py (memory.py imports it).
"""
from __future__ import annotations

import torch

CHUNK = 65536  # rows touched at a time, so a memory-mapped 640,000-row bank is never expanded whole


def chunks(n: int, chunk: int = CHUNK):
    """(start, stop) of consecutive row ranges: big banks are read a chunk at a time, never expanded whole."""
    for a in range(0, n, chunk):
        yield a, min(a + chunk, n)


def refuse_meta(x, what: str) -> None:
    """A tensor on the 'meta' device has a shape but no values: every check on its values would fail deep in torch."""
    if isinstance(x, torch.Tensor) and x.is_meta:
        raise ValueError(f"{what}: the tensor is on the 'meta' device (a shape without values); give one with real "
                         f"values (.to('cpu') cannot make them up)")


def directionless(rows: torch.Tensor) -> torch.Tensor:
    """Mask of finite rows that bank.normalize would turn into the zero vector (the unconditional input): all zeros,
    or a float32 length below 1e-12 or beyond float32's range (values near 1e-30 or 1e20)."""
    norm = rows.float().norm(dim=-1)
    return ~torch.isfinite(norm) | (norm <= 1e-12)


def directionless_message(what: str, rows: list[int], fix: str) -> str:
    return (f"{what}: rows {rows[:10]} have no usable direction (all zeros, or a length too small or too large for "
            f"float32 normalisation, beyond 1e-12..1e19); {fix}")


def check_snippets(snippets: torch.Tensor, dim: int, what: str = "snippets") -> torch.Tensor:
    """A (N, dim) finite float tensor, or an error that says what is wrong and how to fix it."""
    refuse_meta(snippets, what)
    snippets = torch.as_tensor(snippets)
    if snippets.ndim == 1:
        snippets = snippets[None]
    if snippets.ndim != 2 or snippets.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}); got {tuple(snippets.shape)}. "
                         f"Use snippets from this bank or from the encoder the model was trained with.")
    if not snippets.is_floating_point():
        raise ValueError(f"{what} must be floating point; got {snippets.dtype}")
    if not torch.isfinite(snippets).all():
        bad = (~torch.isfinite(snippets)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{what}: rows {bad[:10]} hold NaN or infinite values; replace those rows.")
    zero = (snippets == 0).all(dim=1)
    if zero.any():  # a zero vector has no direction: it is the unconditional input, not a snippet
        raise ValueError(f"{what}: rows {zero.nonzero().flatten().tolist()[:10]} are all zeros and have no direction; "
                         f"use a bank row or an encoded image instead.")
    lost = directionless(snippets)  # normalize would make these zeros too: an unconditional image, silently
    if lost.any():
        raise ValueError(directionless_message(what, lost.nonzero().flatten().tolist(), "rescale them first, e.g. "
                                               "x / x.abs().amax(dim=-1, keepdim=True) (only the direction is used)."))
    return snippets


def check_bank_rows(rows: torch.Tensor, idx: torch.Tensor) -> None:
    """Rows read from a bank (float32, numbered idx) that the model can use: finite, with a direction."""
    bad = ~torch.isfinite(rows).all(dim=1)
    if bad.any():
        raise ValueError(f"bank rows {idx[bad].tolist()[:10]} hold NaN or infinite values; replace or remove them "
                         f"(bank.replace / bank.remove) or choose other rows.")
    zero = (rows == 0).all(dim=1)
    if zero.any():
        raise ValueError(f"bank rows {idx[zero].tolist()[:10]} are all zeros (no direction); replace or remove them "
                         f"(bank.replace / bank.remove) or choose other rows.")
    lost = directionless(rows)  # too short or too long for float32: normalize would make them zeros too
    if lost.any():
        raise ValueError(directionless_message("bank", idx[lost].tolist(), "replace or remove them (bank.replace / "
                                               "bank.remove) or choose other rows."))


def row_indices(indices, n: int) -> torch.Tensor:
    """Bank row numbers as a 1-D long tensor, from an int, a list, a NumPy / torch integer array of any shape, or a
    boolean mask with one entry per row (bank.labels == 3). Whole-valued floats (a UI's 5.0) pass; fractions are
    refused, since 1.7 silently cut to row 1 would read, replace or remove another row than the one meant."""
    refuse_meta(indices, "bank row numbers")
    try:
        idx = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"bank rows must be integers (an int, a list of ints or an integer array); got "
                        f"{indices!r:.100}") from None
    if n == 0:
        raise IndexError("the bank is empty: add rows first")
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean mask of bank rows needs one entry per row ({n}); got shape {tuple(idx.shape)}. "
                             f"Give row numbers, or a mask such as bank.labels == 3")
        return idx.nonzero().flatten()
    if idx.is_complex() or (idx.is_floating_point() and not torch.equal(idx, idx.round())):
        raise ValueError(f"bank rows must be whole numbers; got {[round(v, 6) for v in idx.flatten().tolist()[:10]]} (a fraction is not cut "
                         f"to a row: round it yourself if that is what you mean)")
    idx = idx.reshape(-1).long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"row index out of range: the bank has rows 0..{n - 1}; got {idx.tolist()[:10]}")
    return idx


def check_noise(noise) -> torch.Tensor:
    """Initial noise for the released row choice: one sample (C, H, W) or a batch (B, ...), finite."""
    refuse_meta(noise, "noise values")
    noise = torch.as_tensor(noise)
    if noise.ndim == 3:
        noise = noise[None]
    if noise.ndim < 2 or noise.shape[0] == 0 or noise[0].numel() == 0:
        raise ValueError(f"noise must be one sample (C, H, W) or a non-empty batch (B, C, H, W); got shape "
                         f"{tuple(noise.shape)}")
    if noise.is_complex() or not torch.isfinite(noise).all():
        raise ValueError("noise holds NaN, infinite or complex values: the row chosen from it would be meaningless; "
                         "draw it again (torch.randn)")
    return noise


def check_frequencies(freq: torch.Tensor | None, n: int) -> None:
    """freq is None (uniform choice) or n finite non-negative counts of which at least one is positive: a bank
    whose counts all are 0 could never draw a row, and MemoryBank.load refuses its file."""
    if freq is None:
        return
    if freq.shape != (n,):
        raise ValueError(f"freq must have one entry per row ({n}); got shape {tuple(freq.shape)}. "
                         f"Give one count per row, or none for uniform choice.")
    check_counts(freq)
    if n and not freq.sum() > 0:
        raise ValueError("freq sums to zero: no row could ever be drawn; use uniform choice or fix freq")


def check_counts(freq: torch.Tensor) -> None:
    """Each frequency on its own: finite and >= 0 (a few rows may have 0; the bank's sum is checked apart)."""
    if not torch.isfinite(freq).all():
        bad = (~torch.isfinite(freq)).nonzero().flatten().tolist()[:10]
        raise ValueError(f"freq holds NaN or infinite values at rows {bad}; fix freq (counts >= 0) or drop it for uniform choice")
    if (freq < 0).any():
        raise ValueError("freq must be non-negative (it counts how often each row is drawn); "
                         "fix the counts or drop freq for uniform choice")


def rows_spoiled_by_cast(rows: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
    """(rows cast to dtype, indices of rows that were usable before the cast and are not after it). float16 holds
    at most 65504, so a row with larger values turns infinite, and one with all values below 6e-8 turns to zeros
    (no direction); either way it would only fail later, when a model needs it."""
    cast = rows.to(dtype)
    spoiled = []
    for start in range(0, len(rows), CHUNK):
        before, after = rows[start:start + CHUNK].float(), cast[start:start + CHUNK].float()
        usable_before = torch.isfinite(before).all(dim=1) & (before != 0).any(dim=1)
        usable_after = torch.isfinite(after).all(dim=1) & (after != 0).any(dim=1)
        spoiled += ((usable_before & ~usable_after).nonzero().flatten() + start).tolist()
    return cast, spoiled


def spoiled_rows_message(what: str, rows: list[int], dtype: torch.dtype, fix: str) -> str:
    return (f"{what}: rows {rows[:10]} do not fit in {dtype} (largest magnitude {torch.finfo(dtype).max:g}; values "
            f"below {torch.finfo(dtype).tiny:g} become 0): they would turn infinite or all zeros. {fix}")


def as_labels(labels, n: int) -> torch.Tensor:
    """n integer labels (-1: no group); fractional values are refused instead of being cut to an integer."""
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"labels must be group numbers (indices into bank.label_names, -1 for none); got "
                         f"{labels!r:.100}. For a name: bank.label_names.index(name)") from None
    if labels.numel() != n:
        raise ValueError(f"give one label per new row ({n}); got {labels.numel()} (-1 means no group)")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"labels must be whole numbers (group indices, -1 for none); got {labels.flatten().tolist()[:10]}")
    return labels.reshape(n).long()


def as_thumbnails(thumbnails, n: int, size: tuple[int, ...]) -> torch.Tensor:
    """n uint8 thumbnails of the bank's size (H, W, 3); one thumbnail may come without its batch dimension."""
    thumbnails = torch.as_tensor(thumbnails)
    if thumbnails.ndim == len(size):
        thumbnails = thumbnails[None]
    if tuple(thumbnails.shape) != (n, *size):
        raise ValueError(f"thumbnails must have shape ({n}, {', '.join(map(str, size))}) (RGB, like the bank's); got "
                         f"{tuple(thumbnails.shape)}. Resize them, e.g. gmem_explore.images.load_rgb(image, {size[0]}).")
    if thumbnails.dtype == torch.uint8:
        return thumbnails
    if thumbnails.is_floating_point() or thumbnails.dtype == torch.bool:
        raise ValueError(f"thumbnails must hold uint8 RGB values 0..255; got {thumbnails.dtype} (for images in [0, 1]: "
                         f"(x * 255).round().to(torch.uint8))")
    if thumbnails.numel() and (thumbnails.min() < 0 or thumbnails.max() > 255):  # .to(uint8) would wrap them
        raise ValueError(f"thumbnails must hold RGB values 0..255; got values from {int(thumbnails.min())} to "
                         f"{int(thumbnails.max())}")
    return thumbnails.to(torch.uint8)


def missing_extra_message(name: str, argument: str) -> str:
    """Why an extra (freq, labels, thumbnails) given to a bank that has none is refused, and how to start one."""
    return (f"this bank has no {name}, so the {argument}= given would be lost: leave {argument} out, or first make "
            f"a bank with {name} for every row: MemoryBank(bank.rows, freq=bank.freq, labels=bank.labels, "
            f"label_names=bank.label_names, thumbnails=bank.thumbnails, meta=bank.meta) with {argument}= given "
            f"for all rows")


def check_metadata(meta: dict) -> None:
    """Every bank.meta value must be JSON (the file stores it as text): say which key is not, before writing."""
    import json

    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cannot save this bank: meta[{key!r}] is not JSON-serialisable ({e}); store plain "
                             f"numbers, strings, lists or dicts (e.g. tensor.tolist())") from None


LOW_RANK_FORMAT = "gmem-explore-lowrank-bank-1"  # MemoryBank.load recognises a compressed file by it


def check_low_rank(tensors: dict, meta: dict, path) -> tuple:
    """(coeffs, basis, mean) of a compressed bank file (LowRankBank.save), or a ValueError naming what is wrong."""
    if meta.get("format") != LOW_RANK_FORMAT:
        raise ValueError(f"{path} is not a low-rank bank file (format {meta.get('format')!r}); a full bank file "
                         f"opens with MemoryBank.load")
    missing = [k for k in ("coeffs", "basis", "mean") if k not in tensors]
    if missing:
        raise ValueError(f"{path} is a damaged low-rank bank file: it has no {missing} tensor(s); compress the "
                         f"full bank again (gmem bank compress)")
    coeffs, basis, mean = tensors["coeffs"], tensors["basis"], tensors["mean"]
    if not (coeffs.ndim == 2 and basis.ndim == 2 and mean.ndim == 1 and coeffs.shape[1] == basis.shape[0]
            and basis.shape[1] == mean.shape[0] and all(t.is_floating_point() for t in (coeffs, basis, mean))):
        raise ValueError(f"{path} is a damaged low-rank bank file: coeffs {tuple(coeffs.shape)} {coeffs.dtype}, "
                         f"basis {tuple(basis.shape)} {basis.dtype} and mean {tuple(mean.shape)} {mean.dtype} do "
                         f"not fit together (float (N, r), (r, D), (D,)); compress the full bank again "
                         f"(gmem bank compress)")
    return coeffs, basis, mean
