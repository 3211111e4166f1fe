"""MemoryBank: files, choice rules, search, editing and mixing."""
import math
import os

import pytest
import torch

from gmem_explore import MemoryBank, index_from_noise, mix
from gmem_explore.bank.memory import CHOOSE_STRATEGIES, MIX_METHODS, SAVE_DTYPES, normalize


def test_round_trip_keeps_everything(tmp_path, tiny_bank):
    tiny_bank.meta["source"] = "test"
    tiny_bank.save(tmp_path / "b.safetensors")
    back = MemoryBank.load(tmp_path / "b.safetensors")
    assert torch.equal(back.rows, tiny_bank.rows) and torch.equal(back.freq, tiny_bank.freq)
    assert torch.equal(back.labels, tiny_bank.labels) and torch.equal(back.thumbnails, tiny_bank.thumbnails)
    assert back.label_names == ["a", "b", "c"] and back.meta["source"] == "test"
    assert back.label_of(4) == "b"


def test_fp16_storage_halves_the_file_and_snippets_stay_close(tmp_path):
    bank = MemoryBank(torch.randn(1000, 768))
    bank.save(tmp_path / "32.safetensors")
    bank.save(tmp_path / "16.safetensors", dtype=torch.float16)
    assert os.path.getsize(tmp_path / "16.safetensors") < 0.51 * os.path.getsize(tmp_path / "32.safetensors")
    half = MemoryBank.load(tmp_path / "16.safetensors")
    assert half.rows.dtype == torch.float16
    assert (half.snippets(range(1000)) - bank.snippets(range(1000))).abs().max() < 1e-3


def test_load_is_memory_mapped_and_edits_never_reach_the_file(tmp_path, tiny_bank):
    path = tmp_path / "b.safetensors"
    tiny_bank.save(path)
    before = path.read_bytes()
    bank = MemoryBank.load(path)
    bank.replace(0, torch.ones(16))
    bank.add(torch.ones(2, 16))
    bank.remove([3])
    assert path.read_bytes() == before


def test_failed_save_leaves_the_old_file(tmp_path, tiny_bank, monkeypatch):
    path = tmp_path / "b.safetensors"
    tiny_bank.save(path)
    before = path.read_bytes()
    import gmem_explore.safefiles as sf

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sf.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        MemoryBank(torch.randn(5, 16)).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temporary file left behind


def test_index_from_noise_follows_the_frequencies():
    freq = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    g = torch.Generator().manual_seed(0)
    draws = 20000
    idx = index_from_noise(torch.randn(draws, 4, 8, 8, generator=g), freq)
    assert idx.shape == (draws,)
    observed = torch.bincount(idx, minlength=5).double()
    expected = freq.double() / freq.sum() * draws
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.47  # chi-square, 4 degrees of freedom, p = 0.001
    # and the same rule is deterministic per sample, and follows the released formula
    z = torch.randn(4, 8, 8, generator=g)
    u = 0.5 * (1 + math.erf(z.double().mean().item() * math.sqrt(z.numel()) / math.sqrt(2)))
    cdf = torch.cumsum(freq.double() / freq.sum(), 0)
    assert index_from_noise(z, freq).item() == int((cdf > u).nonzero()[0])


def test_index_from_noise_wrongly_weighted_would_fail_the_chi_square():
    freq = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    idx = index_from_noise(torch.randn(20000, 4, 8, 8, generator=torch.Generator().manual_seed(0)), None, 5)
    observed = torch.bincount(idx, minlength=5).double()
    expected = freq.double() / freq.sum() * 20000
    assert ((observed - expected) ** 2 / expected).sum().item() > 1000


def test_choose_strategies(tiny_bank):
    g = torch.Generator().manual_seed(0)
    by_freq = tiny_bank.choose(4000, "frequency", g)
    uniform = tiny_bank.choose(4000, "uniform", g)
    assert by_freq.float().mean() > uniform.float().mean() + 2  # freq grows with the row index
    with pytest.raises(ValueError, match="Unknown choice strategy"):
        tiny_bank.choose(1, "best")


