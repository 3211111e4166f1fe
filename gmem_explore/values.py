"""One test for "a whole number" that every argument check shares: a Python or NumPy integer (or a 0-d integer
tensor or array), not a bool (True is
an int to Python, and 1 image or row 1 is never what it means) and not a float (1.7 cut to 1 would silently use
another row, count or size than the one given)."""
from __future__ import annotations

import operator


def is_whole(x) -> bool:
    return as_whole(x) is not None


def as_whole(x) -> int | None:
    """x as a Python int when it is a whole number in any spelling that means one (Python or NumPy integer, a
    0-d integer tensor or array), else None. operator.index is the test: int() would cut a 0-d float tensor
    (torch.tensor(1.7) -> 1), and a bare hasattr(x, '__index__') lets float tensors through (they have the method
    and raise when it is called). Bools, including bool tensors, are not counts."""
    if isinstance(x, bool) or str(getattr(x, "dtype", "")) in ("bool", "torch.bool") or getattr(x, "ndim", 0) != 0:
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None
