"""Make docs/images/bank_map.png: the UMAP map of a checkpoint's bank, coloured by group, with a strip of
thumbnails from three groups under it (the picture in the README's notebooks section).

    python scripts/readme_bank_map.py                       # the embedded default emoji-32
    python scripts/readme_bank_map.py --checkpoint FOLDER --method pca --out /tmp/map.png
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from gmem_explore.bank.memory import MemoryBank  # noqa: E402
from gmem_explore.bank.map2d import embed_2d, scatter_figure  # noqa: E402
from gmem_explore.checkpoints.hub import resolve_checkpoint  # noqa: E402
from gmem_explore.notebook.helpers import labelled_grid  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402


def main() -> None:
    # the whole docstring, line breaks kept: its first line alone stops mid-sentence, and the examples help
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or folder (default: emoji-32)")
    parser.add_argument("--method", default="umap", choices=["umap", "pca"],
                        help="2-D projection of the bank rows (default umap; pca is much faster)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "bank_map.png",
                        help="PNG to write (default: docs/images/bank_map.png, the README's picture)")
    args = parser.parse_args()

    bank = MemoryBank.load(resolve_checkpoint(args.checkpoint) / "bank.safetensors")
    coords, rows = embed_2d(bank, method=args.method, return_indices=True)
    colour = bank.labels[rows] if bank.labels is not None else None
    fig = scatter_figure(coords, colour, bank.label_names, title=f"{len(bank):,} bank rows ({args.method.upper()})",
                         size=(6.4, 4.8))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    picture = Image.open(buf).convert("RGB")
    if bank.thumbnails is not None and bank.labels is not None:
        picks = [int(i) for g in range(min(3, len(bank.label_names or []))) for i in (bank.labels == g).nonzero()[:8, 0]]
        titles = [(bank.label_of(i) or "")[:10] for i in picks]
        strip = labelled_grid(bank.thumbnails[picks], titles, ncols=8, cell=64)
        strip = strip.resize((picture.width, round(strip.height * picture.width / strip.width)), Image.NEAREST)
        canvas = Image.new("RGB", (picture.width, picture.height + strip.height), "white")
        canvas.paste(picture, (0, 0))
        canvas.paste(strip, (0, picture.height))
        picture = canvas
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, out.getvalue())
    print(f"wrote {args.out} ({len(out.getvalue()) // 1024} KB)")


if __name__ == "__main__":
    main()
