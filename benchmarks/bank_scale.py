"""Nearest-row search on a bank of ImageNet's size (1.28M x 768, fp16): the index against exact search and
against MemoryBank.nearest as it was (every row re-normalised and scanned for NaN on each call), in one run.

    python benchmarks/bank_scale.py                      # 1,280,000 rows: about 5 minutes on 2 cores
    python benchmarks/bank_scale.py --rows 100000        # a quick run
    python benchmarks/bank_scale.py --memory             # editing sessions' memory instead (about 2 minutes)

The bank is synthetic: rows drawn around 1,000 random centres (so that recall means something: an unclustered
bank in 768 dimensions has no meaningful neighbours), normalised and stored in fp16 as the converted banks are,
saved and memory-mapped as a user's bank is. Queries are fresh draws from the same clusters (an uploaded image's
snippet), not bank rows. Measured:
- before: MemoryBank.nearest as it was, on a few queries (seconds each);
- exact: row norms computed once, then one matrix-vector product per query (bank/index.py exact_scores);
- index: faiss IVF-PQ candidates re-ranked exactly (bank/index.py); build time, file size, cache read time,
  p50 / p95 per single query, recall@10 against exact search, and batches of 64 queries.
Writes benchmarks/results/bank_scale.json and .md.

--memory measures what editing sessions cost instead (the app copies the bank at a session's first edit): 1 and 10
sessions of 100 edits each (replaced and added rows, as the app's Swap tab makes them) on the memory-mapped bank
(with frequencies, searched once so that the copies start from its row norms), as copies are made now (an overlay:
bank/overlay.py) and as they were (every part cloned), in the same run. Per setting: the process's resident memory
(VmRSS and its anonymous part RssAnon, /proc/self/status) before and after, the bytes each copy's own tensors hold
(MemoryBank.own_bytes), the time to copy and to edit, and the peak memory of saving one edited copy (streamed).
The old copies are measured for 10 sessions only where the machine has the memory for them (10 x 1.9 GB at
1.28M rows), else estimated as 10 x one. Writes benchmarks/results/bank_memory.json and .md.
"""
from __future__ import annotations

import argparse
import gc
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


def clustered(n: int, seed: int, centres: torch.Tensor, with_labels: bool = False):
    """fp16 unit rows around the centres, made in chunks so float32 never holds them all; with_labels, also each
    row's centre (int64), for benchmarks that score a map against the true clusters."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, DIM, dtype=torch.float16)
    labels = torch.empty(n, dtype=torch.long)
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        pick = torch.randint(0, len(centres), (b - a,), generator=g)
        labels[a:b] = pick
        out[a:b] = normalize(centres[pick] + SPREAD * torch.randn(b - a, DIM, generator=g) / DIM ** 0.5).half()
    return (out, labels) if with_labels else out


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


def memory_kb() -> dict:
    """VmRSS, RssAnon (the process's own pages, not the mapped file's) and VmHWM (peak RSS) in kB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5), so the next peak is one step's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def old_copy(bank: MemoryBank) -> MemoryBank:
    """MemoryBank.copy as it was: every part cloned."""
    part = lambda name: None if bank.column(name) is None else bank.column(name)[:].clone()  # noqa: E731
    return MemoryBank(part("rows"), part("freq"), part("labels"), bank.label_names, part("thumbnails"), dict(bank.meta))


def sessions(base: MemoryBank, count: int, edits: int, copy, seed: int) -> dict:
    """`count` sessions' copies, each edited `edits` times (half replaced rows, half added, as the app makes them);
    the resident memory they add and the bytes their own tensors hold."""
    gc.collect()
    before = memory_kb()
    g = torch.Generator().manual_seed(seed)
    copies, copy_s, edit_s = [], 0.0, 0.0
    for _ in range(count):
        t = time.perf_counter()
        bank = copy(base)
        copy_s += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(edits):
            row = normalize(torch.randn(1, DIM, generator=g)).half()
            if i % 2:
                bank.replace(int(torch.randint(0, len(base), (1,), generator=g)), row[0])
            else:
                bank.add(row)
        edit_s += time.perf_counter() - t
        copies.append(bank)
    after = memory_kb()
    own = [b.own_bytes() for b in copies]
    result = {"sessions": count, "edits_each": edits,
              "rss_added_mb": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
              "anon_added_mb": round((after["RssAnon"] - before["RssAnon"]) / 1024, 1),
              "own_mb_per_copy": round(max(own) / 2**20, 2), "own_mb_total": round(sum(own) / 2**20, 1),
              "copy_ms_each": round(1000 * copy_s / count, 2), "edit_ms_each": round(1000 * edit_s / (count * edits), 3)}
    return result, copies


