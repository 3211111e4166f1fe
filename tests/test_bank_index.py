"""The approximate bank index (bank/index.py) at small scale: it finds what exact search finds, its cache is
reused only for the same rows, and a damaged or foreign cache is rebuilt, never trusted."""
from __future__ import annotations

import shutil

import pytest
import torch

from gmem_explore.bank import index as bank_index
from gmem_explore.bank import normalize

pytest.importorskip("faiss")

OPTIONS = bank_index.IndexOptions(min_rows=0, lists=16, code_bytes=8, probe=6, rerank=100, train_rows=3000)


def clustered(n=6_000, dim=32, clusters=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = normalize(torch.randn(clusters, dim, generator=g))
    x = centers[torch.randint(0, clusters, (n,), generator=g)] + 0.8 * torch.randn(n, dim, generator=g) / dim ** 0.5
    return normalize(x).half()


def exact_top(rows, queries, k):
    return (normalize(queries) @ normalize(rows.float()).T).topk(k, dim=1).indices


def search(rows, queries, k, index):
    norms = bank_index.row_norms(rows)
    return bank_index.rerank(rows, norms, normalize(queries), index.candidates(normalize(queries)), k)


@pytest.fixture(scope="module")
def rows():
    return clustered()


@pytest.fixture(scope="module")
def cache(rows, tmp_path_factory):
    """A cache folder holding this bank's index, built once for the module."""
    folder = tmp_path_factory.mktemp("index-cache")
    bank_index.cached_index(rows, OPTIONS, cache_dir=folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def built(rows, cache):
    return bank_index.cached_index(rows, OPTIONS, cache_dir=cache, progress=False)


def private_copy(cache, tmp_path):
    shutil.copytree(cache, tmp_path / "cache")
    return tmp_path / "cache"


def test_indexed_search_finds_what_exact_search_finds(rows, built):
    g = torch.Generator().manual_seed(1)
    queries = rows[torch.randint(0, len(rows), (50,), generator=g)].float() + 0.02 * torch.randn(50, 32, generator=g)
    found, scores = search(rows, queries, 10, built)
    truth = exact_top(rows, queries, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth)) / truth.numel()
    assert recall >= 0.95, recall
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first, by the exact cosine
    exact = normalize(queries) @ normalize(rows[found[0]].float()).T
    assert torch.allclose(scores[0], exact[0], atol=1e-3)


def test_exact_scores_are_cosines_for_one_query_and_many(rows):
    norms = bank_index.row_norms(rows)
    q = normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(2)))
    want = q @ normalize(rows.float()).T
    assert torch.allclose(bank_index.exact_scores(rows, norms, q), want, atol=2e-3)
    assert torch.allclose(bank_index.exact_scores(rows, norms, q[:1]), want[:1], atol=2e-3)


def test_nan_rows_are_never_an_answer(rows):
    broken = rows.clone()
    broken[5] = float("nan")
    norms = bank_index.row_norms(broken)
    assert torch.isnan(norms[5]) and torch.isfinite(norms[:5]).all()
    q = normalize(rows[5:6].float())
    idx, _ = bank_index.rerank(broken, norms, q, torch.arange(20)[None], 5)
    assert 5 not in idx[0].tolist() and (idx[0] >= 0).all()


def test_fewer_candidates_than_k_are_padded_not_invented(rows):
    norms = bank_index.row_norms(rows)
    idx, scores = bank_index.rerank(rows, norms, normalize(rows[:1].float()), torch.tensor([[3, 7, -1, -1]]), 4)
    assert idx[0].tolist()[2:] == [-1, -1] and torch.isinf(scores[0, 2:]).all()
    assert sorted(idx[0, :2].tolist()) == [3, 7]


def test_the_cache_is_reused_for_the_same_rows_only(rows, built, cache, tmp_path, monkeypatch):
    folder = private_copy(cache, tmp_path)
    assert len(list(folder.glob("rows-*.safetensors"))) == 1
    monkeypatch.setattr(bank_index.RowIndex, "build", classmethod(lambda *a, **k: pytest.fail("rebuilt")))
    again = bank_index.cached_index(rows, OPTIONS, cache_dir=folder, progress=False)
    q = normalize(rows[:4].float())
    assert torch.equal(built.candidates(q), again.candidates(q))
    edited = rows.clone()
    edited[0] = edited[1]
    assert bank_index.fingerprint(edited) != bank_index.fingerprint(rows)
    with pytest.raises(pytest.fail.Exception, match="rebuilt"):  # another bank: its own index, not this one
        bank_index.cached_index(edited, OPTIONS, cache_dir=folder, progress=False)


def test_a_damaged_or_foreign_cache_is_rebuilt_with_a_warning(rows, built, cache, tmp_path):
    folder = private_copy(cache, tmp_path)
    path = next(folder.glob("rows-*.safetensors"))
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk
    with pytest.warns(UserWarning, match="ignoring the bank index cache"):
        rebuilt = bank_index.cached_index(rows, OPTIONS, cache_dir=folder, progress=False)
    q = normalize(rows[:4].float())
    assert torch.equal(rebuilt.candidates(q), built.candidates(q))  # the same rows build the same index
    # another bank's index file (other rows, the same shape) copied under this bank's name: never used for it
    bank_index.RowIndex.build(clustered(seed=3), OPTIONS, progress=False).save(path)
    with pytest.warns(UserWarning, match="another bank"):
        bank_index.cached_index(rows, OPTIONS, cache_dir=folder, progress=False)


