"""The released GMem v1 checkpoint: read the .pth safely, check it strictly, convert it to our folder format.

The file `GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth` (Hugging Face `Tangentone/GMem`) is one torch.save dict:
    network     the SiT-XL/2 state_dict (names match gmem_explore/models/sit.py, so it loads strictly)
    memorybank  (640000, 768) float snippets
    memoryfreq  (640000,) how often each row is drawn
It is a pickle, so it is read only with torch.load(weights_only=True): a pickle that carries code is refused
before anything runs. It is read memory-mapped (mmap=True), and conversion streams tensor by tensor, slice by
slice (safefiles.write_streaming), so the 1.97 GB bank is never held twice: the process's own memory stays near
one 64 MB slice plus the small tensors; the rest is reclaimable page cache (benchmarks/convert_memory.py).

    gmem convert GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth gmem-v1-xl/      # or, in Python:
    convert_official("....pth", "gmem-v1-xl/", bank_dtype="fp16")
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..bank.checks import check_frequencies
from .folder import FORMAT
from ..models.sit import build_model, load_network_state, model_config
from ..sampling.settings import RECIPES
from .official_layouts import describe_network, explain_foreign, how_to_convert, looks_like
from ..safefiles import STALE_TEMP_SECONDS, write_bytes_atomic, write_streaming

OFFICIAL_REPO = "Tangentone/GMem"
OFFICIAL_FILE = "GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth"
OFFICIAL_MODEL = "SiT-XL/2"
OFFICIAL_KEYS = ("network", "memorybank", "memoryfreq")
AUTOENCODER = {"type": "sd-vae", "image_size": 256, "source": "stabilityai/sd-vae-ft-mse"}
ENCODER = {"type": "dinov2", "source": "facebook/dinov2-base", "image_size": 224, "dim": 768}
SAMPLER = RECIPES["gmem-v1"].to_config()  # the released recipe: 250-step Euler-Maruyama, no guidance


def about(rows: int) -> str:
    """The app's one-paragraph note on a converted v1 model (config "about"), in a visitor's words."""
    return (f"GMem's released ImageNet model (v1): a SiT-XL/2 that draws 256 px images from a memory bank of "
            f"{rows:,} DINOv2 snippets of ImageNet training images, rows drawn by how often each was seen. A row "
            f"gives varied images of its source image's kind, one per seed; two rows mixed, or an uploaded photo, "
            f"give new ones. The paper reports FID 3.56 without guidance.")
BANK_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class UnsafeCheckpointError(ValueError):
    """The pickle asks to import or call something that is not plain tensor data."""


def load_official(path, mmap: bool = True) -> dict:
    """The released dict {network, memorybank, memoryfreq}, read with weights_only=True (memory-mapped when
    the file is in torch's zip format). Raises UnsafeCheckpointError for code-carrying pickles,
    ValueError for files that are not torch checkpoints at all or not the released layout, and
    IsADirectoryError / FileNotFoundError for a folder / a missing path."""
    path = check_source_path(path)
    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (.pth) at all: {not_torch}. Expected the released GMem checkpoint "
            f"{OFFICIAL_FILE} from {OFFICIAL_REPO} on Hugging Face (a file written by torch.save): check the path, "
            f"or download that file again if this one is a cut-off download or an error page"
            f"{' (' + delete_hint(path) + ')' if path.is_symlink() else ''}.")
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            raw = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format: no mmap
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(str(e))
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it is a pickle that asks to run code or build objects that are not plain "
            f"tensors ({reason}). Nothing from it was executed. The released GMem checkpoint holds only tensors; "
            f"this file is something else or has been tampered with: download it again from {OFFICIAL_REPO}."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, TypeError) as e:
        # Damaged bytes after a valid start make torch's reader fail in many ways (a random file starting with
        # b"\x80" gave an IndexError); all of them mean the same to the user.
        raise ValueError(f"Could not read {path} as a torch checkpoint ({e}). The file is truncated or damaged: "
                         f"{delete_hint(path)}.") from None
    return check_official_dict(raw, path)


def check_source_path(path) -> Path:
    """The path of an existing file, or IsADirectoryError / FileNotFoundError saying what to give instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not a checkpoint file: give the path of the released .pth file ({OFFICIAL_FILE}). "
            f"A folder that is already converted needs no converting: load it with load_checkpoint(folder) or "
            f"`gmem sample --checkpoint FOLDER`.")
    if not path.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    return path


def _unpickling_reason(text: str) -> str:
    """The one sentence of torch's weights_only refusal that says what the pickle asked for (e.g. "Unsupported
    global: GLOBAL posix.system ..."); the rest of its text is advice to turn the protection off."""
    found = re.search(r"WeightsUnpickler error: (.*?)\.(?:\s|$)", text)
    if found:
        return found.group(1)
    return text.split("\n\n")[1].strip() if "\n\n" in text else (text.splitlines() or [text])[0]


