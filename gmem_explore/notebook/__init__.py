"""Helpers behind notebooks/*.ipynb, so the notebooks stay short and their logic is tested:

- helpers.py       the fast-mode switch, progress, the bank explorer widget
- figures.py       captioned image grids and figures at a size a rendered notebook shows readably
- remix.py         notebook 02: swap a row for a new image, interpolate, compare mixes
- finetune.py      notebook 03: images to a folder, a live view of training, many GPUs (the bank: bank/build.py)
- bank_figures.py  notebook 01's figures of a bank as a whole
- bank_map.py      notebook 01's interactive map of the whole bank (jupyter-scatter), its selection synced to Python
- rows.py          rows as pictures: generated ones kept on disk (bank/gallery.py), a row's source image and class
"""
from .helpers import BankExplorer, fast_mode, figure_png, labelled_grid, short_label, show, with_bank
from .rows import row_pictures, show_rows, show_source

__all__ = ["BankExplorer", "fast_mode", "figure_png", "labelled_grid", "row_pictures", "short_label", "show",
           "show_rows", "show_source", "with_bank"]
