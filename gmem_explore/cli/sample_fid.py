"""Sample many images for FID (PNGs + the ADM evaluator's .npz), on one process or many; resumable.

Defaults are the released GMem v1 recipe: checkpoint gmem-v1-xl, 250-step SDE, rows chosen from the noise by
frequency (each checkpoint's own rule: v2's are drawn uniformly), no guidance, 50,000 images, seeds 0..49999
(image i uses seed --seed + i). Images go to OUT/<seed>.png (six digits: OUT/000042.png); a restart skips finished
seeds; OUT.npz (arr_0: uint8 N x H x W x 3, 256 x 256 for gmem-v1-xl, in seed order: what the ADM evaluator reads)
is written at the end. OUT/run.json records the settings, the bank's precision, the Hub revision and a fingerprint
of the checkpoint's files: a restart with other settings, another --revision or --bank-dtype, or retrained weights is
refused, not mixed in.

Examples:
  # the released scripts/sample-gmem-xl.sh: 8 GPUs x 64 images per batch, 50,000 samples, 250-step SDE
  torchrun --nproc_per_node 8 -m gmem_explore sample-fid --out samples/gmem-xl --batch-size 64
  # one GPU (same images, 8x longer)
  gmem sample-fid --out samples/gmem-xl --batch-size 64
  # accelerate works too
  accelerate launch --num_processes 8 -m gmem_explore sample-fid --out samples/gmem-xl
  # a local copy of the released file, no network
  gmem sample-fid --checkpoint ~/GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth --out samples/gmem-xl
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
from gmem_explore.cli.checks import (SAMPLER_METHODS, check_device, non_negative_int, output_file, output_folder,
                                     positive_int)


def add_arguments(p):
    p.add_argument("--checkpoint", default="gmem-v1-xl",
                   help="checkpoint name, folder or released .pth file (default: gmem-v1-xl, the released model)")
    p.add_argument("--revision", default=None,
                   help="Hub revision (branch, tag or commit) of a named checkpoint such as gmem-v1-xl (default: main; "
                        "refused for a local folder or file, which has none)")
    p.add_argument("--bank-dtype", choices=["fp16", "fp32"], default=None,
                   help="bank precision when converting the released .pth (default fp16: halves the 1.97 GB bank); a "
                        "converted folder keeps its own, and another value for it is refused")
    p.add_argument("--out", required=True, help="folder for the PNGs, one per image as OUT/000042.png (required; created; reused to resume)")
    # not "--num": torchrun would read it as an abbreviation of its own --numa-binding
    p.add_argument("--num-fid-samples", type=positive_int, default=50_000, dest="num",
                   help="number of images, 1 or more (default 50000, as for FID-50K)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of image 0, 0 or more; image i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch on each process; lower it when the GPU runs out of memory (default 64)")
    p.add_argument("--method", choices=SAMPLER_METHODS, default=None, help="sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps, 1 to 5000 (default: the checkpoint's, 250 for gmem-v1-xl)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale, 0 or more (default 1: none; the all-zero snippet is the "
                        "unconditional)")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                   help="guide only at times t in [LOW, HIGH] (t = 1 noise, 0 data; default 0 1: every step)")
    p.add_argument("--choose", choices=["noise", "frequency", "uniform"], default=None,
                   help="how bank rows are picked (default: the checkpoint's rule, noise (by frequency from the "
                        "initial noise) for gmem-v1-xl and the embedded models, uniform for v2, as upstream's "
                        "randint; the rule used is recorded in OUT/run.json)")
    p.add_argument("--precision", choices=["tf32", "fp32", "bf16", "fp8"], default="tf32",
                   help="arithmetic of the network (default tf32: the released sampler, fp32 weights with TF32 "
                        "matmuls, the reference's setting; fp32: the same with strict fp32 matmuls; bf16: the fast "
                        "path on a GPU, about 3.6x faster, images not bit-identical; fp8: the fast path with FP8 products, 4.6x "
                        "faster on an H100 but up to 8%% off on a trained model, not for reported FIDs; on a CPU tf32 is "
                        "plain fp32)")
    p.add_argument("--device", default="auto",
                   help="torch device (default auto: cuda:LOCAL_RANK when a GPU exists, else cpu; cuda alone also means "
                        "cuda:LOCAL_RANK, each process its own GPU)")
    p.add_argument("--npz", default="auto", help="path of the evaluator's .npz, written at the end (default: OUT.npz, beside the folder)")
    p.add_argument("--no-npz", action="store_true", help="only write PNGs, no .npz (default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, for logs and batch jobs (default: off)")


def run(args) -> int:
    from gmem_explore.evaluation.fid_sampling import default_npz, dist_env, run as run_sharded

    # before a download, a load and hours of sampling: the PNG folder and the .npz written at the very end
    output_folder(args.out)
    if not args.no_npz:
        output_file(default_npz(args.out) if args.npz == "auto" else args.npz, "--npz", (".npz",),
                    "the evaluator's file")
    device = check_device(args.device, allow_auto=True)  # "cuda" alone becomes cuda:LOCAL_RANK in fid_sampling.run
    # --steps, --seed + --num-fid-samples, --guidance-interval, --revision and --bank-dtype are checked by
    # fid_sampling.run before the checkpoint is resolved, loaded or anything is written
    kwargs = {} if args.bank_dtype is None else {"bank_dtype": args.bank_dtype}  # None: resolve_checkpoint's default
    npz = run_sharded(args.checkpoint, args.out, num=args.num, base_seed=args.seed, batch_size=args.batch_size,
                      method=args.method, steps=args.steps, choose=args.choose, precision=args.precision,
                      device=device, npz=None if args.no_npz else args.npz, progress=not args.no_progress,
                      guidance=args.guidance, guidance_interval=tuple(args.guidance_interval),
                      revision=args.revision or None, **kwargs)
    rank, world, _ = dist_env()
    if rank == 0:
        print(f"{args.num} images in {args.out}" + (f"; evaluator file {npz}" if npz else ""))
    return 0