def memory_main(args) -> None:
    out = {"rows": args.rows, "dim": DIM, "edits_each": args.edits, "machine": platform.processor() or platform.machine()}
    centres = normalize(torch.randn(CENTRES, DIM, generator=torch.Generator().manual_seed(0)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.safetensors"
        freq = torch.randint(1, 100, (args.rows,), generator=torch.Generator().manual_seed(3)).double()
        MemoryBank(clustered(args.rows, 1, centres), freq).save(path)
        gc.collect()
        base = MemoryBank.load(path)  # memory-mapped, as the app holds a checkpoint's bank
        base.nearest(normalize(torch.randn(1, DIM)), 5, exact=True)  # row norms: the copies start from them
        out["bank_file_mb"] = round(path.stat().st_size / 2**20, 1)
        out["start"] = memory_kb()
        for count in (1, 10):
            out[f"overlay_{count}"], copies = sessions(base, count, args.edits, MemoryBank.copy, seed=count)
            if count == 1:  # saving an edited copy: streamed, the shared rows and the edits
                peak = reset_peak()
                start = memory_kb()
                t = time.perf_counter()
                copies[0].save(Path(tmp) / "edited.safetensors")
                out["save_edited_s"] = round(time.perf_counter() - t, 1)
                if peak:
                    out["save_peak_added_mb"] = round((memory_kb()["VmHWM"] - start["VmRSS"]) / 1024, 1)
                (Path(tmp) / "edited.safetensors").unlink()
            del copies
        one_old = args.rows * DIM * 2 / 2**20 + args.rows * 8 / 2**20
        for count in (1, 10):
            if count * one_old * 1.3 > available_mb():
                first = out["before_1"]
                out[f"before_{count}"] = {"sessions": count, "estimated": f"{count} x one session: not enough memory "
                                          f"here for {count} full copies ({count * one_old:.0f} MB)",
                                          **{k: round(v * count, 1) for k, v in first.items()
                                             if k in ("rss_added_mb", "anon_added_mb", "own_mb_total")}}
                continue
            out[f"before_{count}"], copies = sessions(base, count, args.edits, old_copy, seed=count)
            del copies
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "bank_memory.json", (json.dumps(out, indent=1) + "\n").encode())
    md = [f"# Editing sessions on a memory-mapped {args.rows:,} x {DIM} fp16 bank ({out['bank_file_mb']} MB), "
          f"{args.edits} edits each", "",
          "| copies | sessions | RSS added MB | anonymous MB | own tensors MB per copy | copy ms | edit ms |",
          "|---|---|---|---|---|---|---|"]
    for name, label in (("overlay", "overlay (now)"), ("before", "full clone (before)")):
        for count in (1, 10):
            r = out[f"{name}_{count}"]
            md.append(f"| {label}{' (estimated)' if 'estimated' in r else ''} | {count} | {r.get('rss_added_mb')} | "
                      f"{r.get('anon_added_mb')} | {r.get('own_mb_per_copy', '-')} | {r.get('copy_ms_each', '-')} | "
                      f"{r.get('edit_ms_each', '-')} |")
    md += ["", "Own tensors: what MemoryBank.own_bytes counts (row map, edited rows, the search state's norms); RSS "
           "added after an earlier setting freed its copies can read 0, since the allocator reuses that memory.",
           "", f"Saving one edited copy (streamed): {out['save_edited_s']} s, peak RSS added "
           f"{out.get('save_peak_added_mb', 'not measured')} MB (the mapped bank's pages read during the save "
           f"included)."]
    write_bytes_atomic(RESULTS / "bank_memory.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_280_000, help="bank rows (default: 1,280,000, ImageNet's)")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed (default: 200)")
    parser.add_argument("--old-queries", type=int, default=3, help="queries through the old nearest (default: 3)")
    parser.add_argument("--memory", action="store_true", help="measure editing sessions' memory instead of search")
    parser.add_argument("--edits", type=int, default=100, help="edits per session with --memory (default: 100)")
    args = parser.parse_args()
    if args.memory:
        return memory_main(args)
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
