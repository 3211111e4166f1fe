"""The kept gallery of generated row pictures (bank/gallery.py): one picture per (model, row content) on disk, read
back by a second gallery without generating, made again for an edited row, a changed model or a damaged file, and
kept in memory where the folder cannot be written."""
from __future__ import annotations

import warnings

import pytest
import torch

from conftest import TINY, randomize
from gmem_explore import GMemPipeline, MemoryBank, build_model
from gmem_explore.autoencoders import PixelSpace
from gmem_explore.bank.gallery import Gallery, GalleryOptions, read_picture, shrink


def tiny(seed: int = 0, rows: torch.Tensor | None = None) -> GMemPipeline:
    """A fresh tiny pipeline: the same weights for the same seed, built anew each time (another Python object)."""
    torch.manual_seed(0)
    model = randomize(build_model(**TINY), seed=seed).eval()
    rows = torch.randn(12, 16, generator=torch.Generator().manual_seed(1)) if rows is None else rows
    return GMemPipeline(model, MemoryBank(rows), PixelSpace(8), sampler={"method": "euler", "steps": 3})


class Counting:
    """A pipeline that counts its generate() calls and the images they make."""

    def __init__(self, pipe):
        self.pipe, self.calls, self.images = pipe, 0, 0
        self.model, self.autoencoder, self.sampler, self.bank = pipe.model, pipe.autoencoder, pipe.sampler, pipe.bank

    def generate(self, **kwargs):
        self.calls += 1
        self.images += len(kwargs["indices"])
        return self.pipe.generate(**kwargs)


def files(folder) -> list:
    return sorted(folder.rglob("*.png"))


def test_pictures_persist_and_a_second_gallery_reads_them_without_generating(tmp_path):
    first = Counting(tiny())
    pictures = Gallery(tmp_path).pictures(first, [3, 5, 3])
    assert first.calls == 1 and first.images == 2  # the missing rows in one batch, a repeated row once
    assert torch.equal(pictures[0], pictures[2]) and not torch.equal(pictures[0], pictures[1])
    # a row's picture is its generation from seed 0 with the pipeline's own sampler
    assert torch.equal(pictures[1], tiny().generate(indices=[5], seeds=[0]).images[0])
    stored = files(tmp_path)
    assert len(stored) == 2 and all(p.parent.name == p.stem[:2] for p in stored)  # hashed subfolders
    # another gallery (a restarted app, a notebook) on another load of the same model: read, not generated
    second = Counting(tiny())
    gallery = Gallery(tmp_path)
    again = gallery.pictures(second, [5, 3])
    assert second.calls == 0 and gallery.generated == 0
    assert torch.equal(again[0], pictures[1]) and torch.equal(again[1], pictures[0])


def test_an_edited_row_or_another_model_gets_a_new_picture(tmp_path):
    pipe = tiny()
    gallery = Gallery(tmp_path)
    before = gallery.pictures(pipe, [1, 2])
    pipe.bank.replace(1, -pipe.bank.column("rows")[1][None])
    counting = Counting(pipe)
    after = gallery.pictures(counting, [1, 2])
    assert counting.images == 1 and not torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert len(files(tmp_path)) == 3
    # other weights draw anew (their own folder); so does the same model once trained in place
    other = Counting(tiny(seed=1))
    gallery.pictures(other, [2])
    assert other.images == 1
    with torch.no_grad():
        next(pipe.model.parameters()).add_(0.1)
    trained = Counting(pipe)
    gallery.pictures(trained, [2])
    assert trained.images == 1
    assert len({p.parent.parent.name for p in files(tmp_path)}) == 3


def test_a_damaged_picture_is_generated_again_with_a_warning(tmp_path):
    pipe = tiny()
    original = Gallery(tmp_path).pictures(pipe, [4])[0]
    (path,) = files(tmp_path)
    path.write_bytes(path.read_bytes()[:30])  # truncated, as by a full disk
    counting = Counting(pipe)
    with pytest.warns(UserWarning, match="cannot be used") as caught:
        again = Gallery(tmp_path).pictures(counting, [4])[0]
    assert str(path) in str(caught[0].message)
    assert counting.images == 1 and torch.equal(again, original)
    assert torch.equal(read_picture(path, 64), original)  # rewritten whole
    path.write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="cannot be used"):
        assert torch.equal(Gallery(tmp_path).pictures(pipe, [4])[0], original)


def test_an_unwritable_folder_keeps_pictures_in_memory_with_one_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made inside a file, whoever runs the test (root too)
    gallery = Gallery(blocker / "gallery")
    counting = Counting(tiny())
    with pytest.warns(UserWarning, match="memory only") as caught:
        first = gallery.pictures(counting, [1, 2])
    assert len([w for w in caught if "memory only" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: no warning per picture
        again = gallery.pictures(counting, [2, 1, 6])
    assert counting.images == 3 and torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])


def test_memory_only_gallery_and_its_bound(tmp_path):
    gallery = Gallery(False, GalleryOptions(memory_rows=2))
    counting = Counting(tiny())
    gallery.pictures(counting, [0, 1, 2])
    gallery.pictures(counting, [2, 1])  # the two most recent rows are kept
    assert counting.images == 3
    gallery.pictures(counting, [0])
    assert counting.images == 4 and not files(tmp_path)


def test_large_pictures_are_shrunk_and_small_ones_kept():
    big = torch.randint(0, 256, (256, 256, 3), dtype=torch.uint8)
    assert shrink(big, 64).shape == (64, 64, 3)
    assert shrink(big[:32, :32], 64).shape == (32, 32, 3)
    flat = torch.full((256, 256, 3), 77, dtype=torch.uint8)
    assert shrink(flat, 64).unique().tolist() == [77]
    picture = Gallery(False, GalleryOptions(size=4)).pictures(tiny(), [0])[0]
    assert picture.shape == (4, 4, 3)


def test_unusable_rows_bad_rows_and_bad_options():
    rows = torch.randn(12, 16, generator=torch.Generator().manual_seed(1))
    rows[3] = 0  # all zeros: the bank refuses to hand it out
    gallery = Gallery(False)
    zero, fine = gallery.pictures(tiny(rows=rows), [3, 4])
    assert zero is None and fine.float().std() > 0
    with pytest.raises(IndexError, match="rows 0 to 11"):
        gallery.pictures(tiny(), [12])
    for bad in ({"size": 0}, {"seed": -1}, {"batch_size": 1.5}, {"memory_rows": True}):
        with pytest.raises(ValueError, match=f"GalleryOptions.{next(iter(bad))}"):
            GalleryOptions(**bad)


def test_the_seed_is_part_of_the_key(tmp_path):
    pipe = tiny()
    seed0 = Gallery(tmp_path).pictures(pipe, [2])[0]
    counting = Counting(pipe)
    seed1 = Gallery(tmp_path, GalleryOptions(seed=1)).pictures(counting, [2])[0]
    assert counting.images == 1 and torch.equal(seed1, pipe.generate(indices=[2], seeds=[1]).images[0])
    assert not torch.equal(seed0, seed1)
