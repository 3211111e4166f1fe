"""A bank row's source image (bank/sources.py): rows follow upstream's bank builder, which sorts the full paths of
every entry of every class folder (LINs-lab/GMem datasets/construct_memory_bank.py); class indices follow the sorted
folder names; a count that differs from the bank's rows is warned about with both numbers."""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from PIL import Image

from gmem_explore.bank.sources import ImageFolderSource
from gmem_explore.images import ImageError

# "a-b" sorts before "a/" ('-' < '/') but after "a" by name: the row order and the class numbers differ here;
# "x_10" sorts before "x_9" as text, and extensions are mixed, as upstream reads any file
CLASSES = {"n02": ["n02_2.JPEG", "n02_1.png"], "a": ["x_9.jpg", "x_10.JPEG", "x_1.png"], "a-b": ["y.png"],
           "n01": ["n01_5.JPEG", "n01_12.JPEG"]}


def upstream_order(root) -> list[str]:
    """The builder's own walk, as upstream writes it."""
    paths = []
    for sub in os.listdir(root):
        subdir = os.path.join(root, sub)
        if os.path.isdir(subdir):
            for name in os.listdir(subdir):
                paths.append(os.path.join(subdir, name))
    return sorted(paths)


@pytest.fixture
def train(tmp_path):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "train"
    for i, (cls, names) in enumerate(CLASSES.items()):
        (root / cls).mkdir(parents=True)
        for j, name in enumerate(names):
            fmt = "PNG" if name.endswith(".png") else "JPEG"
            Image.new("RGB", (12 + j, 10), (20 * i, 40 * j, 90)).save(root / cls / name, format=fmt)
    (root / "README.txt").write_text("a file beside the class folders is not a class")
    # the Kaggle download keeps its synset list 4 folders above the train folder
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\na\tapple pie\n")
    return root


def test_rows_follow_upstreams_sorted_paths_and_classes_the_sorted_folders(train, tmp_path):
    source = ImageFolderSource(train, cache_dir=tmp_path / "cache")
    expected = upstream_order(train)
    assert len(source) == len(expected) == 8
    assert [str(source.row(r).path) for r in range(len(source))] == [os.path.realpath(p) for p in expected]
    assert [source.row(r).path.parent.name for r in range(3)] == ["a-b", "a", "a"]  # not per class by name
    assert source.row(1).path.name == "x_1.png" and source.row(2).path.name == "x_10.JPEG"
    assert source.classes == ["a", "a-b", "n01", "n02"]  # torchvision's ImageFolder numbering
    first = source.row(0)
    assert (first.synset, first.class_index, first.name) == ("a-b", 1, None)
    tench = source.row(4)
    assert (tench.synset, tench.class_index, tench.name) == ("n01", 2, "tench, Tinca tinca")
    assert tench.caption() == "n01 · tench, Tinca tinca (class 2)"
    assert source.row(1).name == "apple pie"  # a tab after the synset, as in words.txt
    image = source.image(7)  # n02/n02_2.JPEG, the first of its folder as written: 12 x 10
    assert image.shape == (10, 12, 3) and image.dtype == torch.uint8
    assert source.image(7, max_side=6).shape == (5, 6, 3)


def test_a_count_that_differs_from_the_banks_rows_is_warned_with_both_numbers(train, tmp_path):
    source = ImageFolderSource(train, cache_dir=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert source.check_rows(8) is None
    with pytest.warns(UserWarning, match="the bank has 10 rows but .* holds 8 files: rows may not line up") as caught:
        text = source.check_rows(10)
    assert text == str(caught[0].message) and "rows from 8 on have no file here" in text
    with pytest.warns(UserWarning, match="1,281,167"):  # says what the full bank should have
        source.check_rows(5)
    with pytest.raises(IndexError, match="row 8 has no source image: .* holds 8 files"):
        source.row(8)
    with pytest.raises(ValueError, match="whole number"):
        source.row(-1)


def test_a_file_that_is_not_an_image_is_named(train, tmp_path):
    (train / "n02" / ".DS_Store").write_bytes(b"\x00\x01 not an image")  # upstream reads every entry: a row too
    source = ImageFolderSource(train, cache_dir=False)
    assert len(source) == 9
    row = [str(p) for p in upstream_order(train)].index(os.path.join(train, "n02", ".DS_Store"))
    with pytest.raises(ImageError, match=r"\.DS_Store"):
        source.image(row)


def test_counts_are_kept_and_a_changed_class_folder_is_counted_again(train, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    for folder in train.iterdir():  # changed long ago, as a real train folder: counts that are kept are trusted
        os.utime(folder, ns=(10**18, 10**18))
    assert len(ImageFolderSource(train, cache_dir=cache)) == 8
    (kept,) = cache.glob("*.json")
    assert kept.stat().st_size < 1000
    calls = []
    real = os.scandir

    def counting(path="."):
        if str(path).startswith(str(train)):
            calls.append(os.path.basename(str(path)))
        return real(path)

    Image.new("RGB", (8, 8)).save(train / "n01" / "n01_7.JPEG")
    os.utime(train / "n01", ns=(15 * 10**17, 15 * 10**17))  # its time changed (set: a coarse clock may not move)
    monkeypatch.setattr(os, "scandir", counting)
    again = ImageFolderSource(train, cache_dir=cache)
    assert len(again) == 9
    monkeypatch.undo()
    assert sorted(calls) == ["n01", "train"]  # the root's classes, then only the changed class counted
    # a folder changed just before it was counted is counted again next time: its clock may not have moved yet
    (train / "a" / "x_1.png").unlink()
    calls.clear()
    monkeypatch.setattr(os, "scandir", counting)
    assert len(ImageFolderSource(train, cache_dir=cache)) == 8 and "a" in calls
    calls.clear()
    assert len(ImageFolderSource(train, cache_dir=cache)) == 8 and "a" in calls
    monkeypatch.undo()
    assert [again.row(r).path.name for r in range(4, 7)] == ["n01_12.JPEG", "n01_5.JPEG", "n01_7.JPEG"]


def test_a_file_added_after_counting_is_noticed_when_its_class_is_listed(train):
    source = ImageFolderSource(train, cache_dir=False)
    assert len(source) == 8
    Image.new("RGB", (8, 8)).save(train / "a" / "x_0.png")
    assert source.row(1).path.name == "x_0.png" and len(source) == 9


def test_bad_folders_are_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not there: give ImageNet's training folder"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "one.png").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no class folders"):
        ImageFolderSource(tmp_path / "flat")
    (tmp_path / "flat" / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="no synset list"):
        ImageFolderSource(tmp_path / "flat", names_file=tmp_path / "nope.txt")
