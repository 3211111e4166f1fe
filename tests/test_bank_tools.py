"""Bank tools on banks with known structure: statistics, nearest rows (exact against brute force, self excluded,
chunked), low-rank compression (exact at full rank, the error reported matches the error measured), and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from gmem_explore.bank.memory import MemoryBank, normalize
from gmem_explore.bank.search import nearest, partner_row
from gmem_explore.bank.stats import statistics
from gmem_explore.bank.lowrank import LowRankBank, compress
from gmem_explore.cli.main import main


def low_rank_bank(n=300, d=32, rank=4, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)
    rows = rows + noise * torch.randn(n, d, generator=g)
    return MemoryBank(rows, freq=torch.arange(1, n + 1).double())


def test_statistics_of_a_known_bank():
    rows = torch.zeros(10, 4)
    rows[:, 0] = torch.arange(1, 11).float()
    rows[9] = 0  # one zero row
    bank = MemoryBank(rows, freq=torch.tensor([0.0] * 5 + [1.0] * 5))
    s = statistics(bank, sample=10)
    assert s["rows"] == 10 and s["dim"] == 4 and s["zero_rows"] == 1 and s["norm_max"] == 9.0
    assert s["never_drawn_rows"] == 5 and s["effective_rows"] == pytest.approx(5.0)
    assert s["mean_direction_norm"] == pytest.approx(0.9)  # nine rows point one way, one is zero
    json.dumps(s)  # JSON-able for the CLI


def test_nearest_rows_matches_brute_force_and_excludes_self():
    bank = low_rank_bank(noise=0.5)
    bank = MemoryBank(bank.rows.half(), bank.freq)  # the released bank is stored in fp16
    idx, sim = nearest(bank, [3, 150, 299], k=5, chunk=64)  # several chunks
    x = normalize(bank.rows)
    full = x[[3, 150, 299]] @ x.T
    full[[0, 1, 2], [3, 150, 299]] = -9
    ref_s, ref_i = full.topk(5, dim=1)
    assert torch.equal(idx, ref_i) and torch.allclose(sim, ref_s, atol=1e-6)
    assert not any(q in row for q, row in zip([3, 150, 299], idx.tolist()))
    # a snippet query finds its own row first
    idx2, sim2 = nearest(bank, bank.rows[42:43].float() * 7, k=2)
    assert idx2[0, 0] == 42 and sim2[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(IndexError):
        nearest(bank, [300])


def test_compression_is_exact_on_low_rank_data_and_reports_the_true_error(tmp_path):
    bank = low_rank_bank(rank=4)
    exact = compress(bank, rank=5, coeff_dtype=torch.float32)  # centring uses one extra direction
    assert exact.report["relative_frobenius_error"] < 1e-5 and exact.report["mean_cosine"] > 0.99999
    noisy = low_rank_bank(rank=4, noise=0.3)
    for rank in (2, 8):
        low = compress(noisy, rank=rank)
        x = normalize(noisy.rows)
        measured = float((x - low.rows()).norm() / x.norm())
        assert low.report["relative_frobenius_error"] == pytest.approx(measured, rel=1e-3)
        cos = torch.nn.functional.cosine_similarity(x, low.rows(), dim=1).mean()
        assert low.report["mean_cosine"] == pytest.approx(float(cos), abs=1e-4)
    assert compress(noisy, rank=8).report["relative_frobenius_error"] < compress(noisy, rank=2).report["relative_frobenius_error"]
    low.save(tmp_path / "low.safetensors")
    back = LowRankBank.load(tmp_path / "low.safetensors")
    assert back.report == low.report and torch.equal(back.coeffs, low.coeffs)
    full = back.to_bank()
    assert len(full) == len(noisy) and torch.equal(full.freq, noisy.freq)
    with pytest.raises(ValueError, match="rank must be an integer"):
        compress(noisy, rank=33)


def test_bank_cli(tmp_path, capsys):
    bank = low_rank_bank(noise=0.2)
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    assert main(["bank", "stats", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 300
    assert main(["bank", "nearest", str(path), "--row", "7", "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("row 7: ")
    out = tmp_path / "low.safetensors"
    assert main(["bank", "compress", str(path), "--rank", "8", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert report["rank"] == 8 and 0 < report["relative_frobenius_error"] < 1 and out.is_file()
    assert main(["bank", "nearest", str(path)]) == 1  # neither --row nor --image: a clear error
    assert "give query rows" in capsys.readouterr().err


def test_partner_row_is_the_most_similar_row_of_another_group():
    """The pair notebooks and the app interpolate between: not a near-duplicate of the same group."""
    rows = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.9, 0.4], [0.0, 1.0], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    bank = MemoryBank(rows, labels=labels, label_names=["a", "b"])
    assert partner_row(bank, 0) == 2  # row 1 is closer but of the same group
    assert partner_row(bank, 3) == 4
    plain = MemoryBank(rows)  # no groups: cosine nearest 0.5 to row 3 (row 2: 0.41, row 4: 0.71, row 0: 0)
    assert partner_row(plain, 3) == 2
    with pytest.raises(ValueError, match="fewer than two rows"):
        partner_row(MemoryBank(rows[:1]), 0)
    with pytest.raises(IndexError):
        partner_row(bank, 7)
