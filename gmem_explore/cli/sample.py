"""Generate images from a checkpoint and write them as one grid PNG (plus the seeds and rows used).

Examples:
  gmem sample --out grid.png                      # 16 images from the embedded default 'emoji-32'
  gmem sample --rows 3 17 42 --seed 0 --out rows.png
  gmem sample --checkpoint path/to/folder --method sde --steps 250 --n 8
  gmem sample --checkpoint gmem-v1-xl --revision COMMIT --device cuda --n 8   # a pinned Hub version
  gmem sample --bank emoji-32-bank-edited.safetensors --rows 1697 --out mine.png   # a bank downloaded from the app
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import json
from pathlib import Path

from gmem_explore.cli.checks import (SAMPLER_METHODS, check_device, int_in, non_negative_int, output_file,
                                     positive_int)

MAX_SCALE = 32  # a 4 x 4 grid of 256 px images at 32x is 32768 px a side (3 GB): more is a typo
# the default --scale shows each image at least this wide: emoji-32's images at 1x made a 138 px grid of 16 that an
# image viewer shows as a stamp; 128 px is 4x for 32 px models, 2x for 64 px, 1x for 256 px (gmem-v1-xl)
READABLE_PX = 128


def add_arguments(p):
    p.add_argument("--checkpoint", default=None, help="checkpoint name, folder or released .pth file (default: the embedded 'emoji-32')")
    p.add_argument("--revision", default=None,
                   help="Hub revision (branch, tag or commit) of a named checkpoint such as gmem-v1-xl (default: main)")
    p.add_argument("--bank", default=None, metavar="FILE",
                   help="a bank file (.safetensors) to draw snippets from instead of the checkpoint's own, such as the "
                        "edited bank the app's Swap tab downloads; its snippets must have the model's width "
                        "(default: the checkpoint's bank)")
    p.add_argument("--n", type=positive_int, default=16, help="number of images, 1 or more (default 16; ignored with --rows)")
    p.add_argument("--rows", type=int, nargs="+", metavar="ROW",
                   help="bank rows (0 to the bank's size - 1) to generate from, one image each (default: none, "
                        "rows are picked by --choose)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the first image, 0 or more; image i uses seed + i (default 0)")
    p.add_argument("--method", choices=SAMPLER_METHODS, default=None, help="sampler (default: the checkpoint's, heun for emoji-32)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps, 1 to 5000 (default: the checkpoint's, 8 for emoji-32)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 0 or more; 1 is none (default: the checkpoint's recipe, "
                        "1 for the embedded models and gmem-v1-xl)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="guide only at times t in [LOW, HIGH] (t = 1 noise, 0 data; default: the checkpoint's, "
                        "0 1 = every step)")
    p.add_argument("--time-shift", type=float, default=None,
                   help="shift of an ODE sampler's time grid (euler, heun), > 0; 1 is none (default: the "
                        "checkpoint's; GMem v2's ODE recipe uses 0.3)")
    p.add_argument("--choose", choices=["noise", "frequency", "uniform"], default=None,
                   help="how rows are picked without --rows (default: the checkpoint's rule, noise (by frequency from "
                        "the initial noise) for v1 and the embedded models, uniform for v2)")
    p.add_argument("--scale", type=int_in(1, MAX_SCALE), default=None,
                   help=f"upscale the grid by this whole factor, 1 to {MAX_SCALE} (nearest neighbour; 1: the model's "
                        f"own pixels; default: the smallest that shows each image {READABLE_PX} px or more, 4 for "
                        f"emoji-32, 1 for 256 px models)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--out", default="samples.png",
                   help="output image file, .png (lossless), .jpg or .webp (default samples.png); a .json with the seeds "
                        "and rows is written beside it")


def image_format(path: Path) -> str:
    """PIL's format name for the file's extension, checked before sampling so a typo costs no generation."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"--out {path}: cannot write images of type {path.suffix or '(no extension)'!r}; "
                         f"end the name in .png (lossless), .jpg or .webp")
    return fmt


def readable_scale(width: int) -> int:
    """The default --scale: the smallest whole factor that shows an image `width` px wide at READABLE_PX or more."""
    return max(1, min(MAX_SCALE, -(-READABLE_PX // width)))


def sample_with_bar(events):
    """The Generation at the end of a pipeline's event stream, under a tqdm bar of images with the sampler step."""
    from tqdm.auto import tqdm

    from gmem_explore.events import Finished

    bar = None
    try:
        for event in events:
            if isinstance(event, Finished):
                return event.generation
            if bar is None:
                bar = tqdm(total=event.images_total, desc="sampling", unit="image")
            bar.n = round(event.images_done, 2)
            bar.set_postfix_str(f"step {event.step}/{event.total}", refresh=False)
            bar.refresh()
    finally:
        events.close()  # Ctrl-C stops the sampler after the step under way
        if bar is not None:
            bar.close()
    raise RuntimeError("the generation ended without its images")


def run(args) -> int:
    from gmem_explore import GMemPipeline
    from gmem_explore.safefiles import atomic_path, write_bytes_atomic
    from gmem_explore.sampling import check_guidance, check_method_and_steps

    path = Path(args.out)
    fmt = image_format(path)
    output_file(path, example="samples.png")  # before the model loads and samples: a typo should not cost a load and a progress bar
    if args.guidance is not None or args.guidance_interval is not None:
        check_guidance(1.0 if args.guidance is None else args.guidance, args.guidance_interval or (0.0, 1.0))
    if args.steps is not None:
        check_method_and_steps(args.method or "sde", args.steps)
    check_device(args.device)
    bank = None if args.bank is None else Path(args.bank).expanduser()
    if bank is not None and not bank.is_file():  # before the model loads
        raise ValueError(f"--bank {args.bank}: no such file; give a .safetensors bank, such as the one the app's Swap "
                         f"tab downloads (\"Download the bank\")")
    # resolve_checkpoint refuses a --revision for the embedded model or a folder (they have none) before a load
    pipe = GMemPipeline.from_pretrained(args.checkpoint, device=args.device, revision=args.revision)
    if bank is not None:
        try:
            pipe = pipe.with_bank(bank)
        except (ValueError, OSError) as e:
            raise ValueError(f"--bank {args.bank}: {e}") from None
    count = len(args.rows) if args.rows else args.n
    events = pipe.generate_iter(None if args.rows else args.n, indices=args.rows or None,
                                seeds=[args.seed + i for i in range(count)], choose=args.choose, method=args.method,
                                steps=args.steps, guidance=args.guidance, time_shift=args.time_shift,
                                guidance_interval=None if args.guidance_interval is None else tuple(args.guidance_interval))
    out = sample_with_bar(events)
    with atomic_path(path) as tmp:  # an existing grid is replaced whole or kept, never left half-written
        out.grid(scale=args.scale or readable_scale(out.images.shape[2])).save(tmp, format=fmt)
    record = {"seeds": out.seeds, "rows": out.indices, **out.settings, **({"bank": str(bank)} if bank else {}),
              **({"revision": args.revision} if args.revision else {})}
    write_bytes_atomic(path.with_suffix(".json"), json.dumps(record, indent=1).encode())
    print(f"wrote {path} ({len(out)} images) and {path.with_suffix('.json')}")
    return 0
