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


def test_the_embedded_bank_ships_its_umap_map(tmp_path, monkeypatch):
    """The Bank tab opens on UMAP for emoji-32 on a fresh install: its map is read from the package (no fit, no
    umap import: a minute and numba's compilation on 2 cores), from gmem_explore/weights/emoji-32."""
    import gmem_explore.bank.map2d as map2d
    from gmem_explore.checkpoints.hub import EMBEDDED

    bank = MemoryBank.load(EMBEDDED["emoji-32"] / "bank.safetensors")
    empty = tmp_path / "cache"
    assert is_cached(bank, "umap", cache_dir=empty)
    monkeypatch.setattr(map2d, "umap_2d", lambda x, seed: pytest.fail("UMAP was fitted"))
    coords = embed_2d(bank, "umap", cache_dir=empty)
    assert coords.shape == (len(bank), 2) and coords.dtype == torch.float32 and torch.isfinite(coords).all()
    assert not empty.exists()  # read from the package, nothing written
    (shipped,) = (EMBEDDED["emoji-32"]).glob("umap-*.safetensors")
    assert shipped.stat().st_size < 64_000
    import tomllib

    pyproject = tomllib.loads((map2d.SHIPPED.parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["gmem_explore"]
    assert any(shipped.relative_to(map2d.SHIPPED.parent).match(pattern) for pattern in data)  # in the wheel


def test_ship_map_writes_a_map_embed_2d_reads_without_fitting(tmp_path, monkeypatch):
    import gmem_explore.bank.map2d as map2d

    bank = make_bank()
    monkeypatch.setattr(map2d, "SHIPPED", tmp_path / "weights")
    path = map2d.ship_map(bank, tmp_path / "weights" / "mine", "pca")
    assert path.parent == tmp_path / "weights" / "mine" and path.name.startswith("pca-")
    monkeypatch.setattr(map2d, "pca_2d", lambda x: pytest.fail("PCA was fitted"))
    assert is_cached(bank, "pca", cache_dir=tmp_path / "cache")
    assert embed_2d(bank, "pca", cache_dir=tmp_path / "cache").shape == (len(bank), 2)
    assert not is_cached(make_bank(seed=1), "pca", cache_dir=tmp_path / "cache")  # another bank: not its map
    assert not is_cached(bank, "pca", cache_dir=False)  # no cache at all: nothing read