# torch.save writes a zip archive (since PyTorch 1.6) or, in the legacy format, a pickle of protocol 2 or more;
# both are recognisable from their first bytes.
TORCH_ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO_OPCODE = b"\x80"


def _not_a_torch_file(path: Path) -> str | None:
    """Why the file cannot be a torch.save checkpoint, judged from its first bytes; None when it may be one.

    Without this, torch.load(weights_only=True) reports an image or a text file as an unpickling error (or a bare
    KeyError), and the message would accuse an innocent file of carrying code."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(TORCH_ZIP_MAGIC) or head.startswith(PICKLE_PROTO_OPCODE):
        return None
    expected = (f"while a torch checkpoint starts with {TORCH_ZIP_MAGIC!r} (zip) or {PICKLE_PROTO_OPCODE!r} "
                f"(legacy pickle)")
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):  # an error page or a note saved under the .pth name
        return f"it is text, starting {head.decode('ascii')!r}, {expected}"
    return f"it starts with the bytes {head[:8]!r}, {expected}"


def delete_hint(path, sentence: bool = False) -> str:
    """What to delete so that the next load downloads a damaged file afresh. In a Hugging Face cache the file is a
    link, snapshots/<commit>/<file> -> blobs/<sha256>: deleting only the link does nothing, since huggingface_hub
    links the damaged blob again without downloading it; the blob must go."""
    path = Path(path).expanduser()
    first = "Delete" if sentence else "delete"
    target = path.resolve() if path.is_symlink() else None  # not resolve() alone: a linked folder above is no cache
    if target is not None and target.exists():
        return (f"{first} the damaged download {target} (the Hugging Face cache's copy; {path} only links to it) and "
                f"run again where a network exists: huggingface_hub then downloads it afresh (or "
                f"`hf download {OFFICIAL_REPO} {OFFICIAL_FILE} --force-download`)")
    return f"{first} it and download {OFFICIAL_FILE} again ({OFFICIAL_REPO} on Hugging Face)"


def check_official_dict(raw, path="checkpoint") -> dict:
    kind = looks_like(raw)
    if "GMem v2" in kind:  # the other generation: say so before any key-by-key detail
        raise ValueError(f"{path} was given as the GMem v1 release but looks like {kind}. A GMem v2 model is a network "
                         f"file and a bank file: convert them together with `gmem convert NETWORK.pth OUT/ --bank "
                         f"BANK.pth` (convert_official_v2), or load a named one (gmem-v2-xl-160ep). Nothing was "
                         f"written.")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not the released dict with keys {list(OFFICIAL_KEYS)}")
    missing = [k for k in OFFICIAL_KEYS if k not in raw]
    if missing:
        what = explain_foreign(raw)
        if what is None:  # at most 8 of its keys: a bare state_dict of SiT-XL/2 has 680
            keys = sorted(map(str, raw))
            what = f"found {keys[:8]}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        raise ValueError(f"{path} is not a released GMem v1 checkpoint: keys {missing} are missing; {what}. "
                         f"Expected the dict {list(OFFICIAL_KEYS)} of {OFFICIAL_FILE} ({OFFICIAL_REPO}).")
    network = raw["network"]
    if not isinstance(network, dict) or not all(isinstance(v, torch.Tensor) for v in network.values()):
        raise ValueError(f"{path}: 'network' must be a state_dict of tensors")
    if network and all(k.startswith("module.") for k in network):  # saved from a DDP wrapper
        network = {k.removeprefix("module."): v for k, v in network.items()}
    bank, freq = raw["memorybank"], raw["memoryfreq"]
    if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or not bank.is_floating_point():
        raise ValueError(f"{path}: 'memorybank' must be a 2-D float tensor (rows x 768); got "
                         f"{getattr(bank, 'shape', type(bank).__name__)}")
    freq = torch.as_tensor(freq).reshape(-1) if isinstance(freq, torch.Tensor) else freq
    if not isinstance(freq, torch.Tensor) or freq.shape != (bank.shape[0],):
        raise ValueError(f"{path}: 'memoryfreq' must hold one count per bank row ({bank.shape[0]}); got "
                         f"{getattr(freq, 'shape', type(freq).__name__)}")
    try:  # MemoryBank.load refuses these: found here, before 3.7 GB are written and every load fails
        check_frequencies(freq.double(), bank.shape[0])
    except ValueError as e:
        raise ValueError(f"{path}: 'memoryfreq' is unusable: {e}") from None
    return {"network": network, "memorybank": bank, "memoryfreq": freq}


def check_network(network: dict, model: str | None = OFFICIAL_MODEL, **overrides):
    """Strict check of the state_dict against build_model(model, **overrides) without allocating weights
    (built on the meta device); the error names missing, unexpected and mis-shaped keys."""
    with torch.device("meta"):
        skeleton = build_model(model, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": exactly what we want here
        load_network_state(skeleton, network)
    return skeleton.config


def official_model(raw: dict, model: str | None = OFFICIAL_MODEL, **overrides):
    """An eval-mode GMemSiT with the released weights, loaded strictly."""
    net = build_model(model, **overrides)
    load_network_state(net, raw["network"])
    return net.eval()


def file_sha256(path, progress: bool = False) -> str:
    h = hashlib.sha256()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=Path(path).stat().st_size, unit="B", unit_scale=True, desc="sha256")
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    return h.hexdigest()


def expected_sha256_from_cache(path) -> str | None:
    """In a Hugging Face cache, snapshots/<rev>/<file> links to blobs/<etag>; for LFS files the etag IS the
    sha256 of the content, so the cache itself tells us what the file must hash to (offline too)."""
    target = Path(path).resolve()
    name = target.name
    if target.parent.name == "blobs" and len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


def convert_official(src, out, bank_dtype: str = "fp16", model: str | None = OFFICIAL_MODEL,
                     model_overrides: dict | None = None, autoencoder: dict | None = None,
                     encoder: dict | None = None, sha256: str | None = None, info: dict | None = None,
                     progress: bool = False) -> Path:
    """Convert the released .pth into a checkpoint folder (config.json, model.safetensors, bank.safetensors).

    The folder is assembled in a temporary sibling and renamed into place, so `out` either does not exist or
    is complete. `sha256`, when given (or known from the HF cache), is checked before anything is written.
    `model_overrides` (a dict of build_model keywords on top of `model`) describe a released-format file of another
    size.
    """
    if bank_dtype not in BANK_DTYPES:
        raise ValueError(f"bank_dtype must be one of {sorted(BANK_DTYPES)}; got {bank_dtype!r}")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a checkpoint; delete it or choose another folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    if model_overrides is not None and not isinstance(model_overrides, dict):
        raise TypeError(f"model_overrides must be a dict of build_model keywords (e.g. {{'depth': 12}}) or None; "
                        f"got {type(model_overrides).__name__} {model_overrides!r:.80}")
    if sha256 not in (None, "") and (not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ValueError(f"sha256 must be 64 hexadecimal digits (what `sha256sum FILE` prints); got {sha256!r:.80}")
    model_config(model, **(model_overrides or {}))  # an unknown size or keyword: before hashing and reading 4.7 GB
    check_source_path(src)
    given = bool(sha256)  # the caller's hash, else the HF cache's record of the Hub's (the blob's name)
    sha256 = sha256 or expected_sha256_from_cache(src)
    if sha256:
        actual = file_sha256(src, progress)
        if actual != sha256.lower():
            if given:  # a mistyped hash is as likely as a damaged file: name both, and whose hash it was
                raise ValueError(f"{src} does not match the sha256 you gave: the file's sha256 is {actual}, you gave "
                                 f"{sha256.lower()}. Check the hash (the file's page on huggingface.co lists it); "
                                 f"if it is right, the file is corrupt: delete it and download it again.")
            raise ValueError(f"{src} is corrupt: its sha256 is {actual} but the Hugging Face cache records "
                             f"{sha256.lower()} (the Hub's sha256, the name of its blob). {delete_hint(src, sentence=True)}.")
    raw = load_official(src)
    overrides = dict(model_overrides or {})
    try:
        config = check_network(raw["network"], model, **overrides)
    except ValueError as e:  # say what the file holds and how to convert it, before the key-by-key details
        asked = model if not overrides else f"{model or 'the default sizes'} with {overrides}"
        fix = how_to_convert(raw["network"])
        raise ValueError(f"{src} holds {describe_network(raw['network'])}, but {asked} was asked for"
                         f"{': ' + fix if fix else ''}. Details: {e}") from None
    bank_rows = raw["memorybank"].shape[0]
    if raw["memorybank"].shape[1] != config.snippet_dim:
        raise ValueError(f"{src}: bank rows have {raw['memorybank'].shape[1]} dimensions but the model's "
                         f"condition_projection expects {config.snippet_dim}")

    # DINOv2-B/14 made the released bank; a bank of another width (a tiny test model) has no known encoder.
    default_encoder = ENCODER if config.snippet_dim == ENCODER["dim"] else None
    # SD-VAE latents have 4 channels at 1/8 of the image side; a 3-channel model works on pixels.
    default_autoencoder = {**AUTOENCODER, "image_size": config.input_size * 8} if config.in_channels == 4 \
        else {"type": "pixels"}
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)  # before the space check: a killed conversion's 3.7 GB count as free again
    needed = conversion_bytes(raw, bank_dtype)
    free = shutil.disk_usage(out.parent).free
    if free < needed:  # refused before a byte is written: a full disk fails late, after minutes of writing
        raise no_space(src, out, needed, free)
    with assembled_folder(out, src, needed) as work:
        bar = None
        if progress:
            from tqdm.auto import tqdm
            freq = raw["memoryfreq"]  # written too (the bar stopped 5 MB short of its end on the released file)
            total = sum(t.numel() * t.element_size() for t in raw["network"].values()) + \
                raw["memorybank"].numel() * BANK_DTYPES[bank_dtype].itemsize + freq.numel() * freq.element_size()
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="converting")
        step = bar.update if bar is not None else None
        write_streaming(work / "model.safetensors", raw["network"], progress=step)
        raw["network"] = None  # drop the mapping of the network before the bank is streamed
        bank_meta = {"format": "gmem-explore-bank-1", "label_names": None,
                     "origin": f"{OFFICIAL_REPO}/{src.name} memorybank (unnormalised; normalised at use)"}
        write_streaming(work / "bank.safetensors", {"rows": raw["memorybank"], "freq": raw["memoryfreq"]},
                        dtypes={"rows": BANK_DTYPES[bank_dtype]}, metadata=bank_meta, progress=step)
        if bar is not None:
            bar.close()
        full = {"format": FORMAT, "model": config.to_dict(), "autoencoder": autoencoder or default_autoencoder,
                "encoder": encoder if encoder is not None else default_encoder, "sampler": dict(SAMPLER),
                "name": "gmem-v1-xl" if model == OFFICIAL_MODEL and not overrides else src.stem,
                "source": {"repo": OFFICIAL_REPO, "file": src.name, "revision": snapshot_commit(src),
                           "bytes": src.stat().st_size, "mtime_ns": src.stat().st_mtime_ns, "sha256": sha256,
                           "bank_dtype": bank_dtype},
                "licence": "MIT (GMem weights, Tangentone/GMem)", "about": about(bank_rows), **(info or {})}
        write_bytes_atomic(work / "config.json", json.dumps(full, indent=2).encode())
    return out


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete the `.OUT.*.partial` folders of conversions into `out` that were killed outright (SIGKILL, the OOM
    killer, a job's time limit: no `except` ran), judged by their newest file being over STALE_TEMP_SECONDS old; a
    younger one may be a conversion still running in another process."""
    removed = []
    for partial in out.parent.glob(f".{glob.escape(out.name)}.*.partial"):
        try:
            newest = max([partial.stat().st_mtime] + [p.stat().st_mtime for p in partial.iterdir()])
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if time.time() - newest > STALE_TEMP_SECONDS:
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
    return removed


