"""Build a memory bank from images: one row per image = the snippet encoder's feature, with labels and thumbnails.

Examples:
  gmem build-bank --images my_pictures/ --out my_bank.safetensors           # encoder of the default 'emoji-32'
  gmem build-bank --images twemoji --split all --out twemoji_all.safetensors
  gmem build-bank --images photos/ --checkpoint path/to/ckpt --thumb-size 64 --dtype float32 --out bank.safetensors

Labels come from the first sub-folder of each image (folder/cats/a.png -> "cats"). The bank works with every
model trained on the same encoder: pass it to the app, the notebooks or GMemPipeline.bank.
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
from gmem_explore.cli.checks import image_source, int_in, output_file

DTYPES = {"float16": "float16", "float32": "float32"}


def add_arguments(p):
    p.add_argument("--images", required=True, help="an image folder (its sub-folders become labels), or 'twemoji' / 'twemoji-skin' / 'digits' (required)")
    p.add_argument("--out", required=True, help="output bank, a .safetensors file (required; written whole or not at all)")
    p.add_argument("--checkpoint", default=None, help="checkpoint whose snippet encoder is used (default: 'emoji-32')")
    p.add_argument("--split", choices=["train", "held_out", "all"], default="all",
                   help="which part of the images (split by a hash of the name; default: all)")
    p.add_argument("--thumb-size", type=int_in(8, 256, "pixels"), default=32,
                   help="side of the stored thumbnails in pixels, 8 to 256 (default 32)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                   help="storage type of the rows (default float16: 2 bytes a number, half of float32's size)")


def build_bank(images: str, checkpoint=None, split="all", thumb_size=32):
    """A MemoryBank from a folder or a named dataset, with the checkpoint's encoder (bank.build.bank_from_images)."""
    from gmem_explore.bank.build import bank_from_images
    from gmem_explore.checkpoints.folder import load_checkpoint
    from gmem_explore.checkpoints.hub import resolve_checkpoint
    from gmem_explore.data import TWEMOJI_ATTRIBUTION, load_dataset

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    if ckpt.encoder is None:
        raise ValueError("that checkpoint has no snippet encoder; choose one that has (the default 'emoji-32' does)")
    data = load_dataset(images, thumb_size, split)
    if len(data) == 0:
        raise ValueError(f"no images in the {split!r} split of {images}; try --split all")
    meta = {"source": str(images), "split": split, "names": data.names, "encoder": ckpt.encoder.config_dict()}
    if images in ("twemoji", "twemoji-skin"):  # the named data sets, not a folder such as twemoji_fanart/
        meta["attribution"] = TWEMOJI_ATTRIBUTION
    return bank_from_images(ckpt.encoder, data, meta=meta)


def run(args) -> int:
    import torch

    image_source(args.images, "--images")  # before the encoder loads
    output_file(args.out, suffixes=(".safetensors",), kind="a bank")
    bank = build_bank(args.images, args.checkpoint, args.split, args.thumb_size)
    bank.save(args.out, dtype=getattr(torch, DTYPES[args.dtype]))
    print(f"wrote {args.out}: {len(bank)} rows of dimension {bank.dim}, labels {bank.label_names}")
    return 0