def test_nearest_finds_a_planted_row_in_chunks():
    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(torch.randn(5000, 64, generator=g).half())
    query = torch.randn(64, generator=g)
    bank.replace(3210, query * 7)  # scale does not matter for cosine
    idx, sim = bank.nearest(query, k=3, chunk=1000)
    assert idx[0, 0] == 3210 and sim[0, 0] > 0.999 and sim[0, 1] < 0.7
    assert torch.all(sim[0, :-1] >= sim[0, 1:])


def test_add_replace_remove(tiny_bank):
    new = tiny_bank.add(torch.randn(2, 16), labels=[1, 2])
    assert new.tolist() == [20, 21] and len(tiny_bank) == 22 and tiny_bank.thumbnails.shape[0] == 22
    assert tiny_bank.labels[-1] == 2 and tiny_bank.freq[-1] == pytest.approx(10.5)
    row = torch.randn(16)
    tiny_bank.replace(5, row)
    assert torch.allclose(tiny_bank.snippets([5])[0], row / row.norm())
    tiny_bank.remove([0, 1])
    assert len(tiny_bank) == 20 and tiny_bank.freq.shape == (20,)
    with pytest.raises(IndexError, match="rows 0..19"):
        tiny_bank.snippets([20])
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        tiny_bank.add(torch.randn(2, 15))
    with pytest.raises(ValueError, match="NaN"):
        tiny_bank.replace(0, torch.full((16,), float("nan")))


@pytest.mark.parametrize("method", MIX_METHODS)
def test_mixing_keeps_unit_norm_and_hits_the_endpoints(method):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g)
    for w in (0.0, 0.3, 0.5, 1.0):
        out = mix(a, b, w, method)
        assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(mix(a, b, 0.0, method), a / a.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(mix(a, b, 1.0, method), b / b.norm(dim=-1, keepdim=True), atol=1e-5)


@pytest.mark.parametrize("method", MIX_METHODS)
def test_mixing_a_nan_snippet_is_refused(method):
    """NaN passes the zero-vector check (NaN < 1e-6 is False) and would come out as a NaN 'unit' vector."""
    good = torch.ones(2, 8)
    bad = good.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="second snippet to mix holds NaN or infinite"):
        mix(good, bad, 0.5, method)
    with pytest.raises(ValueError, match="first snippet to mix holds NaN or infinite"):
        mix(torch.full((2, 8), float("inf")), good, 0.0, method)


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_mixing_opposite_snippets_halfway_is_refused_with_a_reason(method):
    a = torch.tensor([[1.0, 2.0, -0.5]])
    with pytest.raises(ValueError, match="zero vector.*opposite directions.*another weight"):
        mix(a, -a, 0.5, method)
    torch.testing.assert_close(mix(a, -a, 0.25, method), a / a.norm())  # elsewhere on the line: still a's direction


def test_concat_takes_halves_and_slerp_keeps_equal_angles():
    a, b = torch.zeros(4), torch.zeros(4)
    a[0], b[3] = 1.0, 1.0
    half = mix(a, b, 0.5, "concat")
    assert torch.allclose(half, torch.tensor([1.0, 0, 0, 1.0]) / math.sqrt(2))
    mid = mix(a, b, 0.5, "slerp")
    assert torch.allclose(mid @ a, mid @ b) and torch.allclose(mid.norm(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="Unknown mixing method"):
        mix(a, b, 0.5, "average")
    with pytest.raises(ValueError, match=r"weight must lie in \[0, 1\]"):
        mix(a, b, 1.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rows=torch.randn(4, 8), freq=torch.ones(3)), "one entry per row"),
    (dict(rows=torch.randn(4, 8), freq=-torch.ones(4)), "non-negative"),
    (dict(rows=torch.randn(4, 8), freq=torch.zeros(4)), "sums to zero"),
    (dict(rows=torch.randn(8)), r"2-D \(N, D\)"),
    (dict(rows=torch.randn(4, 8), thumbnails=torch.zeros(4, 8, 8, 3)), "uint8"),
])
def test_invalid_banks_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryBank(**kwargs)


