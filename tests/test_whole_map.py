"""whole_map: every row of a bank on the map, clustered, cached by the bank's content.

UMAP itself is not the point here (its numba compilation alone takes a minute): where the placement of rows outside
the fit is, the fit is PCA standing in for UMAP, so placed rows have a known right answer (their exact projection).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import gmem_explore.bank.map2d as map2d
import gmem_explore.bank.whole_map as wm
from gmem_explore.bank import MemoryBank
from gmem_explore.bank.whole_map import WholeMap, whole_map
from gmem_explore.bank import index as bank_index
from gmem_explore.bank import search

N, DIM, GROUPS, FIT = 6000, 64, 8, 800


def clustered(n=N, seed=0):
    """Rows around GROUPS centres on a circle of a plane in DIM dims (so a 2-D layout can separate them), fp16."""
    g = torch.Generator().manual_seed(seed)
    plane = torch.linalg.qr(torch.randn(DIM, 2, generator=g)).Q.T  # (2, DIM) orthonormal
    angles = torch.arange(GROUPS) * (2 * torch.pi / GROUPS)
    centres = 3 * torch.stack([angles.cos(), angles.sin()], 1) @ plane
    labels = torch.randint(0, GROUPS, (n,), generator=g)
    return (centres[labels] + 0.15 * torch.randn(n, DIM, generator=g)).half(), labels


@pytest.fixture
def bank():
    rows, labels = clustered()
    b = MemoryBank(rows)
    b.true_labels = labels
    return b


@pytest.fixture
def fake_umap(monkeypatch):
    """UMAP replaced by PCA (no numba): the placement path runs as for UMAP, against an answer we know."""
    calls = []

    def fit(x, seed):
        calls.append(len(x))
        return map2d.pca_2d(x)
    monkeypatch.setattr(map2d, "umap_2d", fit)
    return calls


def exact_projection(bank, fitted):
    x = map2d.normalize(bank.column("rows")[:].float())
    mean, comps = wm.pca_basis(x[fitted], 2)
    return (x - mean) @ comps.T


@pytest.mark.parametrize("fit_rows", [FIT, 4000])  # nearest fitted rows searched exactly; through 40 IVF lists
def test_every_row_is_placed_near_its_projection_and_the_fit_keeps_its_coords(bank, fake_umap, tmp_path, fit_rows):
    m = whole_map(bank, "umap", fit_rows=fit_rows, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    assert isinstance(m, WholeMap) and m.method == "umap" and fake_umap == [fit_rows]
    assert m.coords.shape == (N, 2) and m.coords.dtype == torch.float32 and torch.isfinite(m.coords).all()
    assert m.cluster.shape == (N,) and len(m.fitted) == fit_rows
    assert torch.equal(m.fitted, map2d.subsample_indices(N, fit_rows, 0))  # embed_2d's subsample
    fit_coords = map2d.embed_2d(bank.column("rows")[:][m.fitted], "umap", cache_dir=tmp_path, max_rows=fit_rows)
    assert torch.equal(m.coords[m.fitted], fit_coords)
    # the placed rows land where the (linear) fit puts them: a small error against the map's size
    truth = exact_projection(bank, m.fitted)
    rest = torch.ones(N, dtype=torch.bool)
    rest[m.fitted] = False
    error = (m.coords[rest] - truth[rest]).norm(dim=1)
    assert error.median() < 0.05 * (truth.max(0).values - truth.min(0).values).norm()
    # rows of one synthetic cluster land together, far from the others
    labels = bank.true_labels
    centres = torch.stack([m.coords[labels == g].mean(0) for g in range(GROUPS)])
    within = torch.stack([(m.coords[labels == g] - centres[g]).norm(dim=1).mean() for g in range(GROUPS)]).mean()
    between = torch.pdist(centres).min()
    assert within < 0.3 * between
    assert adjusted_rand_score(labels.numpy(), m.cluster.numpy()) > 0.9


def test_pca_map_projects_the_rest_exactly(bank, tmp_path):
    m = whole_map(bank, "pca", fit_rows=FIT, clusters=4, cache_dir=tmp_path, progress=False)
    assert m.method == "pca" and int(m.cluster.max()) == 3
    assert torch.allclose(m.coords, exact_projection(bank, m.fitted), atol=1e-3)


def test_a_bank_within_fit_rows_gets_embed_2d_coords_and_the_shipped_map_is_read(tmp_path, monkeypatch):
    from gmem_explore.checkpoints.hub import EMBEDDED

    small = MemoryBank(clustered(300)[0])
    m = whole_map(small, "pca", cache_dir=tmp_path, progress=False)
    assert torch.equal(m.coords, map2d.embed_2d(small, "pca", cache_dir=tmp_path)) and len(m.fitted) == 300
    assert int(m.cluster.max()) + 1 == 300 // wm.POINTS_PER_CLUSTER  # the default: 64, or fewer for small fits

    emoji = MemoryBank.load(EMBEDDED["emoji-32"] / "bank.safetensors")
    monkeypatch.setattr(map2d, "umap_2d", lambda x, seed: pytest.fail("UMAP was fitted"))
    m = whole_map(emoji, "umap", cache_dir=tmp_path, progress=False)
    assert m.method == "umap" and torch.equal(m.coords, map2d.embed_2d(emoji, "umap", cache_dir=tmp_path))


def test_the_cache_is_read_and_not_refitted(bank, fake_umap, tmp_path, monkeypatch):
    first = whole_map(bank, "umap", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    assert "fit" in first.seconds
    monkeypatch.setattr(map2d, "embed_2d", lambda *a, **k: pytest.fail("the map was fitted again"))
    again = whole_map(bank, "umap", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    same_rows = whole_map(MemoryBank(bank.column("rows")[:].clone()), "umap", fit_rows=FIT, clusters=GROUPS,
                          cache_dir=tmp_path, progress=False)
    for m in (again, same_rows):
        assert set(m.seconds) == {"read"} and m.method == "umap"
        assert torch.equal(m.coords, first.coords) and torch.equal(m.cluster, first.cluster)
        assert torch.equal(m.fitted, first.fitted)
    assert wm.is_cached(bank, "umap", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path)
    assert not wm.is_cached(bank, "umap", fit_rows=FIT, clusters=GROUPS + 1, cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shape", "another bank's"])
def test_a_cache_file_not_to_trust_is_rebuilt_with_a_warning(bank, tmp_path, damage):
    kw = dict(method="pca", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    first = whole_map(bank, **kw)
    (path,) = tmp_path.glob("whole-*.safetensors")
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "wrong shape":
        tensors, meta = wm.load_tensors(path)
        wm.save_tensors(path, {**tensors, "coords": tensors["coords"][:-1]}, meta)
    else:
        other = MemoryBank(clustered(seed=1)[0])
        whole_map(other, **kw)
        (theirs,) = set(tmp_path.glob("whole-*.safetensors")) - {path}
        path.write_bytes(theirs.read_bytes())
    with pytest.warns(UserWarning, match="ignoring the whole-bank map cache"):
        m = whole_map(bank, **kw)
    assert torch.equal(m.coords, first.coords) and "fit" in m.seconds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(whole_map(bank, **kw).seconds) == {"read"}  # rewritten


@pytest.mark.filterwarnings("ignore:could not write the bank-map cache")  # embed_2d's, for the fit
def test_an_unwritable_cache_costs_a_warning(bank, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the whole-bank map cache"):
        m = whole_map(bank, "pca", fit_rows=FIT, clusters=GROUPS, cache_dir=blocker / "maps", progress=False)
    assert torch.isfinite(m.coords).all()


def test_an_edited_copy_gets_its_own_map_and_the_bank_keeps_its_own(bank, tmp_path):
    kw = dict(method="pca", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    before = whole_map(bank, **kw)
    copy = bank.copy()
    copy.replace(int(before.fitted[0]), -bank.column("rows")[int(before.fitted[0])].float())
    copy.add(bank.column("rows")[:2].float())
    edited = whole_map(copy, **kw)
    assert len(list(tmp_path.glob("whole-*.safetensors"))) == 2 and "fit" in edited.seconds
    assert edited.coords.shape == (N + 2, 2) and torch.isfinite(edited.coords).all()
    assert not torch.equal(edited.coords[:N], before.coords)
    assert set(whole_map(bank, **kw).seconds) == {"read"}  # the shared rows' map is still the bank's


def test_the_bank_is_hashed_once_for_the_map_and_the_index(bank, tmp_path, monkeypatch):
    calls = []
    real = bank_index.fingerprint
    monkeypatch.setattr(bank_index, "fingerprint", lambda rows: calls.append(1) or real(rows))
    whole_map(bank, "pca", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    whole_map(bank, "pca", fit_rows=FIT, clusters=4, cache_dir=tmp_path, progress=False)
    options = bank_index.IndexOptions(min_rows=0, lists=16, code_bytes=8, probe=6, rerank=100, train_rows=3000)
    bank.nearest([0], 5, index_options=options, cache_dir=tmp_path / "index", progress=False)
    assert len(calls) == 1 and search.state_of(bank).index.key == search.fingerprint(bank)
    bank.replace(3, bank.column("rows")[4].float())  # an edit: hashed again, once
    assert search.fingerprint(bank) == real(bank.column("rows")) and len(calls) == 2


def test_progress_is_reported(bank, tmp_path):
    seen = []
    whole_map(bank, "pca", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False,
              options=wm.PlaceOptions(chunk=1000), progress_callback=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, N) and seen[-1] == (N, N) and len(seen) == 1 + N // 1000
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))


def test_rows_with_nan_are_left_out_of_the_fit_and_placed_nowhere(fake_umap, tmp_path):
    rows, _ = clustered()
    broken = torch.tensor([0, 17, 4000])
    rows[broken] = float("nan")
    rows[5, 3] = float("inf")
    m = whole_map(MemoryBank(rows), "umap", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path, progress=False)
    bad = torch.zeros(N, dtype=torch.bool)
    bad[broken], bad[5] = True, True
    assert torch.isnan(m.coords[bad]).all() and (m.cluster[bad] == -1).all()
    assert torch.isfinite(m.coords[~bad]).all() and (m.cluster[~bad] >= 0).all()
    assert len(m.fitted) == FIT and not bad[m.fitted].any()
    assert set(whole_map(MemoryBank(rows), "umap", fit_rows=FIT, clusters=GROUPS, cache_dir=tmp_path,
                         progress=False).seconds) == {"read"}  # NaN coordinates are what the cache holds, not damage


def test_bad_input_is_refused_with_what_to_do(bank):
    kw = dict(cache_dir=False, progress=False)
    with pytest.raises(ValueError, match="at least 2 rows"):
        whole_map(MemoryBank(torch.randn(1, 8)), "pca", **kw)
    with pytest.raises(ValueError, match="at least 2 usable rows"):
        whole_map(MemoryBank(torch.full((5, 8), float("nan"))), "pca", **kw)
    with pytest.raises(ValueError, match="fit_rows must be a whole number >= 32"):
        whole_map(bank, "pca", fit_rows=31, **kw)
    with pytest.raises(ValueError, match="clusters=900 is more than the 800 rows"):
        whole_map(bank, "pca", fit_rows=FIT, clusters=900, **kw)
    with pytest.raises(ValueError, match="clusters must be a whole number >= 1"):
        whole_map(bank, "pca", clusters=0, **kw)
    with pytest.raises(ValueError, match="Unknown map method"):
        whole_map(bank, "tsne", **kw)
    with pytest.raises(ValueError, match="seed must be an integer"):
        whole_map(bank, "pca", seed=0.5, **kw)
    with pytest.raises(ValueError, match="PlaceOptions"):
        whole_map(bank, "pca", options=wm.PlaceOptions(neighbours=0), **kw)
    with pytest.raises(ValueError, match="MemoryBank or a float"):
        whole_map([[1.0, 2.0]], "pca", **kw)
