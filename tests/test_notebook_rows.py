"""Rows as pictures in a notebook (notebook/rows.py): pictures kept in the gallery under $GMEM_CACHE, a grid of
them, and a row's picture beside its source image and class."""
from __future__ import annotations

import matplotlib
import pytest
import torch
from PIL import Image

from app_tiny import tiny_pipeline
from gmem_explore.bank.gallery import Gallery
from gmem_explore.notebook import row_pictures, show_rows, show_source


def test_row_pictures_are_kept_for_the_next_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    pipe = tiny_pipeline()
    first = row_pictures(pipe, [3, 4])
    assert torch.equal(first[0], pipe.generate(indices=[3], seeds=[0]).images[0])
    assert len(list((tmp_path / "gallery").rglob("*.png"))) == 2
    fresh = Gallery(tmp_path / "gallery")  # as a restarted kernel's
    again = row_pictures(tiny_pipeline(), [4, 3], fresh)
    assert fresh.generated == 0 and torch.equal(again[1], first[0])
    grid = show_rows(pipe, 3)
    assert isinstance(grid, Image.Image) and grid.width >= 128
    with pytest.raises(ValueError, match=r"a bank row must be a whole number in \[0, 39\]; got 40"):
        row_pictures(pipe, [40])


def test_a_rows_picture_beside_its_source_image_and_class(tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train"
    for i in range(40):
        folder = train / f"n0{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10), (i, 0, 0)).save(folder / f"img_{i:02d}.png")
    (tmp_path / "synset_words.txt").write_text("n00 tench, Tinca tinca\nn01 goldfish\n")
    fig = show_source(tiny_pipeline(), 21, str(train))
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["row 21: generated (seed 0)", "source: goldfish"]
    assert "n01 · goldfish (class 1)" in fig._suptitle.get_text() and "img_03.png" in fig._suptitle.get_text()
    with pytest.warns(UserWarning, match="the bank has 40 rows but .* holds 39 files"):
        (train / "n01" / "img_39.png").unlink()
        with pytest.raises(IndexError, match="row 39 has no source image"):
            show_source(tiny_pipeline(), 39, str(train))