def test_stats(tiny_bank):
    s = tiny_bank.stats()
    assert s["rows"] == 20 and s["dim"] == 16 and s["groups"] == {"a": 7, "b": 7, "c": 6}
    assert s["freq_max"] == 20.0


# ---- edits are all-or-nothing, and never leave a bank that cannot be drawn from, saved or loaded ---------------
def bank_state(bank):
    """Every tensor and list of a bank, cloned, to compare before and after an edit."""
    clone = lambda t: None if t is None else t.clone()  # noqa: E731
    names = None if bank.label_names is None else list(bank.label_names)
    return bank.rows.clone(), clone(bank.freq), clone(bank.labels), clone(bank.thumbnails), names


def assert_same_state(before, after):
    for old, new in zip(before, after):
        if isinstance(old, torch.Tensor):
            assert old.dtype == new.dtype and torch.equal(old, new)
        else:
            assert old == new


@pytest.mark.parametrize("edit,match", [
    (lambda b: b.add(torch.randn(1, 16), freq=[-1.0]), "non-negative"),
    (lambda b: b.add(torch.randn(1, 16), freq=[float("nan")]), "NaN or infinite"),
    (lambda b: b.add(torch.randn(2, 16), freq=[1.0]), r"one frequency per new row \(2\); got 1"),
    (lambda b: b.add(torch.randn(2, 16), labels=[1]), r"one label per new row \(2\); got 1"),
    (lambda b: b.add(torch.randn(1, 16), labels=[1.5]), "whole numbers"),
    (lambda b: b.add(torch.randn(1, 16), thumbnails=torch.zeros(1, 4, 4, 3, dtype=torch.uint8)),
     r"shape \(1, 8, 8, 3\).*got \(1, 4, 4, 3\)"),
    (lambda b: b.add(torch.randn(1, 16), thumbnails=torch.full((1, 8, 8, 3), 300)), "values from 300 to 300"),
    (lambda b: b.add(torch.randn(1, 16), thumbnails=torch.rand(1, 8, 8, 3)), r"uint8 RGB values 0\.\.255.*\* 255"),
    (lambda b: b.add(torch.randn(2, 16).index_fill(0, torch.tensor([1]), float("nan"))), r"rows \[1\] hold NaN"),
    (lambda b: b.replace(3, torch.randn(16), thumbnail=torch.zeros(3, 8, 8, dtype=torch.uint8)), r"shape \(1, 8, 8, 3\)"),
    (lambda b: b.replace(3, torch.randn(16), label=0.5), "whole numbers"),
    (lambda b: b.replace(3, torch.randn(2, 16)), "replace takes one row; got 2"),
    (lambda b: b.remove([25]), "rows 0..19"),
])
def test_a_refused_edit_leaves_the_bank_exactly_as_it_was(tiny_bank, edit, match):
    before = bank_state(tiny_bank)
    with pytest.raises((ValueError, IndexError), match=match):
        edit(tiny_bank)
    assert_same_state(before, bank_state(tiny_bank))
    tiny_bank.validate(check_values=True)


