"""One test for "a whole number" that every argument check shares: a Python or NumPy integer (or a 0-d integer
tensor or array), not a bool (True is an int to Python, and 1 image or row 1 is never what it means) and not a
float (1.7 cut to 1 would silently use another row, count or size than the one given).

    as_whole(x, low, high)      -> the int, or None when x is not a whole number in [low, high]
    is_whole(x, low, high)      -> bool
    whole(x, what, low, high)   -> the int, or a ValueError naming `what` and the range
    as_integer(x, what)         -> the int, or "seeds must be integers; got ..." (items of a list)

No torch here: gmem_explore.cli imports the package's checks without waiting for torch, and the tests below read
a tensor's dtype by name.
"""
from __future__ import annotations

import operator


def as_whole(x, low: int | None = None, high: int | None = None) -> int | None:
    """x as a Python int when it is a whole number in any spelling that means one (Python or NumPy integer, a
    0-d integer tensor or array) and lies in [low, high] (either bound None: open), else None.

    operator.index is the test: int() would cut a 0-d float tensor (torch.tensor(1.7) -> 1), and a bare
    hasattr(x, '__index__') lets float tensors through (they have the method and raise when it is called). Bools,
    including bool tensors, are not counts."""
    if isinstance(x, bool) or str(getattr(x, "dtype", "")) in ("bool", "torch.bool") or getattr(x, "ndim", 0) != 0:
        return None
    try:
        value = operator.index(x)
    except TypeError:
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        return None
    return value


def is_whole(x, low: int | None = None, high: int | None = None) -> bool:
    return as_whole(x, low, high) is not None


def bounds(low: int | None, high: int | None) -> str:
    """' >= 1', ' in [2, 256]', ' <= 9' or '' for the messages."""
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    return f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""


def whole(x, what: str, low: int | None = None, high: int | None = None) -> int:
    """x as an int, or a ValueError such as "k must be a whole number >= 1; got 2.5"."""
    value = as_whole(x, low, high)
    if value is None:
        raise ValueError(f"{what} must be a whole number{bounds(low, high)}; got {x!r}")
    return value


def as_integer(x, what: str) -> int:
    """One item of a list of integers (seeds, bank rows) as an int, or "{what} must be integers; got x": the
    plural names the list the item came from."""
    value = as_whole(x)
    if value is None:
        raise ValueError(f"{what} must be integers; got {x!r}")
    return value
