"""Checks a MemoryBank makes before it acts: snippet rows (shape, dtype, NaN, zero rows), frequencies, labels,
thumbnails, rows that a narrower dtype would spoil, and the messages that say what is wrong and how to fix it.

They are apart from bank.py so that it holds the bank itself (storage, choice, search, edits, files) and can be read
in one sitting; pipeline.py, bank_tools.py and notebook_remix.py use check_snippets on their own inputs too. This
module must not import bank.py (bank.py imports it).
"""
from __future__ import annotations

import torch

CHUNK = 65536  # rows touched at a time, so a memory-mapped 640,000-row bank is never expanded whole


def check_snippets(snippets: torch.Tensor, dim: int, what: str = "snippets") -> torch.Tensor:
    """A (N, dim) finite float tensor, or an error that says what is wrong and how to fix it."""
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
    return snippets


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
    labels = torch.as_tensor(labels)
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
