"""What a 2-D map of the released-size bank (640,000 x 768, fp16) costs through gmem_explore.bank.map2d.embed_2d.

    python benchmarks/bank_map_640k.py                        # UMAP on 5,000 / 10,000 / 20,000 rows, extrapolated
    python benchmarks/bank_map_640k.py --umap-rows 50000      # measure the default 50,000-row map directly

The bank is synthetic: 640,000 rows drawn around 1,000 random centres (so UMAP has clusters to find), stored in
fp16 as the converted official bank is. Measured in the same run:
- subsample + normalise: embed_2d's path for banks over max_rows (a seeded 50,000-row subset);
- the baseline, PCA on that subset (method="pca");
- the first UMAP fit (numba compiles its kernels once per process), then UMAP on subsets of growing size; the time for 50,000 rows is measured when asked, otherwise extrapolated with
  the power law fitted to the measured sizes (UMAP's cost grows slightly faster than linearly).
Times are process CPU seconds with one thread (NUMBA_NUM_THREADS=1; UMAP with a fixed random_state runs on one
thread anyway), so a loaded shared machine does not inflate them; wall seconds are recorded beside them.
Writes benchmarks/results/bank_map_640k.json and .md.
"""
from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gmem_explore.bank.map2d import embed_2d, subsample_indices  # noqa: E402
from gmem_explore.bank.memory import normalize  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, round(time.process_time() - cpu, 2), round(time.perf_counter() - wall, 2)


def synthetic_bank(rows: int, dim: int, centres: int, seed: int = 0) -> torch.Tensor:
    """fp16 rows = a random centre + noise, made in chunks so float32 never holds the whole bank."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, dim, generator=g)
    out = torch.empty(rows, dim, dtype=torch.float16)
    for start in range(0, rows, 65536):
        n = min(65536, rows - start)
        which = torch.randint(0, centres, (n,), generator=g)
        out[start:start + n] = (c[which] + 0.7 * torch.randn(n, dim, generator=g)).half()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=640_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--max-rows", type=int, default=50_000, help="embed_2d's subsample size")
    parser.add_argument("--umap-rows", type=int, nargs="*", default=[5_000, 10_000, 20_000],
                        help="sizes to time; keep them >= 4,096 (approximate neighbours, as for 50,000)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows, make_cpu, make_wall = timed(lambda: synthetic_bank(args.rows, args.dim, 1_000))
    report = {"bank": f"{args.rows} x {args.dim} fp16 synthetic ({rows.numel() * 2 / 2**30:.2f} GiB)",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread used",
              "make_bank_cpu_s": make_cpu}
    (idx, sub), cpu, wall = timed(lambda: (lambda i: (i, normalize(rows[i])))(subsample_indices(args.rows, args.max_rows)))
    report["subsample_normalise"] = {"rows": len(idx), "cpu_s": cpu, "wall_s": wall}
    _, cpu, wall = timed(lambda: embed_2d(rows, method="pca", cache_dir=False, max_rows=args.max_rows))
    report["pca_on_subsample"] = {"rows": args.max_rows, "cpu_s": cpu, "wall_s": wall}
    _, cpu, wall = timed(lambda: __import__("umap"))
    report["umap_import"] = {"cpu_s": cpu, "wall_s": wall}
    # The first fits in a process compile numba kernels: UMAP's own (any size) and, from 4,096 rows up, where UMAP
    # switches from exact neighbours to pynndescent, pynndescent's. Both are timed apart so the scaling fit sees
    # compiled fits only.
    _, cpu, wall = timed(lambda: embed_2d(sub[:300], method="umap", cache_dir=False, max_rows=300))
    _, cpu2, wall2 = timed(lambda: embed_2d(sub[:4500], method="umap", cache_dir=False, max_rows=4500))
    report["umap_first_fit_compile"] = {"rows": "300 + 4500", "cpu_s": round(cpu + cpu2, 2), "wall_s": round(wall + wall2, 2)}

    umap_runs = []
    for n in sorted(args.umap_rows):
        # a map of an n-row bank: embed_2d subsamples n rows of the 50k subset, exactly as for a bank of n rows
        part = sub[subsample_indices(len(sub), n, seed=1)]
        _, cpu, wall = timed(lambda: embed_2d(part, method="umap", cache_dir=False, max_rows=n))
        umap_runs.append({"rows": n, "cpu_s": cpu, "wall_s": wall})
        print(f"umap {n:>6} rows: {cpu:7.1f} s CPU ({wall:.1f} s wall)", flush=True)
    report["umap"] = umap_runs
    if len(umap_runs) >= 2 and args.max_rows not in [r["rows"] for r in umap_runs]:
        xs = [math.log(r["rows"]) for r in umap_runs]
        ys = [math.log(max(r["cpu_s"], 1e-3)) for r in umap_runs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        estimate = math.exp(my + slope * (math.log(args.max_rows) - mx))
        report["umap_extrapolated"] = {"rows": args.max_rows, "cpu_s": round(estimate, 1), "exponent": round(slope, 2)}
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "bank_map_640k.json", json.dumps(report, indent=1).encode())
    write_bytes_atomic(RESULTS / "bank_map_640k.md", markdown(report).encode())
    print(markdown(report))


def markdown(r: dict) -> str:
    lines = [f"# Bank map of a released-size bank ({r['bank']})", "", f"Machine: {r['machine']}. Times in CPU seconds "
             "(one thread), so other load on the machine does not inflate them; wall seconds beside them.", "",
             "| step | rows | CPU s | wall s |", "| --- | --- | --- | --- |",
             f"| subsample + normalise (embed_2d, banks over max_rows) | {r['subsample_normalise']['rows']:,} | "
             f"{r['subsample_normalise']['cpu_s']} | {r['subsample_normalise']['wall_s']} |",
             f"| PCA map of the subsample (baseline) | {r['pca_on_subsample']['rows']:,} | {r['pca_on_subsample']['cpu_s']} | "
             f"{r['pca_on_subsample']['wall_s']} |",
             f"| first `import umap` | | {r['umap_import']['cpu_s']} | {r['umap_import']['wall_s']} |",
             f"| first UMAP fits in a process (numba compiles) | {r['umap_first_fit_compile']['rows']} | {r['umap_first_fit_compile']['cpu_s']} | "
             f"{r['umap_first_fit_compile']['wall_s']} |"]
    lines += [f"| UMAP map | {u['rows']:,} | {u['cpu_s']} | {u['wall_s']} |" for u in r["umap"]]
    if "umap_extrapolated" in r:
        e = r["umap_extrapolated"]
        lines.append(f"| UMAP map, extrapolated (time ~ rows^{e['exponent']}) | {e['rows']:,} | ~{e['cpu_s']} | |")
    lines += ["", "The map is cached on disk afterwards (keyed by the rows' hash): a second open takes milliseconds."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
