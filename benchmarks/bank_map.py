"""Every row of a bank on the 2-D map (gmem_explore.bank.whole_map) on the synthetic clustered bank of
benchmarks/bank_scale.py (1,000 Gaussian clusters, 768 dims, fp16), against today's map (embed_2d: UMAP on a
50,000-row subsample, the other rows not shown) in the same run.

    python benchmarks/bank_map.py --choose --rows 150000   # how to place the rows outside the fit (~10 min)
    python benchmarks/bank_map.py                          # the whole 1.28M-row map (~10-15 min on 2 cores)
    python benchmarks/bank_map.py --rows 640000            # half the bank

--choose fits UMAP on embed_2d's 50,000-row subsample and places 10,000 other rows with UMAP's own `transform` and
with nearest-fitted-row placement in PCA space (several settings), scoring each placement against the true clusters:
- cluster accuracy: the true cluster of a placed row is the most common one among its 10 nearest fitted rows
  on the map (the fit itself scores the same for its own rows, leaving each out: its line is the reference);
- neighbour agreement: of a row's 10 nearest fitted rows by cosine in 768 dims, the share among its 10 nearest
  fitted rows on the map (trustworthiness-style; the fit's own rows again give the reference);
- self placement (nearest-row placement only): 5,000 fitted rows placed from the others (themselves left out):
  how often they land within r of their own UMAP place, r = the median distance from a fitted row to its 10th
  nearest on the map; UMAP's transform of a fitted row finds the row itself, so it has no such figure.
The default run maps the whole bank: the fit, the clustering and the placement timed apart, the cache file's size
and read time, peak memory, and the map's cluster accuracy on 10,000 placed rows. Results:
benchmarks/results/bank_map.json (both modes' sections) and bank_map.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bank_scale import CENTRES, DIM, clustered, memory_kb, reset_peak  # noqa: E402
from gmem_explore.bank import MemoryBank, normalize  # noqa: E402
from gmem_explore.bank import map2d  # noqa: E402
from gmem_explore.bank.whole_map import PlaceOptions, map_scale, pca_basis, place, weighted_place, whole_map  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 10  # neighbours the scores compare


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, {datetime.date.today()}")


def knn_2d(fit_coords: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(2)
    index.add(np.ascontiguousarray(fit_coords, dtype=np.float32))
    return index.search(np.ascontiguousarray(points, dtype=np.float32), k)[1]


def scores(ids2d: np.ndarray, hd_ids: np.ndarray, fit_labels: np.ndarray, labels: np.ndarray) -> dict:
    votes = fit_labels[ids2d]
    majority = np.array([np.bincount(v).argmax() for v in votes])
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids2d, hd_ids)])
    return {"cluster_accuracy": round(float((majority == labels).mean()), 4), "neighbour_agreement": round(float(overlap), 4)}


def hd_neighbours(x: torch.Tensor, fit_x: torch.Tensor, k: int, skip_self: torch.Tensor | None = None) -> np.ndarray:
    """Each row's k nearest fitted rows by cosine in the full dimension (rows are unit vectors)."""
    out = []
    for a in range(0, len(x), 2048):
        s = x[a:a + 2048] @ fit_x.T
        if skip_self is not None:
            s[torch.arange(s.shape[0]), skip_self[a:a + 2048]] = -2
        out.append(s.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def choose(args) -> dict:
    import faiss
    import umap

    centres = normalize(torch.randn(CENTRES, DIM, generator=torch.Generator().manual_seed(0)))
    rows, labels = clustered(args.rows, 1, centres, with_labels=True)
    fitted = map2d.subsample_indices(args.rows, args.fit_rows, 0)
    fit_x, fit_labels = normalize(rows[fitted].float()), labels[fitted].numpy()
    rest = torch.ones(args.rows, dtype=torch.bool)
    rest[fitted] = False
    rest = rest.nonzero().flatten()
    ev = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(1))[:args.eval_rows]].sort().values
    ev_x, ev_labels = normalize(rows[ev].float()), labels[ev].numpy()
    out = {"rows": args.rows, "fit_rows": len(fitted), "eval_rows": len(ev), "machine": machine()}

    t = time.perf_counter()  # numba compiles UMAP's kernels once per process (both neighbour paths): apart
    warm = umap.UMAP(n_components=2, random_state=0, **map2d.UMAP_PARAMS).fit(fit_x[:4500].numpy())
    warm.transform(ev_x[:300].numpy())
    out["umap_compile_s"] = round(time.perf_counter() - t, 1)
    reducer = umap.UMAP(n_components=2, random_state=0, **map2d.UMAP_PARAMS)
    t = time.perf_counter()
    fit_coords = reducer.fit_transform(fit_x.numpy()).astype(np.float32)
    out["umap_fit_s"] = round(time.perf_counter() - t, 1)
    print(f"UMAP fit on {len(fitted):,} rows: {out['umap_fit_s']} s", flush=True)

    hd_ev = hd_neighbours(ev_x, fit_x, K)
    ref = torch.randperm(len(fitted), generator=torch.Generator().manual_seed(2))[:5000]
    hd_ref = hd_neighbours(fit_x[ref], fit_x, K, skip_self=ref)
    ids = knn_2d(fit_coords, fit_coords[ref.numpy()], K + 1)[:, 1:]  # the row itself is its own nearest on the map
    out["reference_fit_itself"] = scores(ids, hd_ref, fit_labels, fit_labels[ref.numpy()])
    r = map_scale(torch.from_numpy(fit_coords), K)  # the median distance to the 10th nearest fitted row on the map
    out["r_map_units"] = round(r, 4)

    placements = {}
    t = time.perf_counter()
    placed = reducer.transform(ev_x.numpy())
    per_row = (time.perf_counter() - t) / len(ev)
    placements["umap transform"] = {"ms_per_1000_rows": round(1e6 * per_row, 1),
                                    "estimated_s_for_rest_of_1.28M": round(per_row * (1_280_000 - len(fitted))),
                                    **scores(knn_2d(fit_coords, placed, K), hd_ev, fit_labels, ev_labels)}
    print("umap transform", placements["umap transform"], flush=True)

    fit_c = torch.from_numpy(fit_coords)
    scale = r
    # (dims, neighbours, temperature, anchor, index)
    settings = [(d, 10, 1.0, 1.0, "flat") for d in (32, 64, 128)]
    settings += [(64, 1, 1.0, None, "flat"), (64, 5, 1.0, 1.0, "flat"), (64, 20, 1.0, 1.0, "flat"),
                 (64, 10, 1.0, None, "flat"), (64, 10, 0.25, 1.0, "flat"), (64, 10, 1.0, 0.5, "flat"),
                 (64, 10, 1.0, 1.0, "ivf")]
    for dims, k, temperature, anchor, kind in settings:
        options = PlaceOptions(dims=dims, neighbours=k, temperature=temperature, anchor=anchor)
        mean, comps = pca_basis(fit_x, dims)
        fit_p = np.ascontiguousarray(((fit_x - mean) @ comps.T).numpy())
        if kind == "flat":
            index = faiss.IndexFlatL2(dims)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, 256)
            index.train(fit_p)
            index.nprobe = 16
        index.add(fit_p)
        t = time.perf_counter()
        ev_p = np.ascontiguousarray(((ev_x - mean) @ comps.T).numpy())
        placed = place(index, fit_c, ev_p, options, scale).numpy()
        per_row = (time.perf_counter() - t) / len(ev)
        # self placement: fitted rows from the others (search one more, drop the row itself)
        own = fit_p[ref.numpy()]
        dist, nn = index.search(own, k + 1)
        keep = nn != ref.numpy()[:, None]
        nn = np.stack([row[m][:k] for row, m in zip(nn, keep)])
        dist = np.stack([row[m][:k] for row, m in zip(dist, keep)])
        self_placed = weighted_place(dist, nn, fit_c, options, scale).numpy()
        miss = np.linalg.norm(self_placed - fit_coords[ref.numpy()], axis=1)
        name = f"nearest rows: PCA-{dims}, k={k}, temperature {temperature:g}, anchor {anchor}, {kind}"
        placements[name] = {"ms_per_1000_rows": round(1e6 * per_row, 1),
                            "estimated_s_for_rest_of_1.28M": round(per_row * (1_280_000 - len(fitted))),
                            **scores(knn_2d(fit_coords, placed, K), hd_ev, fit_labels, ev_labels),
                            "self_within_r": round(float((miss < r).mean()), 4),
                            "self_median_miss_over_r": round(float(np.median(miss) / r), 3)}
        print(name, placements[name], flush=True)
    out["placements"] = placements
    return out


