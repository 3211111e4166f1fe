"""Bank maps: shapes, the on-disk cache keyed by content, subsampling, figures."""
from __future__ import annotations

import pytest
import torch

from gmem_explore import MemoryBank
from gmem_explore.bank.map2d import cache_key, embed_2d, scatter_figure, subsample_indices


def make_bank(n=40, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MemoryBank(torch.randn(n, dim, generator=g), torch.arange(1, n + 1).double(), torch.arange(n) % 3,
                      ["a", "b", "c"])


def test_pca_map_is_cached_and_keyed_by_content(tmp_path):
    bank = make_bank()
    coords = embed_2d(bank, "pca", cache_dir=tmp_path)
    assert coords.shape == (40, 2) and coords.dtype == torch.float32
    files = list(tmp_path.glob("pca-*.safetensors"))
    assert len(files) == 1
    assert torch.equal(embed_2d(bank, "pca", cache_dir=tmp_path), coords)
    edited = bank.copy()
    edited.replace(0, torch.ones(16))
    moved = embed_2d(edited, "pca", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("pca-*.safetensors"))) == 2  # a new key for new content
    assert not torch.allclose(moved, coords)


def test_cache_hit_does_not_refit(tmp_path, monkeypatch):
    bank = make_bank()
    embed_2d(bank, "pca", cache_dir=tmp_path)
    import gmem_explore.bank.map2d as bm

    monkeypatch.setattr(bm, "pca_2d", lambda x: (_ for _ in ()).throw(AssertionError("refitted")))
    assert embed_2d(bank, "pca", cache_dir=tmp_path).shape == (40, 2)


def test_damaged_cache_file_is_refitted(tmp_path):
    bank = make_bank()
    coords = embed_2d(bank, "pca", cache_dir=tmp_path)
    (path,) = tmp_path.glob("pca-*.safetensors")
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert torch.allclose(embed_2d(bank, "pca", cache_dir=tmp_path), coords)


def test_pca_separates_scaled_clusters():
    rows = torch.cat([torch.tensor([[1.0, 0, 0, 0]]).repeat(10, 1), torch.tensor([[0, 1.0, 0, 0]]).repeat(10, 1)])
    coords = embed_2d(rows + 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), "pca", cache_dir=False)
    gap = (coords[:10, 0].mean() - coords[10:, 0].mean()).abs()
    assert gap > 1.0  # the two directions land at opposite ends of the first component


def test_large_bank_is_subsampled_with_indices():
    bank = make_bank(n=100)
    coords, idx = embed_2d(bank, "pca", cache_dir=False, max_rows=30, return_indices=True)
    assert coords.shape == (30, 2) and idx.shape == (30,)
    assert torch.equal(idx, subsample_indices(100, 30, 0)) and torch.all(idx[1:] > idx[:-1])
    assert torch.equal(subsample_indices(10, 30), torch.arange(10))


@pytest.mark.slow  # numba compiles UMAP on first use: 10-50 s on 2 busy cores
def test_umap_map_small_bank(tmp_path):
    coords = embed_2d(make_bank(n=40), "umap", cache_dir=tmp_path)
    assert coords.shape == (40, 2) and torch.isfinite(coords).all()
    assert list(tmp_path.glob("umap-*.safetensors"))


def test_bad_input_messages():
    with pytest.raises(ValueError, match="Unknown map method"):
        embed_2d(make_bank(), "tsne", cache_dir=False)
    bad = torch.randn(40, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        embed_2d(bad, "pca", cache_dir=False)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        scatter_figure(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="one value per point"):
        scatter_figure(torch.zeros(5, 2), color_by=torch.zeros(4))


def test_cache_key_depends_on_rows_and_params():
    rows = torch.randn(8, 4)
    assert cache_key(rows, "pca", {}) == cache_key(rows.clone(), "pca", {})
    assert cache_key(rows, "pca", {}) != cache_key(rows, "pca", {"seed": 1})
    assert cache_key(rows, "pca", {}) != cache_key(rows.half(), "pca", {})


def test_scatter_figure_groups_and_frequency():
    coords = torch.randn(30, 2)
    fig = scatter_figure(coords, color_by=torch.arange(30) % 3 - 1, label_names=["x", "y"], highlight=[0, 5, 99])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["added", "x", "y"]
    fig = scatter_figure(coords, color_by=torch.logspace(0, 4, 30).double())
    assert len(fig.axes) == 2  # the map and its colour bar


def test_is_cached(tmp_path):
    from gmem_explore.bank.map2d import is_cached

    bank = make_bank()
    assert not is_cached(bank, "pca", cache_dir=tmp_path)
    embed_2d(bank, "pca", cache_dir=tmp_path)
    assert is_cached(bank, "pca", cache_dir=tmp_path)
    assert not is_cached(bank, "pca", cache_dir=False)
