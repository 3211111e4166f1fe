"""Bank search and statistics at their edges (tests written to kill mutants of the old bank/tools.py that the older
tests let through)."""
from __future__ import annotations

import torch

from gmem_explore.bank.memory import MemoryBank
from gmem_explore.bank.search import partner_row


def test_partner_row_is_never_the_row_itself_even_when_every_other_row_points_away():
    rows = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.3]])  # cosines to row 0: about -0.99 and -0.96
    assert partner_row(MemoryBank(rows), 0) == 2  # the one nearest cosine 0.5, not row 0 (cosine 1)
    one_group = MemoryBank(rows, labels=torch.zeros(3, dtype=torch.long), label_names=["all"])
    assert partner_row(one_group, 0) == 2  # no other group: the same rule as without groups


def test_bank_cli_prints_row_then_similarity_and_honours_sample(tmp_path, capsys):
    import json

    from gmem_explore.cli.main import main

    rows = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "bank.safetensors"
    MemoryBank(rows).save(path)
    assert main(["bank", "nearest", str(path), "--row", "7", "--k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    pairs = [p.strip() for p in line.removeprefix("row 7: ").split(",")]
    assert len(pairs) == 3
    row, sim = pairs[0].split(" ")
    assert int(row) != 7 and -1 <= float(sim.strip("()")) <= 1  # "12 (0.731)": the row, then its cosine
    assert main(["bank", "stats", str(path), "--sample", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["sample_rows"] == 10


def test_statistics_top_1pct_share_counts_the_most_frequent_hundredth_of_rows():
    from gmem_explore.bank.stats import statistics

    freq = torch.ones(200, dtype=torch.float64)
    freq[17] = 100.0  # 200 rows: the top 1% is 2 rows, row 17 and one of count 1
    s = statistics(MemoryBank(torch.randn(200, 4), freq=freq), sample=10)
    assert abs(s["top_1pct_share"] - 101 / 299) < 1e-9 and s["freq_total"] == 299.0


def test_compress_reports_sizes_against_the_rows_in_float16():
    from gmem_explore.bank.lowrank import compress

    low = compress(MemoryBank(torch.randn(300, 32, generator=torch.Generator().manual_seed(0))), rank=4)
    full, small = 300 * 32 * 2, 300 * 4 * 2 + 4 * 32 * 4 + 32 * 4  # fp16 rows; fp16 coeffs + fp32 basis and mean
    assert low.report["compression_ratio"] == round(full / small, 2)


def test_compress_reports_the_variance_kept_and_orders_its_basis_largest_first():
    from gmem_explore.bank.lowrank import compress

    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(300, 4, generator=g) * torch.tensor([8.0, 4.0, 2.0, 1.0])) @ torch.linalg.qr(
        torch.randn(32, 32, generator=g))[0][:4]
    low = compress(MemoryBank(rows), rank=5, coeff_dtype=torch.float32)
    assert low.report["variance_kept"] > 0.9999  # rank 4 data (plus the centring): nothing is lost
    spread = low.coeffs.var(0)
    assert bool((spread[:-1] >= spread[1:]).all())  # the first direction carries the most
