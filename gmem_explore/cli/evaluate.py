"""Measure generated images against real ones: FD, precision / recall and near copies in the snippet encoder's space.

Samples are generated here (--samples N, seeds --seed .. --seed + N - 1) or read (--images: a folder of images or
the .npz of `gmem sample-fid`). The references are --data (an image folder, 'twemoji', 'twemoji-skin' or 'digits')
or, without it, the checkpoint bank's thumbnails: for `gmem train` checkpoints and emoji-32 those are the training
images. Features come from the checkpoint's snippet encoder (emoji-32: its small conv encoder; gmem-v1-xl:
DINOv2-B/14's CLS token, so FD is a DINOv2 FD, not FID, and not Stein et al.'s FD_DINOv2 either, which uses
ViT-L/14: for FID run the ADM evaluator on sample-fid's .npz).

FD depends on the number of images on both sides (it is biased upwards by small sets), so it comes with
references at matching sizes: the references copied (as many reference images as samples, drawn with repeats,
against all references: what returning the references unchanged scores; for the bank's thumbnails, the training
images), and on a random split of the references into m = min(samples, references // 2) and the rest, m samples
against the rest beside m new real images against the rest (each the mean and sd of 5 draws). Compare FD between
runs only at the same --samples and references. "near copies" is the share of samples at cosine >= 0.95 to a
real image. The draws and subsets are seeded with --seed.

--out DIR writes report.json, samples.png (the first 64) and nearest.png (16 random samples, each beside the real
image nearest to it).

Examples:
  gmem evaluate                                          # emoji-32, 1000 samples against its 1,697 training emojis
  gmem evaluate --checkpoint my-model --data my_pictures --out eval/   # a fine-tuned model against its pictures
  gmem evaluate --checkpoint my-model --data my_pictures --split held_out  # after gmem train --split train
  gmem evaluate --checkpoint gmem-v1-xl --images samples/gmem-xl.npz --data imagenet/val --device cuda --out eval-xl/
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import json
import warnings
import zipfile
from pathlib import Path

from gmem_explore.cli.checks import SAMPLER_METHODS, check_device, non_negative_int, output_folder, positive_int

DEFAULT_SAMPLES = 1000
ENCODE_CHUNK = 1000  # images per encoder call: a progress bar that moves, and bounded memory for 50,000 images


def add_arguments(p):
    p.add_argument("--checkpoint", default=None, help="checkpoint name, folder or released .pth file (default: the embedded 'emoji-32')")
    p.add_argument("--images", default=None,
                   help="evaluate these images instead of generating: a folder of images or an .npz (arr_0: uint8 "
                        "N x H x W x 3, as `gmem sample-fid` writes)")
    p.add_argument("--data", default=None,
                   help="reference images: a folder, 'twemoji', 'twemoji-skin' or 'digits' (default: the bank's "
                        "thumbnails, the training images of emoji-32 and of `gmem train` checkpoints)")
    p.add_argument("--split", choices=["train", "held_out", "all"], default=None,
                   help="which --data images to compare with (held_out: the ~10%% that `gmem train --split train` "
                        "leaves out; default all)")
    p.add_argument("--samples", type=int, default=None,
                   help="images to generate, more than 3 (default 1000; refused with --images, which are all measured)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the first generated image, and of the measures' random draws and subsets, 0 or more "
                        "(default 0)")
    p.add_argument("--method", choices=SAMPLER_METHODS, default=None, help="sampler (default: the checkpoint's, heun for emoji-32)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps, 1 to 5000 (default: the checkpoint's, 8 for emoji-32)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale, 0 or more (default 1: none)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                   help="guide only at times t in [LOW, HIGH] (t = 1 noise, 0 data; default 0 1: every step), as "
                        "sample-fid's --guidance-interval")
    p.add_argument("--choose", choices=["noise", "frequency", "uniform"], default=None,
                   help="how bank rows are picked (default: the checkpoint's rule, noise (by frequency from the "
                        "initial noise) for v1 and the embedded models, uniform for v2)")
    p.add_argument("--batch-size", type=positive_int, default=250,
                   help="images per sampler batch (default 250; refused with --images)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--out", default=None, help="folder for report.json, samples.png and nearest.png (created; default: print only)")


def npz_images(path):
    """arr_0 of an .npz, or None when it has none. Memory-mapped when stored uncompressed, as `gmem sample-fid`
    writes it: 50,000 images of 256 px are 9.8 GB, read a chunk at a time by the encoder, never held whole."""
    import numpy as np

    with zipfile.ZipFile(path) as zf:
        info = next((i for i in zf.infolist() if i.filename == "arr_0.npy"), None)
        if info is None:
            return None
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)  # the local file header: its name and extra field lengths end it
                if local[:4] != b"PK\x03\x04":
                    raise ValueError("damaged zip entry")
                f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                       + int.from_bytes(local[28:30], "little"))
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                shape, fortran, dtype = read_header(f) if read_header else ((), True, None)
                if read_header and not fortran and not dtype.hasobject:
                    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape)
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)


def read_images(path):
    """uint8 (N, H, W, 3) from an .npz (arr_0) or a folder of images (all must have one size)."""
    import numpy as np
    import torch

    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".npz":
        try:
            images = npz_images(path)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"--images {path} is not a readable .npz ({e})") from None
        if images is None:
            raise ValueError(f"--images {path} holds no arr_0 (uint8 N x H x W x 3, the layout `gmem sample-fid` "
                             f"and the ADM evaluator use)")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"--images {path}: arr_0 must be uint8 N x H x W x 3; got {images.dtype} {images.shape}")
        with warnings.catch_warnings():  # read-only memory map: the images are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(images)
    if path.is_dir():  # one tensor, filled image by image; sample-fid's .npz beside the folder is not even copied
        from gmem_explore.data import image_files, read_image_files

        return read_image_files(image_files(path))
    if path.is_file():
        raise ValueError(f"--images {path}: not an .npz file; give a folder of images or the .npz of "
                         f"`gmem sample-fid` (arr_0: uint8 N x H x W x 3)")
    raise FileNotFoundError(f"--images {path}: no such folder or .npz file")


def reference_thumbnails(args, folder, bank=None):
    """The bank's thumbnails when there is no --data (None with --data, after checking it names something).
    `bank`: the loaded pipeline's, else the folder's bank file is read alone (not the network's gigabytes)."""
    from gmem_explore.bank.memory import MemoryBank
    from gmem_explore.data import DATASET_NAMES

    if args.data is not None:
        if args.data not in DATASET_NAMES and not Path(args.data).expanduser().is_dir():
            raise FileNotFoundError(f"--data {args.data}: no such folder (or give one of {', '.join(DATASET_NAMES)})")
        return None
    if args.split is not None:
        raise ValueError("--split chooses among --data images; give --data too (the bank's thumbnails have no split)")
    bank = bank if bank is not None else MemoryBank.load(Path(folder) / "bank.safetensors")
    thumbnails = bank.column("thumbnails")  # read as stored: bank.thumbnails copies a shared bank's for good
    if thumbnails is None:
        raise ValueError("this checkpoint's bank holds no thumbnails to compare with: give --data, a folder of "
                         "real images (for gmem-v1-xl, e.g. ImageNet validation images)")
    return thumbnails[:]


def enough(images, what: str) -> None:
    """Refuse too few images before any is encoded: evaluation.compare would, but only after the other set's encoding
    (50,000 ImageNet references through DINOv2: most of an hour)."""
    from gmem_explore.evaluation.compare import PR_K

    if len(images) <= PR_K:
        raise ValueError(f"{what}: {len(images)} image{'' if len(images) == 1 else 's'}, too few to compare; give at "
                         f"least {PR_K + 1} (FD and precision / recall need a few hundred to mean much)")


def encode(encoder, images, what: str):
    import torch
    from tqdm.auto import tqdm

    chunks = torch.as_tensor(images).split(ENCODE_CHUNK)
    return torch.cat([encoder.encode(chunk) for chunk in tqdm(chunks, desc=f"encoding {what}", unit="chunk",
                                                                disable=len(chunks) < 2)])


def run(args) -> int:
    from gmem_explore.checkpoints.folder import load_checkpoint, load_encoder
    from gmem_explore.evaluation.compare import PR_K, compare, summary
    from gmem_explore.checkpoints.hub import resolve_checkpoint
    from gmem_explore.sampling import check_guidance, check_method_and_steps

    # --samples too: with --images every image is measured, and a --samples 500 that silently measured 50,000
    sampling = {"--samples": args.samples is not None, "--method": args.method is not None,
                "--steps": args.steps is not None, "--guidance": args.guidance != 1.0,
                "--guidance-interval": tuple(args.guidance_interval) != (0.0, 1.0),
                "--choose": args.choose is not None, "--batch-size": args.batch_size != 250}
    if args.images is not None and any(sampling.values()):  # said, not silently ignored
        raise ValueError(f"--images evaluates images already made, so {', '.join(k for k, v in sampling.items() if v)} "
                         f"would change nothing: drop them, or drop --images to generate with them")
    count = DEFAULT_SAMPLES if args.samples is None else args.samples
    if args.images is None and count <= PR_K:
        raise ValueError(f"--samples must be more than {PR_K} (a few hundred for a meaningful FD); got {count}")
    check_guidance(args.guidance, args.guidance_interval)
    if args.out:  # the report is written at the very end: an unwritable --out must not cost the sampling
        output_folder(args.out)
    check_device(args.device)
    if args.steps is not None:
        check_method_and_steps(args.method or "sde", args.steps)
    folder = resolve_checkpoint(args.checkpoint)
    encoder = load_encoder(folder)
    if encoder is None:
        raise ValueError(f"{folder} has no snippet encoder, and the measures live in its feature space; evaluate a "
                         f"checkpoint that has one (emoji-32, gmem-v1-xl, or one `gmem train` wrote)")
    encoder = encoder.to(args.device)  # DINOv2 on 50,000 images wants the GPU as much as the sampler does
    pipe = None
    if args.images is None:
        from gmem_explore import GMemPipeline

        pipe = GMemPipeline.from_checkpoint(load_checkpoint(folder, device=args.device), device=args.device)
    # before minutes of sampling: a missing reference fails now (the bank is read once: the pipeline's, if any)
    thumbnails = reference_thumbnails(args, folder, pipe.bank if pipe is not None else None)
    # the measures' seed: with --images nothing else records it, and fd_copies / fd_split / fd_floor depend on it
    record = {"checkpoint": str(args.checkpoint or "emoji-32"), "seed": args.seed}
    if pipe is None:
        samples = read_images(args.images)
        enough(samples, f"--images {args.images}")
        record["images"] = str(args.images)
    else:
        out = pipe.generate(count, seeds=args.seed, choose=args.choose, method=args.method, steps=args.steps,
                            guidance=args.guidance, guidance_interval=tuple(args.guidance_interval),
                            batch_size=args.batch_size, progress=True)
        samples = out.images
        record["generated"] = {"seeds": [out.seeds[0], out.seeds[-1]], **out.settings}
    if thumbnails is None:
        from gmem_explore.data import load_dataset

        split = args.split or "all"
        reference = load_dataset(args.data, samples.shape[1], split).images  # at the samples' size
        record["reference"] = f"{args.data} ({split})"
    else:
        reference = thumbnails
        record["reference"] = "the bank's thumbnails"
    enough(reference, "the reference images" if thumbnails is None else "the bank's thumbnails")
    features = encode(encoder, samples, "samples"), encode(encoder, reference, "references")
    report = {**record, **compare(*features, seed=args.seed)}
    print(summary(report))
    if args.out:
        write_report(Path(args.out), report, samples, reference, features)
    else:
        print("(add --out DIR for report.json and two pictures: samples, and samples beside their nearest real image)")
    return 0


def write_report(folder: Path, report: dict, samples, reference, features) -> None:
    from gmem_explore.evaluation.compare import nearest_pairs
    from gmem_explore.safefiles import atomic_path, write_bytes_atomic
    from gmem_explore.viz import image_grid

    folder.mkdir(parents=True, exist_ok=True)
    scale = max(1, 96 // samples.shape[1])  # emoji-32's 32 px images at 3x: small pictures are hard to judge
    pairs = nearest_pairs(samples, reference, *features, count=16)
    for name, grid in (("samples.png", image_grid(samples[:64], nrow=8, scale=scale)),
                       ("nearest.png", image_grid(pairs, nrow=4, pad=8, scale=scale))):
        with atomic_path(folder / name) as tmp:
            grid.save(tmp, format="PNG")
    write_bytes_atomic(folder / "report.json", json.dumps(report, indent=1).encode())
    print(f"wrote {folder / 'report.json'}, {folder / 'samples.png'} and {folder / 'nearest.png'}")