def whole(args) -> dict:
    centres = normalize(torch.randn(CENTRES, DIM, generator=torch.Generator().manual_seed(0)))
    out = {"rows": args.rows, "fit_rows": args.fit_rows, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rows, labels = clustered(args.rows, 1, centres, with_labels=True)
        MemoryBank(rows).save(Path(tmp) / "bank.safetensors")
        del rows
        bank = MemoryBank.load(Path(tmp) / "bank.safetensors")  # memory-mapped, as a user opens it
        out["make_bank_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        map2d.embed_2d(bank.column("rows")[:4500], "umap", cache_dir=False, max_rows=4500)
        out["umap_compile_s"] = round(time.perf_counter() - t, 1)  # numba, once per process: not in either figure

        t = time.perf_counter()
        map2d.embed_2d(bank, "umap", cache_dir=Path(tmp) / "before", max_rows=args.fit_rows)
        out["before_embed_2d_s"] = round(time.perf_counter() - t, 1)

        cache = Path(tmp) / "maps"
        peak = reset_peak()
        start = memory_kb()
        t = time.perf_counter()
        m = whole_map(bank, "umap", fit_rows=args.fit_rows, cache_dir=cache)
        out["whole_map_s"] = round(time.perf_counter() - t, 1)
        out["stages_s"] = m.seconds  # fingerprint (+ row norms), fit, cluster_fit, place (incl. cluster assignment)
        end = memory_kb()
        out["rss_start_mb"] = round(start["VmRSS"] / 1024)
        if peak:
            out["peak_rss_added_mb"] = round((end["VmHWM"] - start["VmRSS"]) / 1024)
        out["anon_added_mb"] = round((end["RssAnon"] - start["RssAnon"]) / 1024)
        files = sorted(cache.glob("whole-*.safetensors"))
        out["cache_file_mb"] = round(sum(f.stat().st_size for f in files) / 2**20, 2)
        t = time.perf_counter()
        again = whole_map(bank, "umap", fit_rows=args.fit_rows, cache_dir=cache)
        out["cache_read_same_bank_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        whole_map(MemoryBank.load(Path(tmp) / "bank.safetensors"), "umap", fit_rows=args.fit_rows, cache_dir=cache)
        out["cache_read_freshly_opened_bank_s"] = round(time.perf_counter() - t, 2)  # + fingerprint and row norms
        assert torch.equal(again.cluster, m.cluster)

        # quality: 10,000 placed rows' true cluster against their 10 nearest fitted rows' on the map
        lab = labels.numpy()
        fit = m.fitted.numpy()
        others = np.setdiff1d(np.arange(args.rows), fit)
        ev = np.sort(np.random.default_rng(1).choice(others, size=min(10_000, len(others)), replace=False))
        ids = knn_2d(m.coords[fit].numpy(), m.coords[ev].numpy(), K)
        votes = lab[fit][ids]
        out["placed_cluster_accuracy"] = round(float((np.array([np.bincount(v).argmax() for v in votes]) == lab[ev]).mean()), 4)
        # k-means clusters against the true ones: how pure each k-means cluster is (64 clusters for 1,000 true ones)
        cl = m.cluster.numpy()
        out["kmeans_clusters"] = int(cl.max()) + 1
        out["true_clusters_split_across_kmeans"] = round(float(np.mean(
            [len(np.unique(cl[lab == c])) for c in range(CENTRES)])), 2)
        out["true_cluster_share_in_its_main_kmeans_cluster"] = round(float(np.mean(
            [np.bincount(cl[lab == c]).max() / (lab == c).sum() for c in range(CENTRES)])), 3)
        out["finite_coords"] = bool(torch.isfinite(m.coords).all())
    return out


def markdown(r: dict) -> str:
    lines = ["# Every row of a bank on the map (whole_map)", ""]
    for c in r.get("choose", {}).values():
        lines += [f"## Placing the rows outside the fit ({c['rows']:,}-row bank, UMAP fitted on {c['fit_rows']:,}, "
                  f"{c['eval_rows']:,} other rows placed)", "", f"Machine: {c['machine']}. UMAP fit {c['umap_fit_s']} s "
                  f"(+{c['umap_compile_s']} s numba compilation, once per process).", "",
                  "| placement | ms / 1,000 rows | est. s for the other 1.23M rows | cluster accuracy | neighbour "
                  "agreement | self within r | self median miss / r |", "|---|---|---|---|---|---|---|",
                  f"| (the fit's own rows, leave-one-out) | | | {c['reference_fit_itself']['cluster_accuracy']} | "
                  f"{c['reference_fit_itself']['neighbour_agreement']} | | |"]
        for name, p in c["placements"].items():
            lines.append(f"| {name} | {p['ms_per_1000_rows']} | {p['estimated_s_for_rest_of_1.28M']} | "
                         f"{p['cluster_accuracy']} | {p['neighbour_agreement']} | {p.get('self_within_r', '-')} | "
                         f"{p.get('self_median_miss_over_r', '-')} |")
        lines.append("")
    w = r.get("whole")
    if w:
        s = w["stages_s"]
        lines += [f"## The whole {w['rows']:,}-row bank", "", f"Machine: {w['machine']}.", "",
                  "| step | s |", "|---|---|",
                  f"| before: embed_2d, UMAP on a {w['fit_rows']:,}-row subsample (the other rows not on the map) | "
                  f"{w['before_embed_2d_s']} |",
                  f"| whole_map, all stages | {w['whole_map_s']} |",
                  f"| - row norms + the bank's fingerprint | {s.get('fingerprint')} |",
                  f"| - UMAP fit on the subsample | {s.get('fit')} |", f"| - PCA + k-means | {s.get('cluster_fit')} |",
                  f"| - placement + cluster assignment of every row | {s.get('place')} |",
                  f"| cache read, same bank object | {w['cache_read_same_bank_s']} |",
                  f"| cache read, bank freshly opened (+ fingerprint and row norms) | "
                  f"{w['cache_read_freshly_opened_bank_s']} |", "",
                  f"Cache file {w['cache_file_mb']} MB. Peak RSS added during whole_map: {w.get('peak_rss_added_mb')} "
                  f"MB over {w['rss_start_mb']} MB at the start (the memory-mapped bank's pages read count in RSS; "
                  f"anonymous memory added: {w['anon_added_mb']} MB). Placed rows' cluster accuracy (10 nearest "
                  f"fitted rows on the map): {w['placed_cluster_accuracy']}. {w['kmeans_clusters']} k-means clusters; "
                  f"a true cluster keeps {w['true_cluster_share_in_its_main_kmeans_cluster']:.1%} of its rows in one of them on "
                  f"average (the rest in {w['true_clusters_split_across_kmeans'] - 1:.2f} others). "
                  f"numba compilation ({w['umap_compile_s']} s, once per process) is in neither figure.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="bank rows (default 1,280,000; 150,000 with --choose)")
    parser.add_argument("--fit-rows", type=int, default=50_000)
    parser.add_argument("--eval-rows", type=int, default=10_000, help="rows placed and scored with --choose")
    parser.add_argument("--choose", action="store_true", help="measure placement methods instead of the whole map")
    args = parser.parse_args()
    args.rows = args.rows or (150_000 if args.choose else 1_280_000)
    path = RESULTS / "bank_map.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    if args.choose:  # one section per bank and fit size, so a small-fit run sits beside the default one
        report.setdefault("choose", {})[f"{args.rows} rows, fit {args.fit_rows}"] = choose(args)
    else:
        report["whole"] = whole(args)
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(path, (json.dumps(report, indent=1) + "\n").encode())
    notes = RESULTS / "bank_map_notes.md"
    write_bytes_atomic(RESULTS / "bank_map.md", (markdown(report) + (notes.read_text() if notes.is_file() else "")).encode())
    print(markdown(report))


if __name__ == "__main__":
    main()
