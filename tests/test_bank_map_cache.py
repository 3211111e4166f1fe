"""The bank-map cache is honest: is_cached says True only for a file embed_2d would read (item: a damaged or
foreign cache file made is_cached True, so the app took the 'cached' path and then refitted UMAP for a minute)."""
from __future__ import annotations

import warnings

import pytest
import torch

from gmem_explore import MemoryBank
from gmem_explore.bank.map2d import embed_2d, is_cached
from gmem_explore.safefiles import save_tensors


def make_bank(n=40, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MemoryBank(torch.randn(n, dim, generator=g))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shape", "nan", "float64", "no key"])
def test_a_cache_file_embed_2d_would_not_trust_is_not_cached_and_is_refitted_with_a_warning(tmp_path, damage):
    bank = make_bank()
    coords = embed_2d(bank, "pca", cache_dir=tmp_path)
    (path,) = tmp_path.glob("pca-*.safetensors")
    key = path.stem.split("-", 1)[1]
    assert is_cached(bank, "pca", cache_dir=tmp_path)
    if damage == "garbage":
        path.write_bytes(b"garbage")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    else:
        bad = {"wrong shape": coords[:-1], "nan": torch.full_like(coords, float("nan")),
               "float64": coords.double(), "no key": coords}[damage]
        save_tensors(path, {"coords": bad}, {} if damage == "no key" else {"key": key})
    assert not is_cached(bank, "pca", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="ignoring the bank-map cache file .*fitted again"):
        again = embed_2d(bank, "pca", cache_dir=tmp_path)
    assert torch.allclose(again, coords)
    assert is_cached(bank, "pca", cache_dir=tmp_path)  # rewritten: the next call reads it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good cache file is read without a word
        assert torch.equal(embed_2d(bank, "pca", cache_dir=tmp_path), again)


def test_is_cached_refuses_what_embed_2d_refuses():
    bank = make_bank()
    with pytest.raises(ValueError, match="Unknown map method"):
        is_cached(bank, "tsne", cache_dir=False)
    with pytest.raises(ValueError, match="max_rows"):
        is_cached(bank, "pca", cache_dir=False, max_rows=1)
    with pytest.raises(ValueError, match="seed"):
        is_cached(bank, "pca", cache_dir=False, seed=0.5)
