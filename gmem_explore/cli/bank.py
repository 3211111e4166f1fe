"""Inspect and compress a memory bank: statistics, nearest rows, low-rank (SVD) compression with its error.

BANK is a checkpoint name or folder (its bank.safetensors is used) or a bank .safetensors file.

Examples:
  gmem bank stats gmem-v1-xl
  gmem bank nearest gmem-v1-xl --row 12345 --k 8
  gmem bank nearest path/to/folder --image photo.jpg --k 8      # needs the checkpoint's encoder
  gmem bank compress gmem-v1-xl --rank 64 --out bank-r64.safetensors
  gmem bank prepare gmem-v1-xl --figure map.png                 # index + whole-bank map cached ahead of the app
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import argparse
import json
import sys
from pathlib import Path

from gmem_explore.cli.checks import check_device, int_in, non_negative_int, output_file, positive_int


STATS = """Print statistics of a bank as JSON: rows, dimension, storage type and size; row norms and zero or
non-finite rows; the sampling frequencies (effective number of rows, share of the top 1%); cosine similarity
between rows, estimated on --sample random rows.

Example: gmem bank stats emoji-32"""

NEAREST = """For each query, print the --k bank rows of highest cosine similarity, best first, as 'row (similarity)'.
Query by bank rows (--row; a row is not its own neighbour) or by images (--image, encoded with the checkpoint's
snippet encoder).

Example: gmem bank nearest emoji-32 --row 3 17 --k 5"""

COMPRESS = """Approximate the L2-normalised rows by their mean plus a rank --rank SVD basis (N x rank + rank x D numbers
instead of N x D). Prints the relative Frobenius error and the mean cosine between each row and its
reconstruction (what the model sees, since it renormalises); --out writes the compressed bank.

Example: gmem bank compress emoji-32 --rank 64 --out bank-r64.safetensors"""


PREPARE = """Compute once, ahead of the app and the notebooks, what a large bank needs before it answers at once: the
search index (banks of 100,000 rows or more; about 71 s for 1.28M rows on 2 cores) and the 2-D map of every row
with its k-means clusters (about 2 minutes for 1.28M rows: a UMAP fit on --fit-rows rows, the rest placed beside
their nearest fitted rows). Both are cached under $GMEM_CACHE (or ~/.cache/gmem-explore) keyed by the bank's
content, where the app and bank_scatter find them; a second run reads them in under a second. Prints what it did
as JSON; --figure also draws the map (every row; coloured by cluster where there are at most 20) to a PNG.

