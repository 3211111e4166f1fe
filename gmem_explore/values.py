"""One test for "a whole number" that every argument check shares: a Python or NumPy integer, not a bool (True is
an int to Python, and 1 image or row 1 is never what it means) and not a float (1.7 cut to 1 would silently use
another row, count or size than the one given)."""
from __future__ import annotations

import numbers


def is_whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)
