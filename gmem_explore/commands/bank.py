"""Inspect and compress a memory bank: statistics, nearest rows, low-rank (SVD) compression with its error.

BANK is a checkpoint name or folder (its bank.safetensors is used) or a bank .safetensors file.

Examples:
  gmem bank stats gmem-v1-xl
  gmem bank nearest gmem-v1-xl --row 12345 --k 8
  gmem bank nearest path/to/folder --image photo.jpg --k 8      # needs the checkpoint's encoder
  gmem bank compress gmem-v1-xl --rank 64 --out bank-r64.safetensors
"""
from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("stats", help="size, norms, frequencies, similarity of rows")
    s.add_argument("bank", help="checkpoint name / folder or bank .safetensors")
    s.add_argument("--sample", type=int, default=4096, help="rows sampled for the pairwise-similarity estimate")
    n = sub.add_parser("nearest", help="the k most similar rows (cosine) to a row or to an image")
    n.add_argument("bank", help="checkpoint name / folder or bank .safetensors")
    n.add_argument("--row", type=int, nargs="*", default=None, help="query rows")
    n.add_argument("--image", nargs="*", default=None, help="query images (encoded with the checkpoint's encoder)")
    n.add_argument("--k", type=int, default=8)
    n.add_argument("--device", default="cpu")
    c = sub.add_parser("compress", help="low-rank (SVD) compression; reports relative error and mean cosine")
    c.add_argument("bank", help="checkpoint name / folder or bank .safetensors")
    c.add_argument("--rank", type=int, default=64, help="kept rank (the v2 code keeps 64)")
    c.add_argument("--out", default=None, help="write the compressed bank here (.safetensors)")
    c.add_argument("--device", default="cpu")
    for q in (s, n, c):
        q.add_argument("--revision", default=None, help="Hub revision of a named checkpoint")


def open_bank(spec: str, revision=None):
    from gmem_explore.bank import MemoryBank

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return MemoryBank.load(path), None
    from gmem_explore.hub import resolve_checkpoint

    folder = resolve_checkpoint(spec, **({"revision": revision} if revision else {}))
    return MemoryBank.load(Path(folder) / "bank.safetensors"), folder


def run(args) -> int:
    from gmem_explore import bank_tools

    bank, folder = open_bank(args.bank, args.revision)
    if args.action == "stats":
        print(json.dumps(bank_tools.statistics(bank, sample=args.sample), indent=1))
    elif args.action == "nearest":
        if bool(args.row) == bool(args.image):
            raise ValueError("give query rows (--row) or query images (--image), one of the two")
        if args.row:
            queries, labels = args.row, [f"row {r}" for r in args.row]
        else:
            if folder is None:
                raise ValueError("--image needs a checkpoint (name or folder) whose config names a snippet encoder")
            from gmem_explore.checkpoint import load_encoder

            encoder = load_encoder(folder)
            if encoder is None:
                raise ValueError(f"{folder} has no snippet encoder; query by --row instead")
            from gmem_explore.images import load_batch

            queries = encoder.encode(load_batch(args.image, getattr(encoder, "image_size", 224)))
            labels = list(args.image)
        idx, sims = bank_tools.nearest_rows(bank, queries, k=args.k, device=args.device)
        for label, i, s in zip(labels, idx.tolist(), sims.tolist()):
            print(f"{label}: " + ", ".join(f"{a} ({b:.3f})" for a, b in zip(i, s)))
    else:
        low = bank_tools.compress(bank, rank=args.rank, device=args.device)
        print(json.dumps(low.report, indent=1))
        if args.out:
            low.save(args.out)
            print(f"wrote {args.out}")
    return 0
