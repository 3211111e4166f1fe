"""Sampling at scale: 50,000 images for FID on one process or many, sharded by seed, resumable.

Image i of a run uses seed `base + i` (its initial noise, its bank row under the released rule, and its SDE
noise all come from that seed), and process `rank` of `world` makes the images with i % world == rank. So the
images do not depend on the number of processes, the batch size or restarts. Each image is written as
OUT/<seed>.png (atomically, with its seed and bank row in a PNG text chunk); a restarted run skips seeds whose
PNG exists. When every image is there, rank 0 streams them, in seed order, into the .npz the ADM evaluator
(openai/guided-diffusion evaluations/evaluator.py) reads: `arr_0`, uint8, (N, H, W, 3).

Launch with torchrun or accelerate (they set RANK / WORLD_SIZE / LOCAL_RANK; one process per GPU):
    torchrun --nproc_per_node 8 -m gmem_explore sample-fid --out samples/gmem-xl
    accelerate launch --num_processes 8 -m gmem_explore sample-fid --out samples/gmem-xl
The processes only meet at two barriers (after rank 0 has downloaded / converted the checkpoint, and before
the .npz), over gloo, so no GPU-to-GPU link is needed and CPU runs (the tests) use the same code.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..devices import check_device
from ..safefiles import atomic_path, read_header, write_bytes_atomic
from ..sampling import check_guidance, check_method_and_steps
from ..values import is_whole
from ..checkpoints import hub
from ..checkpoints.hub import HUB, check_revision, checkpoint_name
from ..checkpoints.official import BANK_DTYPES
from ..fingerprints import checkpoint_files
from ..pipeline import CHOICES, GMemPipeline, MAX_SEED

PRECISIONS = ("tf32", "fp32", "bf16", "fp8")


@dataclass(frozen=True)
class RunSettings:
    """What makes an image what it is; a resumed run must use the same (checked against OUT/run.json)."""

    checkpoint: str
    method: str
    steps: int
    choose: str
    precision: str
    guidance: float = 1.0
    guidance_interval: list = field(default_factory=lambda: [0.0, 1.0])  # a list: what run.json gives back
    # fingerprints.checkpoint_files of the folder sampled: the name "gmem-v1-xl" stays the same across Hub revisions and
    # --bank-dtype, and a local folder's name across retraining; its files do not
    weights: str = ""
    # the precision of the bank sampled ("fp16", "fp32": what --bank-dtype converted, or a folder's own) and the Hub
    # revision of a named checkpoint ("main" unless pinned; None for a local folder or file). The fingerprint differs
    # too when they do, but only these say which option to pass to resume
    bank_dtype: str = ""
    revision: str | None = None


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by torchrun / accelerate launch; (0, 1, 0) for a plain process."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


class Group:
    """A gloo process group when world > 1 (only barriers travel over it), nothing otherwise."""

    def __init__(self, world: int):
        self.active = world > 1
        if self.active:
            import torch.distributed as dist

            if not dist.is_initialized():
                # ranks may wait long for each other (conversion, uneven resumes): allow hours, not minutes
                dist.init_process_group("gloo", timeout=timedelta(hours=12))

    def barrier(self):
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def shard(num: int, base_seed: int, rank: int, world: int) -> list[int]:
    """The seeds of process `rank`: base + i for every i < num with i % world == rank."""
    return [base_seed + i for i in range(rank, num, world)]


def default_npz(out_dir) -> Path:
    """Where npz="auto" (sample-fid's --npz default) puts the evaluator's file: OUT.npz beside the folder OUT."""
    return Path(f"{Path(out_dir).expanduser().as_posix().rstrip('/')}.npz")


def png_path(out_dir, seed: int) -> Path:
    return Path(out_dir) / f"{seed:06d}.png"


def save_png(path: Path, image: np.ndarray, info: dict) -> None:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("gmem", json.dumps(info))
    with atomic_path(path) as tmp:
        Image.fromarray(image, "RGB").save(tmp, format="PNG", pnginfo=meta)


def png_info(path) -> dict:
    with Image.open(path) as img:
        return json.loads(img.text.get("gmem", "{}"))


def count_done(out_dir, seeds: list[int]) -> int:
    """How many of `seeds` have their PNG in out_dir (one directory listing). Only this run's seeds count: a folder
    that also holds images of an earlier, longer run or of other --seed values showed more than 100%. A killed
    write leaves a hidden .NAME.png.xxxx.tmp (safefiles.atomic_path), never a .png, so it is neither counted nor
    skipped on resume."""
    wanted = {png_path("", s).name for s in seeds}
    return sum(1 for e in os.scandir(out_dir) if e.name in wanted)


def checkpoint_identity(checkpoint) -> str:
    """What run.json records: a checkpoint name as given, a path as an absolute path, so that resuming from another
    folder, or with `./ck` for `ck`, is the same run."""

    # "emoji-32/" is the name "emoji-32" when no such folder exists
    checkpoint = checkpoint_name(checkpoint) if checkpoint else str(checkpoint)
    path = Path(checkpoint).expanduser()
    return str(path.resolve()) if path.exists() else checkpoint


def hub_revision(checkpoint, revision: str | None) -> str | None:
    """The Hub revision run.json records: for a Hub name, the one asked for ("main" when none); for a local folder or
    file None, and a revision given for one is refused (resolve_checkpoint would ignore it: a pinned run that is not)."""

    check_revision(checkpoint, revision)
    if checkpoint_name(checkpoint) in HUB:
        return "main" if revision is None else str(revision)
    return None


def bank_dtype_of(folder) -> str:
    """The precision of a checkpoint folder's bank rows, as --bank-dtype spells it ("fp16", "fp32"), from the file's
    header alone."""

    entries, _, _ = read_header(Path(folder) / "bank.safetensors")
    stored = entries.get("rows", {}).get("dtype", "?")
    return {"F16": "fp16", "F32": "fp32", "BF16": "bf16", "F64": "fp64"}.get(stored, stored.lower())


def check_settings(out_dir: Path, settings: RunSettings) -> bool:
    """Refuse to resume OUT with other settings than its run.json's. True when run.json is to be (re)written: there
    is none yet, or it predates a field (then filled in, so that the next resume checks that field too)."""
    record = out_dir / "run.json"
    if not record.is_file():
        return True
    recorded = json.loads(record.read_text())
    # runs from before a field: guidance_interval had one value; weights, bank_dtype and revision were not recorded
    # (trusted: the images' own were those of this run)
    new = asdict(settings)
    old = {"guidance_interval": [0.0, 1.0], "weights": settings.weights, "bank_dtype": settings.bank_dtype,
           "revision": settings.revision, **recorded}
    old["checkpoint"] = checkpoint_identity(old.get("checkpoint", ""))  # older runs kept the path as typed
    if old != new:
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        hints = []
        if "revision" in diff and old["revision"] and settings.revision:  # None: not a Hub name (checkpoint differs)
            hints.append(f" The images were made from Hub revision {old['revision']!r} and this run's is "
                         f"{settings.revision!r}: resume with --revision {old['revision']} (revision=).")
        if "bank_dtype" in diff and old["bank_dtype"]:
            hints.append(f" The images were made with an {old['bank_dtype']} bank and this run's is "
                         f"{settings.bank_dtype}: resume with --bank-dtype {old['bank_dtype']} (bank_dtype=).")
        if "weights" in diff and not hints:
            hints.append(" The checkpoint's files differ from the ones the images were made with: another --revision, "
                         "--bank-dtype or retrained weights.")
        raise ValueError(f"{out_dir} holds images made with other settings {diff} (old, new); resuming would mix "
                         f"them.{''.join(hints)} Use another --out folder or the same settings.")
    return set(recorded) != set(new)


def sampler_path(precision: str, device: torch.device) -> bool | str:
    """pipe.generate's `fast` for a --precision. tf32 and fp32 name the released sampler's arithmetic (fp32 weights,
    float64 state; TF32 matmuls or strict), so they must not take the fast path, which generate's default (None)
    turns on for every CUDA run in bf16: run.json said tf32 while the images were bf16's (0.5% off in the final
    latents). bf16 on a GPU is the fast path in its tested setting (fp32 weights, bf16 network: 3.6x the released
    sampler on an H100); on a CPU, which has no fast bf16, the released sampler with the network cast to bf16.
    fp8 is the fast path's FP8 mode on any device (4.6x the released sampler on an H100, but up to 7.9% off in the
    final latents of a trained model; on a CPU it runs, slowly, for checks)."""
    if precision == "fp8":
        return "fp8"
    return "bf16" if precision == "bf16" and device.type == "cuda" else False


def sample_seeds(pipe, out_dir: Path, seeds: list[int], settings: RunSettings, batch_size: int,
                 run_seeds: list[int], show_progress: bool, fast: bool | str = False) -> int:
    """Make the images of `seeds` (this process's share of `run_seeds`) that are not on disk yet; returns how many
    were written."""
    todo = [s for s in seeds if not png_path(out_dir, s).exists()]
    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(run_seeds), initial=count_done(out_dir, run_seeds), unit="img",
                   desc="sampling (all ranks)", smoothing=0.05)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        out = pipe.generate(seeds=batch, choose=settings.choose, method=settings.method, steps=settings.steps,
                            guidance=settings.guidance, guidance_interval=tuple(settings.guidance_interval),
                            batch_size=len(batch), fast=fast)
        images = out.images.numpy()
        for seed, row, image in zip(out.seeds, out.indices, images):
            save_png(png_path(out_dir, seed), image, {"seed": seed, "row": row, **asdict(settings)})
        if bar is not None:
            bar.n = count_done(out_dir, run_seeds)  # the other ranks' images count too
            bar.refresh()
    if bar is not None:
        bar.close()
    return len(todo)


def read_png(path) -> np.ndarray:
    """uint8 (H, W, 3) of one sampled image, or a ValueError naming a damaged file and what to do."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for a cut or damaged file
        raise ValueError(f"{path} is damaged ({e}): delete it and run the sampler again, which makes that image again "
                         f"from its seed") from None


def write_npz(out_dir, seeds: list[int], npz_path, progress: bool = False) -> Path:
    """Stream the PNGs of `seeds` (in that order) into an .npz whose arr_0 is uint8 (N, H, W, 3), without holding
    them all (50,000 x 256 x 256 x 3 is 9.8 GB): the npy header first, then one image at a time."""
    paths = [png_path(out_dir, s) for s in seeds]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} images are missing in {out_dir} "
                                f"(e.g. {missing[:3]}); run the sampler again to finish them")
    h, w = read_png(paths[0]).shape[:2]
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(paths), h, w, 3)}
    iterator = paths
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(paths, unit="img", desc="writing npz")
    with atomic_path(npz_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for p in iterator:
                    arr = read_png(p)
                    if arr.shape != (h, w, 3):
                        raise ValueError(f"{p} is {arr.shape}, not ({h}, {w}, 3) like the first image")
                    f.write(arr.tobytes())
    return Path(npz_path)


def set_precision(pipe, precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if device.type == "cuda":
        # tf32: the reference's setting (fp32 weights, TF32 matmuls); ~3x faster than strict fp32 on A100/H100
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16" and not sampler_path(precision, device):  # the fast path casts for itself
        pipe.model.to(torch.bfloat16)  # the sampler keeps its state in float64 and casts per call


def check_run_arguments(out_dir, num, base_seed, batch_size, method, steps, choose, precision, guidance,
                        guidance_interval) -> None:
    """Every argument of run() that can be judged without the checkpoint, so that a mistake is refused before a
    download, a load (gmem-v1-xl: 4.7 GB) or a write (run.json), not after."""

    if not is_whole(num, 1):
        raise ValueError(f"num must be a positive number of images; got {num!r}")
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be a positive number of images per batch; got {batch_size!r}")
    if not is_whole(base_seed, 0, MAX_SEED - (num - 1)):
        raise ValueError(f"base_seed must be an integer >= 0 with base_seed + num - 1 <= 2^63 - 1 (image i uses seed "
                         f"base_seed + i); got {base_seed!r}")
    if method is not None or steps is not None:  # the checkpoint's defaults are checked once it has loaded
        check_method_and_steps("sde" if method is None else method, 1 if steps is None else steps)
    if choose is not None and choose not in CHOICES:  # None: the checkpoint's rule, known once it has loaded
        raise ValueError(f"Unknown choice {choose!r}; choose one of {CHOICES}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    check_guidance(guidance, guidance_interval)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} is a file; the images go into a folder: give a new or existing folder")


def resolve_device(device, local_rank: int = 0) -> torch.device:
    """The torch device of this process. "auto": cuda:LOCAL_RANK when a GPU exists, else cpu; "cuda" without a
    number: cuda:LOCAL_RANK too (each process its own GPU; torch.cuda.set_device refuses a device without its
    number). More processes than GPUs share them round-robin. Devices this machine lacks: devices.check_device."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = check_device(device, cpu_hint="device='cpu' or 'auto'")
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def run(checkpoint: str, out_dir, num: int = 50_000, base_seed: int = 0, batch_size: int = 64,
        method: str | None = None, steps: int | None = None, choose: str | None = None, precision: str = "tf32",
        device: str = "auto", npz: str | os.PathLike | None = "auto", progress: bool = True,
        guidance: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
        **resolve_kwargs) -> Path | None:
    """Sample `num` images of `checkpoint` into `out_dir` as this process's share, then (rank 0) the .npz.
    Returns the .npz path (rank 0, when npz is not None) or None. `guidance` > 1 applies classifier-free guidance
    for the step times t inside `guidance_interval` (both recorded in run.json: a resume must use the same).
    `choose` None picks rows by the checkpoint's rule (v1's "noise", v2's "uniform"); run.json records the rule used.
    `device` "auto" or "cuda" means cuda:LOCAL_RANK (see resolve_device). Every argument is checked before the
    checkpoint is downloaded or loaded and before anything is written."""

    rank, world, local_rank = dist_env()
    check_run_arguments(out_dir, num, base_seed, batch_size, method, steps, choose, precision, guidance,
                        guidance_interval)
    revision = hub_revision(checkpoint, resolve_kwargs.get("revision"))
    bank_dtype = resolve_kwargs.get("bank_dtype")
    if bank_dtype is not None and bank_dtype not in BANK_DTYPES:
        raise ValueError(f"bank_dtype must be one of {tuple(BANK_DTYPES)} (the released bank's precision once "
                         f"converted); got {bank_dtype!r}")
    num, base_seed, batch_size = int(num), int(base_seed), int(batch_size)  # NumPy integers as plain ints
    device = resolve_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # "~/samples" as a quoted or --out=~/... argument reaches us unexpanded: the CLI checked ~/samples, so write there
    # too, not into a folder named "~" under the current one
    out_dir = Path(out_dir).expanduser()
    group = Group(world)
    try:
        if rank == 0:  # download and convert once; the other ranks then find the converted folder
            folder = hub.resolve_checkpoint(checkpoint, progress=progress, **resolve_kwargs)
        group.barrier()
        if rank != 0:
            folder = hub.resolve_checkpoint(checkpoint, progress=False, **resolve_kwargs)
        folder_bank_dtype = bank_dtype_of(folder)
        if bank_dtype is not None and bank_dtype != folder_bank_dtype:  # a converted folder keeps its own precision
            raise ValueError(f"bank_dtype {bank_dtype!r} (--bank-dtype) chooses the precision a released .pth is "
                             f"converted to; {checkpoint} is a converted folder whose bank is {folder_bank_dtype}, and "
                             f"its images would be made with that. Drop --bank-dtype, or convert the .pth again: "
                             f"gmem convert FILE.pth OUT/ --bank-dtype {bank_dtype}")
        pipe = GMemPipeline.from_pretrained(str(folder), device=device)
        # given ones were checked before the load (check_run_arguments), the checkpoint's own when it loaded;
        # `is None`, not `or`: steps=0 is refused there, not replaced by the default
        method = pipe.sampler.method if method is None else method
        steps = pipe.sampler.steps if steps is None else steps
        choose = pipe.choose if choose is None else choose  # recorded as used: a resume naming it matches
        low, high = (float(v) for v in guidance_interval)
        settings = RunSettings(checkpoint_identity(checkpoint), method, int(steps), choose, precision, float(guidance),
                               [low, high], checkpoint_files(folder), folder_bank_dtype, revision)
        record_needed = check_settings(out_dir, settings)
        set_precision(pipe, precision, device)
        out_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0 and record_needed:
            write_bytes_atomic(out_dir / "run.json", json.dumps(asdict(settings), indent=1).encode())
        run_seeds = [base_seed + i for i in range(num)]
        sample_seeds(pipe, out_dir, shard(num, base_seed, rank, world), settings, batch_size, run_seeds,
                     progress and rank == 0, sampler_path(precision, device))
        group.barrier()
        if rank != 0 or npz is None:
            return None
        npz_path = default_npz(out_dir) if npz == "auto" else Path(npz).expanduser()
        return write_npz(out_dir, run_seeds, npz_path, progress)
    finally:
        group.close()


def _spawned(rank: int, world: int, port: int, run_kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    # `world` processes share the machine's cores; one thread also keeps a forked child out of OpenMP's thread pool,
    # which hangs at its first parallel op when the parent had used it (seen with torch 2.13's CPU build here)
    torch.set_num_threads(1)
    run(**run_kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment: the launcher's rendezvous, and the servers tests start."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_local(nprocs: int, start_method: str = "spawn", **run_kwargs) -> None:
    """Run `run(**run_kwargs)` in `nprocs` local processes (what torchrun does, from Python: notebooks, tests).
    "spawn" is safe with CUDA; "fork" starts in milliseconds instead of re-importing torch (CPU only)."""
    import torch.multiprocessing as mp

    mp.start_processes(_spawned, args=(nprocs, free_port(), run_kwargs), nprocs=nprocs, join=True, start_method=start_method)
