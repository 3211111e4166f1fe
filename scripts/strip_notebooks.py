"""Strip outputs, execution counts and run metadata from notebooks, in place (git keeps them clean).

    python scripts/strip_notebooks.py                # every notebooks/*.ipynb
    python scripts/strip_notebooks.py path.ipynb ... # only these
Exit status 1 with --check when a notebook holds outputs (tests/test_notebooks.py asserts the same).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
KEEP_CELL_METADATA = ("tags",)  # papermill's "parameters" tag stays; timings and collapse state go


def strip(book) -> bool:
    """Remove outputs in place; True when anything changed."""
    changed = False
    for cell in book.cells:
        meta = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if meta != cell.metadata:
            cell.metadata, changed = meta, True
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    for key in list(book.metadata):
        if key == "widgets":  # saved widget state is output too
            del book.metadata[key]
            changed = True
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="report dirty notebooks without changing them")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        book = nbformat.read(path, as_version=4)
        if strip(book):
            dirty.append(path)
            if not args.check:
                nbformat.write(book, path)
    for path in dirty:
        print(f"{'has outputs' if args.check else 'stripped'}: {path}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
