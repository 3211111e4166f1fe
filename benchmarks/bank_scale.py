"""Nearest-row search on a bank of ImageNet's size (1.28M x 768, fp16): the index against exact search and
against MemoryBank.nearest as it was (every row re-normalised and scanned for NaN on each call), in one run.

    python benchmarks/bank_scale.py                      # 1,280,000 rows: about 5 minutes on 2 cores
    python benchmarks/bank_scale.py --rows 100000        # a quick run

The bank is synthetic: rows drawn around 1,000 random centres (so that recall means something: an unclustered
bank in 768 dimensions has no meaningful neighbours), normalised and stored in fp16 as the converted banks are,
saved and memory-mapped as a user's bank is. Queries are fresh draws from the same clusters (an uploaded image's
snippet), not bank rows. Measured:
- before: MemoryBank.nearest as it was, on a few queries (seconds each);
- exact: row norms computed once, then one matrix-vector product per query (bank/index.py exact_scores);
- index: faiss IVF-PQ candidates re-ranked exactly (bank/index.py); build time, file size, cache read time,
  p50 / p95 per single query, recall@10 against exact search, and batches of 64 queries.
Writes benchmarks/results/bank_scale.json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gmem_explore.bank import MemoryBank, normalize  # noqa: E402
from gmem_explore.bank import index as bank_index  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM, CENTRES, SPREAD = 768, 1000, 0.9  # SPREAD: a row's cosine to its centre is about 0.74


def clustered(n: int, seed: int, centres: torch.Tensor) -> torch.Tensor:
    """fp16 unit rows around the centres, made in chunks so float32 never holds them all."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, DIM, dtype=torch.float16)
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        pick = torch.randint(0, len(centres), (b - a,), generator=g)
        out[a:b] = normalize(centres[pick] + SPREAD * torch.randn(b - a, DIM, generator=g) / DIM ** 0.5).half()
    return out


def old_nearest(rows: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """MemoryBank.nearest before the index: every call scans for NaN and re-normalises every row in float32."""
    for a in range(0, len(rows), 131072):
        if not torch.isfinite(rows[a:a + 131072]).all():
            raise ValueError("NaN row")
    sims = torch.cat([query @ normalize(rows[a:a + 131072].float()).T for a in range(0, len(rows), 131072)], 1)
    return sims.topk(k, dim=1).indices


def ms(seconds: list[float]) -> dict:
    s = sorted(seconds)
    return {"p50_ms": round(1000 * statistics.median(s), 2), "p95_ms": round(1000 * s[int(0.95 * (len(s) - 1))], 2),
            "n": len(s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_280_000, help="bank rows (default: 1,280,000, ImageNet's)")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed (default: 200)")
    parser.add_argument("--old-queries", type=int, default=3, help="queries through the old nearest (default: 3)")
    args = parser.parse_args()
    torch.manual_seed(0)
    centres = normalize(torch.randn(CENTRES, DIM, generator=torch.Generator().manual_seed(0)))
    out = {"rows": args.rows, "dim": DIM, "centres": CENTRES, "machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "options": bank_index.IndexOptions().__dict__}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        MemoryBank(clustered(args.rows, 1, centres)).save(Path(tmp) / "bank.safetensors")
        bank = MemoryBank.load(Path(tmp) / "bank.safetensors")  # memory-mapped, as a user opens it
        out["make_bank_s"] = round(time.perf_counter() - t, 1)
        rows = bank.rows
        queries = normalize(clustered(args.queries, 2, centres).float())

        times = []
        for q in queries[:args.old_queries]:
            t = time.perf_counter()
            old_nearest(rows, q[None], 10)
            times.append(time.perf_counter() - t)
        out["before"] = ms(times)

        t = time.perf_counter()
        norms = bank_index.row_norms(rows)
        key = bank_index.fingerprint(rows)
        out["norms_and_fingerprint_s"] = round(time.perf_counter() - t, 2)
        truth, times = [], []
        for q in queries:
            t = time.perf_counter()
            truth.append(bank_index.exact_scores(rows, norms, q[None]).topk(10, dim=1).indices[0])
            times.append(time.perf_counter() - t)
        out["exact_single"] = ms(times)
        t = time.perf_counter()
        bank_index.exact_scores(rows, norms, queries[:64]).topk(10, dim=1)
        out["exact_batch64_ms_per_query"] = round(1000 * (time.perf_counter() - t) / 64, 2)

        cache = Path(tmp) / "cache"
        t = time.perf_counter()
        index = bank_index.cached_index(rows, key=key, cache_dir=cache)
        out["index_build_s"] = round(time.perf_counter() - t, 1)
        out["index_file_mb"] = round(sum(p.stat().st_size for p in cache.iterdir()) / 2**20, 1)
        t = time.perf_counter()
        index = bank_index.cached_index(rows, key=key, cache_dir=cache)
        out["index_cache_read_s"] = round(time.perf_counter() - t, 2)
        found, times = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(bank_index.rerank(rows, norms, q[None], index.candidates(q[None]), 10)[0][0])
            times.append(time.perf_counter() - t)
        out["index_single"] = ms(times)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth))
        out["index_recall_at_10"] = round(hits / (10 * len(truth)), 4)
        t = time.perf_counter()
        bank_index.rerank(rows, norms, queries[:64], index.candidates(queries[:64]), 10)
        out["index_batch64_ms_per_query"] = round(1000 * (time.perf_counter() - t) / 64, 2)

    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "bank_scale.json", (json.dumps(out, indent=1) + "\n").encode())
    md = [f"# Nearest-row search on {args.rows:,} x {DIM} fp16 rows ({CENTRES} clusters), {out['threads']} threads",
          "", "| search | p50 ms | p95 ms | recall@10 | batch of 64, ms per query |", "|---|---|---|---|---|",
          f"| before (re-normalise every call) | {out['before']['p50_ms']} | {out['before']['p95_ms']} | 1 | - |",
          f"| exact (norms once) | {out['exact_single']['p50_ms']} | {out['exact_single']['p95_ms']} | 1 | "
          f"{out['exact_batch64_ms_per_query']} |",
          f"| index (IVF-PQ + exact re-rank) | {out['index_single']['p50_ms']} | {out['index_single']['p95_ms']} | "
          f"{out['index_recall_at_10']} | {out['index_batch64_ms_per_query']} |", "",
          f"Index: built in {out['index_build_s']} s, {out['index_file_mb']} MB on disk, read from the cache in "
          f"{out['index_cache_read_s']} s. Row norms + the bank's fingerprint: {out['norms_and_fingerprint_s']} s "
          f"once per bank."]
    write_bytes_atomic(RESULTS / "bank_scale.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