Example: gmem bank prepare gmem-v1-xl --figure map.png"""


def add_arguments(p):
    raw = argparse.RawDescriptionHelpFormatter  # keeps the line breaks above, as in the other commands' help
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("stats", help="size, norms, frequencies, similarity of rows (JSON)",
                       description=STATS, formatter_class=raw)
    s.add_argument("bank", metavar="BANK", help="checkpoint name / folder or bank .safetensors")
    s.add_argument("--sample", type=int_in(2, unit="rows"), default=4096,
                   help="rows sampled for the pairwise-similarity estimate, at least 2 (default 4096; all rows when "
                        "the bank has fewer)")
    n = sub.add_parser("nearest", help="the k most similar rows (cosine) to a row or to an image",
                       description=NEAREST, formatter_class=raw)
    n.add_argument("bank", metavar="BANK", help="checkpoint name / folder or bank .safetensors")
    n.add_argument("--row", type=non_negative_int, nargs="+", default=None, metavar="ROW",
                   help="query rows, bank indices from 0 (default: none; give --row or --image)")
    n.add_argument("--image", nargs="+", default=None, metavar="FILE",
                   help="query image files, encoded with the checkpoint's snippet encoder (default: none)")
    n.add_argument("--k", type=positive_int, default=8,
                   help="neighbours printed per query, at most the bank's rows - 1 (default 8)")
    n.add_argument("--device", default="cpu",
                   help="torch device of the search, cpu, cuda, cuda:N or mps: the bank streams through it in chunks "
                        "(default cpu)")
    c = sub.add_parser("compress", help="low-rank (SVD) compression; reports relative error and mean cosine",
                       description=COMPRESS, formatter_class=raw)
    c.add_argument("bank", metavar="BANK", help="checkpoint name / folder or bank .safetensors")
    c.add_argument("--rank", type=positive_int, default=64,
                   help="kept rank, 1 to the rows' dimension (default 64, what the v2 code keeps)")
    c.add_argument("--out", default=None,
                   help="write the compressed bank to this .safetensors file (default: only report)")
    c.add_argument("--device", default="cpu", help="torch device of the SVD: cpu, cuda, cuda:N or mps (default cpu)")
    m = sub.add_parser("prepare", help="build and cache the search index and the whole-bank map ahead of the app",
                       description=PREPARE, formatter_class=raw)
    m.add_argument("bank", metavar="BANK", help="checkpoint name / folder or bank .safetensors")
    m.add_argument("--map", choices=("umap", "pca"), default="umap",
                   help="the map's method, the app's default (default umap; pca: seconds, not minutes)")
    m.add_argument("--fit-rows", type=int_in(32, unit="rows"), default=50_000,
                   help="rows the map is fitted on, at least 32 (default 50,000, what the app uses)")
    m.add_argument("--no-index", action="store_true", help="skip the search index (default: build it where the "
                                                             "bank has 100,000 rows or more)")
    m.add_argument("--figure", default=None, metavar="PNG", help="also draw the map to this PNG file (default: none)")
    for q in (s, n, c, m):
        q.add_argument("--revision", default=None, help="Hub revision of a named checkpoint (default: main)")


def open_bank(spec: str, revision=None):
    from gmem_explore.bank.memory import MemoryBank

    path = Path(spec).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such bank file; give a bank .safetensors file, a checkpoint folder "
                                    f"or a checkpoint name (emoji-32, gmem-v1-xl)")
        return MemoryBank.load(path), None
    from gmem_explore.checkpoints.hub import resolve_checkpoint

    folder = resolve_checkpoint(spec, **({"revision": revision} if revision else {}))
    return MemoryBank.load(Path(folder) / "bank.safetensors"), folder


def run(args) -> int:
    from gmem_explore.bank import lowrank
    from gmem_explore.bank.search import nearest
    from gmem_explore.bank.stats import statistics

    if getattr(args, "out", None):  # before the bank is read and the SVD runs
        output_file(args.out, suffixes=(".safetensors",), kind="a compressed bank")
    if getattr(args, "figure", None):  # before minutes of work, not after
        output_file(args.figure, suffixes=(".png",), kind="a map figure")
    if getattr(args, "device", None):
        check_device(args.device)
    for image in getattr(args, "image", None) or []:
        if Path(image).expanduser().is_dir():
            raise ValueError(f"--image {image} is a folder; give image files (e.g. {Path(image) / '*.png'})")
    bank, folder = open_bank(args.bank, args.revision)
    if args.action == "stats":
        print(json.dumps(statistics(bank, sample=args.sample), indent=1))
    elif args.action == "prepare":
        print(json.dumps(prepare(bank, args), indent=1))
    elif args.action == "nearest":
        if bool(args.row) == bool(args.image):
            raise ValueError("give query rows (--row) or query images (--image), one of the two")
        if args.row:
            queries, labels = args.row, [f"row {r}" for r in args.row]
        else:
            if folder is None:
                raise ValueError("--image needs a checkpoint (name or folder) whose config names a snippet encoder")
            from gmem_explore.checkpoints.folder import load_encoder

            encoder = load_encoder(folder)
            if encoder is None:
                raise ValueError(f"{folder} has no snippet encoder; query by --row instead")
            # the files as they are: each encoder prepares them its own way (v2's DINOv2 crops from the whole
            # picture; the others resize as load_batch at their image_size, as before)
            queries = encoder.encode(list(args.image))
            labels = list(args.image)
        idx, sims = nearest(bank, queries, k=args.k, device=args.device)
        for label, i, s in zip(labels, idx.tolist(), sims.tolist()):
            print(f"{label}: " + ", ".join(f"{a} ({b:.3f})" for a, b in zip(i, s)))
        if idx.shape[1] < min(args.k, len(bank) - bool(args.row)):  # broken rows were left out
            print(f"(fewer than --k {args.k}: rows with NaN or infinite values are never neighbours; `gmem bank "
                  f"stats` counts them as nonfinite_rows)", file=sys.stderr)
    else:
        low = lowrank.compress(bank, rank=args.rank, device=args.device)
        print(json.dumps(low.report, indent=1))
        if args.out:
            low.save(args.out)
            print(f"wrote {args.out}")
    return 0


def prepare(bank, args) -> dict:
    """The index (where the bank is large enough and faiss is installed) and the whole-bank map, cached."""
    import time

    from gmem_explore.bank import index as row_index
    from gmem_explore.bank.search import nearest
    from gmem_explore.bank.whole_map import whole_map

    report = {"rows": len(bank)}
    options = row_index.IndexOptions()
    if args.no_index:
        report["index"] = "skipped (--no-index)"
    elif len(bank) < options.min_rows:
        report["index"] = f"not needed: {len(bank):,} rows are searched exactly in milliseconds (an index from " \
                          f"{options.min_rows:,} rows)"
    elif not row_index.available():
        report["index"] = "not built: faiss-cpu is not installed (pip install faiss-cpu); searches are exact"
    else:
        t = time.perf_counter()
        import torch

        # any query builds (or reads) the index and keeps it for this bank; a snippet, not row 0, which may be broken
        nearest(bank, torch.ones(1, bank.dim), k=1)
        report["index"] = f"ready in {time.perf_counter() - t:.1f} s"
    t = time.perf_counter()
    found = whole_map(bank, args.map, fit_rows=args.fit_rows)
    report["map"] = {"method": found.method, "rows_on_map": int(found.coords.isfinite().all(dim=1).sum()),
                     "clusters": int(found.cluster.max()) + 1, "seconds": round(time.perf_counter() - t, 1),
                     "stages": found.seconds}
    if args.figure:
        from gmem_explore.bank.map2d import scatter_figure
        from gmem_explore.safefiles import atomic_path

        on = found.coords.isfinite().all(dim=1)
        fig = scatter_figure(found.coords[on], color_by=None if report["map"]["clusters"] > 20 else found.cluster[on],
                             title=f"{found.method.upper()} map of {int(on.sum()):,} rows, "
                                   f"{report['map']['clusters']} clusters")
        with atomic_path(args.figure) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        report["figure"] = args.figure
    return report