@pytest.mark.parametrize("extra,words", [
    (dict(labels=[2]), "this bank has no labels, so the labels= given would be lost"),
    (dict(thumbnails=torch.zeros(1, 8, 8, 3, dtype=torch.uint8)), "this bank has no thumbnails"),
    (dict(freq=[3.0]), r"this bank has no frequencies \(rows are drawn uniformly\)"),
])
def test_add_refuses_an_extra_the_bank_does_not_have_instead_of_dropping_it(extra, words):
    bank = MemoryBank(torch.randn(4, 16))
    rows = bank.rows.clone()
    with pytest.raises(ValueError, match=words + r".*MemoryBank\(bank\.rows, freq=bank\.freq"):
        bank.add(torch.randn(1, 16), **extra)
    assert len(bank) == 4 and torch.equal(bank.rows, rows)
    assert bank.freq is None and bank.labels is None and bank.thumbnails is None


def test_replace_refuses_a_thumbnail_or_label_the_bank_does_not_have():
    bank = MemoryBank(torch.randn(4, 16))
    rows = bank.rows.clone()
    with pytest.raises(ValueError, match="this bank has no thumbnails"):
        bank.replace(1, torch.randn(16), thumbnail=torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="this bank has no labels"):
        bank.replace(1, torch.randn(16), label=0)
    assert torch.equal(bank.rows, rows)  # the row was not written either


def test_add_keeps_given_extras_and_fills_missing_ones(tiny_bank):
    thumb = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8)
    (i,) = tiny_bank.add(torch.randn(16), freq=[4.0], labels=[2], thumbnails=thumb).tolist()
    assert (tiny_bank.freq[i], tiny_bank.labels[i]) == (4.0, 2) and torch.equal(tiny_bank.thumbnails[i], thumb)
    (j,) = tiny_bank.add(torch.randn(16), thumbnails=torch.full((1, 8, 8, 3), 7, dtype=torch.int64)).tolist()
    assert tiny_bank.labels[j] == -1 and tiny_bank.thumbnails[j].unique().tolist() == [7]
    assert tiny_bank.freq[j] == pytest.approx(float(tiny_bank.freq[:j].mean()))
    tiny_bank.validate(check_values=True)


def test_replace_writes_into_the_callers_tensor_as_documented():
    rows = torch.randn(3, 4)
    MemoryBank(rows).replace(0, torch.ones(4))
    assert torch.equal(rows[0], torch.ones(4))
    kept = torch.randn(3, 4)
    original = kept.clone()
    MemoryBank(kept).copy().replace(0, torch.ones(4))
    assert torch.equal(kept, original)


