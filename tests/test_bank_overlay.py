"""Copies as overlays (bank/overlay.py) at 10,000 rows: a copy is independent both ways, its edits give exactly what
the same edits give on a fully cloned bank, it saves (streamed, atomically) and loads back, and it holds memory for
its edits and a row map, not a second bank."""
from __future__ import annotations

import gc

import pytest
import torch

from gmem_explore import MemoryBank
from gmem_explore.bank import overlay, search
from gmem_explore.safefiles import load_tensors

N, D = 10_000, 64
PARTS = ("rows", "freq", "labels", "thumbnails")


def make_bank(n=N, seed=0) -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, D, generator=g).half()
    freq = torch.randint(1, 50, (n,), generator=g).double()
    thumbs = torch.randint(0, 256, (n, 4, 4, 3), generator=g, dtype=torch.uint8)
    return MemoryBank(rows, freq, torch.arange(n) % 7, [f"g{i}" for i in range(7)], thumbs, meta={"name": "test"})


def cloned(bank: MemoryBank) -> MemoryBank:
    """The copy as it used to be made: every part cloned."""
    return MemoryBank(*(bank.column(p)[:].clone() for p in ("rows", "freq", "labels")), bank.label_names,
                      bank.column("thumbnails")[:].clone(), dict(bank.meta))


def parts(bank: MemoryBank) -> dict:
    return {p: bank.column(p)[:].clone() for p in PARTS}


def assert_same(a: MemoryBank, b: MemoryBank) -> None:
    assert len(a) == len(b) and a.label_names == b.label_names
    for p in PARTS:
        assert torch.equal(a.column(p)[:], b.column(p)[:]), p
    rows = [0, len(a) // 2, len(a) - 1]
    assert torch.equal(a.snippets(rows), b.snippets(rows))
    for exact in (True, False):
        ia, sa = a.nearest(rows, 5, exact=exact, progress=False)
        ib, sb = b.nearest(rows, 5, exact=exact, progress=False)
        assert torch.equal(ia, ib) and torch.allclose(sa, sb)
    noise = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.from_noise(noise), b.from_noise(noise))
    assert a.stats(sample=64) == b.stats(sample=64)


def edit(bank: MemoryBank, seed: int = 5, count: int = 100) -> None:
    """`count` replaces, adds and removes, the same for the same seed whatever the bank's storage."""
    g = torch.Generator().manual_seed(seed)
    for step in range(count):
        kind = step % 4
        if kind in (0, 1):
            r = int(torch.randint(0, len(bank), (1,), generator=g))
            bank.replace(r, torch.randn(D, generator=g).half(), label=int(torch.randint(0, 7, (1,), generator=g)),
                         thumbnail=torch.full((4, 4, 3), step, dtype=torch.uint8) if step % 8 == 0 else None)
        elif kind == 2:
            bank.add(torch.randn(2, D, generator=g).half(), freq=[3.0, 4.0], labels=[1, 2])
        else:
            bank.remove(torch.randint(0, len(bank), (3,), generator=g))


def test_a_copy_and_its_original_never_see_each_others_edits():
    original = make_bank()
    before = parts(original)
    copy = original.copy()
    edit(copy, seed=1)
    for p in PARTS:  # the copy's edits stay in the copy
        assert torch.equal(original.column(p)[:], before[p]), p
    copied = parts(copy)
    edit(original, seed=2)  # and the original's (its storage is shared now: it stops writing into it) stay there
    for p in PARTS:
        assert torch.equal(copy.column(p)[:], copied[p]), p
    original.rows[0] = 7  # a write through the public attribute is the original's own too
    original.freq[1] = 99.0
    assert not torch.equal(copy.column("rows")[:1], original.column("rows")[:1])
    assert copy.column("freq")[1] == copied["freq"][1]


def test_a_copy_of_a_copy_is_independent_of_both():
    first = make_bank().copy()
    edit(first, seed=1, count=20)
    second = first.copy()
    kept = parts(first)
    edit(second, seed=2, count=20)
    for p in PARTS:
        assert torch.equal(first.column(p)[:], kept[p]), p
    twin = cloned(first)
    edit(twin, seed=2, count=20)
    assert_same(second, twin)


@pytest.mark.parametrize("searched_first", [False, True])
def test_edits_on_a_copy_equal_the_same_edits_on_a_cloned_bank(searched_first):
    original = make_bank()
    if searched_first:  # the copy then starts from the original's search state (norms), shared until it edits
        original.nearest([0], 3)
    copy, twin = original.copy(), cloned(original)
    assert_same(copy, twin)
    edit(copy)
    edit(twin)
    assert_same(copy, twin)
    assert copy.column("rows").edited and not twin.column("rows").edited


def test_indexed_search_of_an_edited_copy_matches_a_cloned_bank(tmp_path):
    pytest.importorskip("faiss")
    from gmem_explore.bank.index import IndexOptions

    options = IndexOptions(min_rows=0, lists=16, code_bytes=8, probe=16, rerank=400, train_rows=N)
    search = dict(index_options=options, cache_dir=tmp_path, progress=False)
    original = make_bank()
    original.nearest([0], 3, **search)  # builds the index
    copy, twin = original.copy(), cloned(original)
    twin.nearest([0], 3, **search)  # the same rows: the same index, read from the cache
    edit(copy)
    edit(twin)
    rows = list(range(0, len(copy), 97))
    found, sims = copy.nearest(rows, 5, **search)
    want, want_sims = twin.nearest(rows, 5, **search)
    assert torch.equal(found, want) and torch.allclose(sims, want_sims)
    assert copy._search.index is original._search.index  # shared, never rebuilt for the copy
    replaced = int(torch.nonzero(copy.column("rows").src >= N)[0])  # an edited row is found through the edits
    assert copy.nearest(copy.snippets([replaced]), 1, **search)[0][0, 0] == replaced