def conversion_bytes(raw: dict, bank_dtype: str) -> int:
    """Bytes the converted folder takes: the network as stored, the bank rows in `bank_dtype`, the frequencies,
    and 1 MB for the headers and config.json (SiT-XL/2 with the released bank: 2.7 GB + 0.98 GB in fp16)."""
    network = sum(t.numel() * t.element_size() for t in raw["network"].values())
    bank = raw["memorybank"].numel() * BANK_DTYPES[bank_dtype].itemsize
    return network + bank + raw["memoryfreq"].numel() * raw["memoryfreq"].element_size() + (1 << 20)


@contextmanager
def assembled_folder(out: Path, src: Path, needed: int):
    """A hidden sibling of `out` (.NAME.xxxxxxxx.partial) to write a conversion into: renamed to `out` when the block
    ends, removed on any failure (a full disk reported by no_space), so `out` is complete or absent. Every
    converter (official.py, official_v2.py) writes through it."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    os.chmod(work, 0o755)  # mkdtemp makes it 0700: other users of a shared HF_HOME could not read the conversion
    try:
        yield work
        if out.exists():
            out.rmdir()  # empty (checked by the caller); rename needs the name free
        os.replace(work, out)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # the disk filled while writing (another writer)
            raise no_space(src, out, needed, shutil.disk_usage(out.parent).free, while_writing=True) from e
        raise


def no_space(src: Path, out: Path, needed: int, free: int, while_writing: bool = False) -> OSError:
    when = "ran out of space while writing" if while_writing else "does not fit"
    return OSError(errno.ENOSPC, (
        f"Converting {src.name} {when}: it needs {needed / 1e9:.2f} GB free in {out.parent}, which has "
        f"{free / 1e9:.2f} GB. Nothing was left behind. Free some space there, or convert into a folder on another "
        f"disk (`gmem convert {src} OTHER_DISK/FOLDER`, then pass that folder wherever a checkpoint goes)"))


def snapshot_commit(path) -> str | None:
    """The commit of a file in a Hugging Face cache (snapshots/<commit>/<file>): the revision it was loaded at,
    whatever branch or tag was asked for; None for a file outside a cache."""
    path = Path(path).expanduser().absolute()
    if path.parent.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.parent.name):
        return path.parent.name
    return None