def test_remove_refuses_to_leave_only_rows_of_frequency_zero(tmp_path):
    bank = MemoryBank(torch.randn(4, 8), freq=[0.0, 0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"removing rows \[2, 3\] would leave only rows of frequency 0.*bank\.freq = None"):
        bank.remove([2, 3])
    assert len(bank) == 4 and bank.freq.tolist() == [0.0, 0.0, 2.0, 1.0]
    bank.remove([3])  # row 2 still has a count: fine
    bank.save(tmp_path / "b.safetensors")
    assert MemoryBank.load(tmp_path / "b.safetensors").freq.tolist() == [0.0, 0.0, 2.0]
    bank.remove([0, 1, 2])  # an empty bank draws nothing either, but it loads, and rows can be added again
    assert len(bank) == 0
    with pytest.raises(ValueError, match="freq sums to zero"):
        bank.add(torch.randn(1, 8), freq=[0.0])
    assert len(bank) == 0 and bank.freq.shape == (0,)


def test_a_bank_whose_frequencies_were_zeroed_by_hand_is_not_saved_and_choose_says_why(tmp_path):
    bank = MemoryBank(torch.randn(4, 8), freq=torch.ones(4))
    bank.freq = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot save this bank, MemoryBank.load would refuse the file: freq sums to zero"):
        bank.save(tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()
    with pytest.raises(ValueError, match="freq sums to zero.*use uniform choice"):
        bank.choose(3)
    assert bank.choose(3, "uniform").shape == (3,)


def test_choose_zero_rows_gives_an_empty_long_tensor_with_or_without_frequencies(tiny_bank):
    for bank in (tiny_bank, MemoryBank(tiny_bank.rows)):
        for strategy in CHOOSE_STRATEGIES:
            out = bank.choose(0, strategy)
            assert out.dtype == torch.long and out.shape == (0,)
        with pytest.raises(ValueError, match=r"whole number of rows n >= 0; got -1"):
            bank.choose(-1)
        with pytest.raises(ValueError, match=r"whole number of rows n >= 0; got 2\.5"):
            bank.choose(2.5)


def test_choose_by_huge_frequencies_stays_proportional():
    """Counts beyond float32's range (3.4e38) used to turn infinite on the way to torch.multinomial."""
    bank = MemoryBank(torch.randn(3, 4), freq=torch.tensor([1e300, 0.0, 3e300], dtype=torch.float64))
    draws = bank.choose(4000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=3).tolist()
    assert counts[1] == 0 and 800 < counts[0] < 1200


# ---- files: only dtypes load reads, no row spoiled by float16 ----------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, "float16"])
def test_save_refuses_a_dtype_load_cannot_read(tmp_path, tiny_bank, dtype):
    with pytest.raises(ValueError, match=r"cannot save bank rows as .*torch\.float16 \(half the size\), torch\.bfloat16"):
        tiny_bank.save(tmp_path / "b.safetensors", dtype=dtype)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", SAVE_DTYPES)
def test_every_save_dtype_loads_back(tmp_path, tiny_bank, dtype):
    tiny_bank.save(tmp_path / "b.safetensors", dtype=dtype)
    back = MemoryBank.load(tmp_path / "b.safetensors")
    assert back.rows.dtype == dtype and torch.equal(back.rows, tiny_bank.rows.to(dtype))


def test_save_in_float16_refuses_rows_beyond_its_range(tmp_path):
    rows = torch.randn(5, 8)
    rows[2] *= 1e5  # normalised by the model, fine in float32, infinite in float16
    rows[4] = 1e-9  # all values below float16's smallest: would become a zero row
    bank = MemoryBank(rows)
    with pytest.raises(ValueError, match=r"cannot save this bank in torch.float16: rows \[2, 4\] do not fit.*"
                                         r"dtype=torch.float32.*normalise"):
        bank.save(tmp_path / "b.safetensors", dtype=torch.float16)
    assert list(tmp_path.iterdir()) == []
    bank.save(tmp_path / "b.safetensors")  # float32 holds them
    assert torch.allclose(MemoryBank.load(tmp_path / "b.safetensors").snippets([2]), bank.snippets([2]))
    bank.rows = normalize(bank.rows)  # the fix the message names
    bank.save(tmp_path / "b.safetensors", dtype=torch.float16)
    assert torch.allclose(MemoryBank.load(tmp_path / "b.safetensors").snippets([2, 4]), bank.snippets([2, 4]), atol=1e-3)


def test_a_float16_bank_refuses_rows_it_cannot_hold():
    bank = MemoryBank(torch.randn(3, 8).half(), freq=torch.ones(3))
    before = bank_state(bank)
    big = torch.randn(2, 8)
    big[1] *= 1e6
    with pytest.raises(ValueError, match=r"new rows: rows \[1\] do not fit in torch.float16.*normalize"):
        bank.add(big)
    with pytest.raises(ValueError, match=r"replacement row: rows \[0\] do not fit in torch.float16"):
        bank.replace(0, big[1])
    assert_same_state(before, bank_state(bank))
    bank.add(normalize(big))
    assert torch.isfinite(bank.rows).all() and len(bank) == 5


# ---- nearest with any chunk size -----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_nearest_matches_brute_force_for_any_chunk(chunk):
    g = torch.Generator().manual_seed(3)
    bank = MemoryBank(torch.randn(23, 8, generator=g))
    query = torch.randn(4, 8, generator=g)
    ref_s, ref_i = (normalize(query) @ normalize(bank.rows).T).topk(5, dim=1)
    idx, sim = bank.nearest(query, k=5, chunk=chunk)
    assert torch.equal(idx, ref_i) and torch.allclose(sim, ref_s, atol=1e-6)


def test_nearest_skips_broken_rows_and_leaves_the_query_row_out():
    rows = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    rows[2] = float("nan")  # a broken row is like nothing: never a neighbour, and the search still answers
    bank = MemoryBank(rows)
    idx, sim = bank.nearest(rows[0], k=10)  # a snippet: row 0 is its own best match
    assert idx[0].tolist()[0] == 0 and 2 not in idx[0].tolist() and idx.shape == (1, 5) and torch.isfinite(sim).all()
    idx, _ = bank.nearest([0], k=10)  # a row number: itself left out
    assert sorted(idx[0].tolist()) == [1, 3, 4, 5]
    assert bank.nearest([0], k=10, exclude_self=False)[0][0, 0] == 0
    with pytest.raises(ValueError, match=r"rows \[2\] hold NaN.*replace or remove"):  # asked about by number
        bank.nearest([2])


def test_nearest_refuses_a_chunk_below_one(tiny_bank):
    with pytest.raises(ValueError, match=r"chunk .*>= 1; got 0"):
        tiny_bank.nearest(tiny_bank.rows[0], k=3, chunk=0)


# ---- compressed banks ----------------------------------------------------------------------------------------
def test_memorybank_load_reads_a_compressed_bank_with_its_extras(tmp_path, tiny_bank):
    from gmem_explore.bank.lowrank import LowRankBank, compress

    path = tmp_path / "low.safetensors"
    compress(tiny_bank, rank=16, coeff_dtype=torch.float32).save(path)
    back = MemoryBank.load(path)
    assert back.meta["low_rank"] == 16 and back.rows.dtype == torch.float16
    assert torch.allclose(back.snippets(range(20)), tiny_bank.snippets(range(20)), atol=2e-3)  # full rank: exact
    assert torch.equal(back.freq, tiny_bank.freq) and torch.equal(back.labels, tiny_bank.labels)
    assert torch.equal(back.thumbnails, tiny_bank.thumbnails) and back.label_of(4) == "b"
    assert torch.equal(LowRankBank.load(path).to_bank().rows, back.rows)  # the documented long way, same bank
    with pytest.raises(ValueError, match="not a low-rank bank file.*MemoryBank.load"):
        tiny_bank.save(tmp_path / "full.safetensors")
        LowRankBank.load(tmp_path / "full.safetensors")


def test_the_cli_compressed_file_opens_with_memorybank_load(tmp_path, capsys, tiny_bank):
    from gmem_explore.cli.main import main

    tiny_bank.save(tmp_path / "bank.safetensors")
    out = tmp_path / "low.safetensors"
    assert main(["bank", "compress", str(tmp_path / "bank.safetensors"), "--rank", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    low = MemoryBank.load(out)
    assert len(low) == 20 and low.meta["low_rank"] == 4 and torch.equal(low.labels, tiny_bank.labels)
    assert low.choose(5, generator=torch.Generator().manual_seed(0)).shape == (5,)


def test_replace_writes_the_given_thumbnail_and_label(tiny_bank):
    before = tiny_bank.copy()
    row = torch.randn(16)
    tiny_bank.replace(0, row, thumbnail=torch.full((8, 8, 3), 7, dtype=torch.uint8), label=2)
    assert int(tiny_bank.labels[0]) == 2 and tiny_bank.label_of(0) == "c"
    assert torch.all(tiny_bank.thumbnails[0] == 7)
    assert torch.allclose(tiny_bank.snippets([0])[0], row / row.norm())
    # the other rows are untouched
    assert torch.equal(tiny_bank.labels[1:], before.labels[1:])
    assert torch.equal(tiny_bank.thumbnails[1:], before.thumbnails[1:]) and torch.equal(tiny_bank.rows[1:], before.rows[1:])