def test_an_edited_copy_saves_streamed_and_loads_back(tmp_path):
    path = tmp_path / "bank.safetensors"
    make_bank().save(path)
    base = MemoryBank.load(path)  # memory-mapped, as the app holds it
    copy = base.copy()
    edit(copy)
    want = parts(copy)
    copy.save(path)  # over the very file the shared rows are mapped from: written aside, then renamed
    back = MemoryBank.load(path)
    for p in PARTS:
        assert torch.equal(back.column(p)[:], want[p]), p
    assert back.label_names == copy.label_names and back.meta == {"name": "test"}
    half = tmp_path / "half.safetensors"
    copy.save(half, dtype=torch.float32)
    assert MemoryBank.load(half).dtype == torch.float32
    assert torch.equal(MemoryBank.load(half).column("rows")[:], want["rows"].float())


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    from gmem_explore import safefiles

    path = tmp_path / "bank.safetensors"
    make_bank(100).save(path)
    old = path.read_bytes()
    copy = MemoryBank.load(path).copy()
    copy.replace(3, torch.ones(D))
    real = safefiles._write_tensor

    def fails_at_thumbnails(f, name, *args):
        if name == "thumbnails":  # rows, freq and labels are on disk by now
            raise OSError(28, "No space left on device")
        return real(f, name, *args)
    monkeypatch.setattr(safefiles, "_write_tensor", fails_at_thumbnails)
    with pytest.raises(OSError, match="No space left"):
        copy.save(path)
    with pytest.raises(OSError):
        copy.save(tmp_path / "new.safetensors")
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"]


def held_storages(root) -> dict[int, int]:
    """data pointer -> bytes of every tensor storage reachable from `root` through the package's own objects and
    Python containers: what a bank holds, measured from its tensors rather than from its own accounting."""
    seen, out, todo = set(), {}, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            out[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, (dict, list, tuple, set)) or type(obj).__module__.startswith("gmem_explore"):
            todo.extend(gc.get_referents(obj))
            for name in getattr(type(obj), "__slots__", ()):
                todo.append(getattr(obj, name, None))
    return out


def test_a_copy_with_100_edits_holds_its_edits_and_a_row_map_not_a_second_bank():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(N, 768, generator=g).half()  # a real bank's width: 15 MB of rows, 0.3 MB of thumbnails
    original = MemoryBank(rows, torch.ones(N, dtype=torch.float64), torch.arange(N) % 5, None,
                          torch.zeros(N, 2, 2, 3, dtype=torch.uint8))
    original.nearest([0], 3)  # a searched bank: the copy starts from its search state
    whole = sum(held_storages(original).values())
    copy = original.copy()
    shared = held_storages(original)
    assert sum(size for ptr, size in held_storages(copy).items() if ptr not in shared) == 0  # a copy is free
    for i in range(100):
        if i % 2:
            copy.replace(i * 37, torch.randn(768, generator=g).half(), label=1)
        else:
            copy.add(torch.randn(1, 768, generator=g).half(), freq=[1.0], labels=[2])
    own = sum(size for ptr, size in held_storages(copy).items() if ptr not in shared)
    # one int32 map for all four parts + the search state's own norms (float32) + 100 rows and their extras
    expected = 4 * N + 4 * N + 100 * (768 * 2 + 8 + 8 + 12)
    assert own <= 1.2 * expected and own < 0.1 * whole, (own, expected, whole)
    assert abs(copy.own_bytes() - own) <= 0.05 * own  # the app's accounting says the same
    assert copy.column("freq").src is copy.column("rows").src  # one map, shared by the parts edited together


def test_an_edit_of_a_removed_row_is_refused_and_says_why():
    bank = make_bank(10).copy()
    bank.remove([9])
    with pytest.raises(IndexError, match=r"rows 0\.\.8.*1 row\(s\) were removed.*moved down"):
        bank.replace(9, torch.ones(D))
    with pytest.raises(IndexError, match="were removed"):
        bank.remove([9])
    assert len(bank) == 9


def test_reading_a_part_never_copies_a_shared_bank():
    original = make_bank()
    copy = original.copy()
    copy.replace(1, torch.ones(D))
    base = original.column("rows").base
    for bank in (original, copy):
        bank.stats(sample=32), bank.snippets([0, 1]), bank.nearest([2], 3), bank.choose(4)
        assert bank.column("rows").base is base  # nothing was materialised
    assert isinstance(copy.column("rows"), overlay.Column) and search.state_of(copy).rows is copy.column("rows")
    private = copy.rows  # the public attribute: a tensor of the copy's own, made once
    assert private.data_ptr() != base.data_ptr() and copy.rows is private and not copy.column("rows").edited
    assert torch.equal(private[1], torch.ones(D).half())
    assert torch.equal(load_back(copy)[1], torch.ones(D).half())


def load_back(bank: MemoryBank) -> torch.Tensor:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        bank.save(Path(tmp) / "b.safetensors")
        return load_tensors(Path(tmp) / "b.safetensors", mmap=False)[0]["rows"]