def test_the_code_width_divides_the_row_width():
    # product quantisation cuts a row into equal sub-vectors: a 96-byte code cannot cut 8- or 32-wide rows
    assert bank_index.IndexOptions().code_bytes_for(768) == 96
    assert bank_index.IndexOptions(code_bytes=10).code_bytes_for(32) == 8
    assert bank_index.IndexOptions().code_bytes_for(8) == 8
    narrow = clustered(n=4_000, dim=8, clusters=20)
    built = bank_index.RowIndex.build(narrow, bank_index.IndexOptions(min_rows=0, lists=16, train_rows=4_000),
                                      progress=False)  # the default 96 bytes, on rows 8 wide: built, not refused
    q = normalize(narrow[:3].float())
    assert [int(i) in c.tolist() for i, c in zip(range(3), built.candidates(q))] == [True] * 3


# ---- through MemoryBank.nearest ---------------------------------------------------------------------------
def indexed(bank, queries, k, cache):
    return bank.nearest(queries, k, index_options=OPTIONS, cache_dir=cache, progress=False)


def agreement(a, b):
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / a.numel()


def test_bank_nearest_uses_the_index_and_agrees_with_exact(rows, cache, monkeypatch):
    from gmem_explore import MemoryBank

    bank = MemoryBank(rows.clone())
    queries = list(range(0, 6000, 300))
    fast, _ = indexed(bank, queries, 10, cache)
    exact, _ = bank.nearest(queries, 10, exact=True)
    assert agreement(fast, exact) >= 0.95
    assert bank._search.index is not None  # built once, kept by the bank
    monkeypatch.setattr(bank_index, "cached_index", lambda *a, **k: pytest.fail("looked the index up again"))
    again, _ = indexed(bank, queries, 10, cache)
    assert torch.equal(again, fast)
    for q, found in zip(queries, fast):
        assert q not in found.tolist()  # a row is not its own neighbour


def test_edits_are_searched_without_rebuilding_the_index(rows, cache, monkeypatch):
    from gmem_explore import MemoryBank

    original = MemoryBank(rows.clone())
    indexed(original, [0], 5, cache)  # the index exists before any edit
    monkeypatch.setattr(bank_index, "cached_index", lambda *a, **k: pytest.fail("rebuilt after an edit"))
    bank = original.copy()  # a session's copy shares the index
    target = rows[100].float()
    bank.replace(7, target)  # row 7 now equals row 100
    added = bank.add(rows[200:201].float())  # a new row equal to row 200
    bank.remove([3, 50])  # rows after 3 move down by one, after 50 by two
    moved_7, moved_100, moved_200 = 6, 98, int(added[0]) - 2
    found, sims = indexed(bank, [moved_100], 3, cache)
    assert found[0, 0].item() == moved_7 and sims[0, 0] > 0.999  # the replaced row, found beside the index
    found, sims = indexed(bank, [moved_200], 3, cache)
    assert found[0, 0].item() == 198 and sims[0, 0] > 0.999  # the added row finds row 200, now row 198
    exact, _ = bank.nearest(list(range(0, 5000, 250)), 10, exact=True)
    fast, _ = indexed(bank, list(range(0, 5000, 250)), 10, cache)
    assert agreement(fast, exact) >= 0.95
    assert (fast < len(bank)).all() and (fast >= 0).all()
    assert torch.equal(original.rows, rows) and len(original) == len(rows)  # the copy's edits stay in the copy
    before, sims = indexed(original, [100], 3, cache)
    assert before[0, 0].item() != 7 and sims[0, 0] < 0.999


def test_a_broken_row_is_skipped_by_the_indexed_search(rows, cache):
    from gmem_explore import MemoryBank

    bank = MemoryBank(rows.clone())
    indexed(bank, [0], 5, cache)
    bank.replace(9, rows[10].float())
    bank.rows[9] = float("nan")  # damaged behind the bank's back, as a bad file would
    bank._search.norms[9] = float("nan")
    found, _ = indexed(bank, [10], 10, cache)
    assert 9 not in found[0].tolist()


# ---- warming the index up before the first search (the app does it when it loads a big bank) ----------------
def test_warm_index_builds_once_in_the_background_and_searches_share_it(rows, tmp_path, monkeypatch):
    from gmem_explore import MemoryBank
    from gmem_explore.bank import search as bank_search

    builds = []
    real_build = bank_index.RowIndex.build.__func__

    def counted(cls, *args, **kwargs):
        builds.append(1)
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(bank_index.RowIndex, "build", classmethod(counted))
    bank = MemoryBank(rows.clone())
    assert bank_search.warm_index(bank, bank_index.IndexOptions(min_rows=len(rows) + 1)) is None  # a small bank
    thread = bank_search.warm_index(bank, OPTIONS, cache_dir=tmp_path)
    # a search made while the warm-up builds waits for it instead of building a second index beside it
    found, _ = bank.nearest([5], 10, index_options=OPTIONS, cache_dir=tmp_path, progress=False)
    thread.join(60)
    assert not thread.is_alive() and len(builds) == 1
    assert bank._search.index is not None and len(set(found[0].tolist()) & set(exact_top(rows, rows[5:6].float(),
                                                                                        11)[0].tolist())) >= 9
    copy = bank.copy()  # a session's copy made after the warm-up shares its index: no build, no cache read
    copy.nearest([7], 5, index_options=OPTIONS, cache_dir=tmp_path, progress=False)
    assert len(builds) == 1 and copy._search.index is bank._search.index
