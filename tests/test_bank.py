"""MemoryBank: files, choice rules, search, editing and mixing."""
import math
import os

import pytest
import torch

from gmem_explore import MemoryBank, index_from_noise, mix
from gmem_explore.bank import MIX_METHODS


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
