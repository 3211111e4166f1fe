"""The conversion cache: a released-format .pth is converted once into a folder beside it (or under $GMEM_CACHE when
its folder is read-only) and that folder is reused while it is a whole conversion of the file as it is now.

    ensure_converted(path)  ->  .../GMem_XL_2Miter_ImageNet-1K_K640000_5epo.gmem-explore-fp16/
    ensure_converted_v2({"network": ..., "bank": ..., "vavae": ..., "stats": ...})
                            ->  .../GMem_XL_160Epoch_in1k256_network.gmem-explore-fp16/  (network and bank; the
                                VA-VAE is checked once and named, not copied)

Inside a Hugging Face cache the folder sits in snapshots/<commit>/, so deleting that revision deletes it too. A lock
file beside it makes concurrent callers (e.g. 8 torchrun ranks) convert once. A damaged folder (a file lost or cut
short) or one of an older source is converted again: the folder is ours, not the user's.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .official import convert_official, expected_sha256_from_cache
from .official_v2 import convert_official_v2
from ..safefiles import read_header


def converted_folder_for(src, bank_dtype: str = "fp16") -> Path:
    """Where the cached conversion of `src` lives: beside the file (inside the HF snapshot folder, so deleting
    that revision from the cache deletes it too), or under ~/.cache/gmem-explore when that is read-only."""
    src = Path(src).expanduser()
    beside = src.parent / f"{src.stem}.gmem-explore-{bank_dtype}"
    if os.access(src.parent, os.W_OK):
        return beside
    cache = Path(os.environ.get("GMEM_CACHE", Path.home() / ".cache" / "gmem-explore")).expanduser()
    # keyed by the file's real path (in a HF cache: its blob, named by its sha256): two revisions of the release in
    # a read-only shared cache have the same name and size, and took turns deleting each other's conversion
    where = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
    return cache / "converted" / f"{src.stem}-{where}-{bank_dtype}"


def is_conversion_of(recorded: dict, src: Path) -> bool:
    """Whether a conversion's recorded source (config.json's "source") is the file `src` as it is now: the same size
    and modification time, or, in a Hugging Face cache, the same size and the blob the conversion was checked
    against (blobs are named by their sha256, so a cache copied without its times, as the README suggests for
    machines without a network, keeps its conversions instead of redoing 3.7 GB)."""
    st = src.stat()
    if recorded.get("bytes") != st.st_size:
        return False
    sha256 = recorded.get("sha256")
    return recorded.get("mtime_ns") == st.st_mtime_ns or bool(sha256) and sha256 == expected_sha256_from_cache(src)


def ensure_converted(src, bank_dtype: str = "fp16", progress: bool = True, **convert_kwargs) -> Path:
    """Convert once, then reuse: the cached folder is valid while it is a conversion of the file as it is now
    (is_conversion_of: size and modification time, or size and HF blob; size alone is the same for every checkpoint
    of one architecture: a re-saved .pth loaded stale weights) and whole (conversion_is_complete).
    A file lock makes concurrent callers (e.g. 8 torchrun ranks) convert once and wait for each other."""
    src = Path(src).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"No such checkpoint file: {src}")
    return _convert_once(src, bank_dtype, lambda recorded: is_conversion_of(recorded, src),
                         lambda out: convert_official(src, out, bank_dtype, progress=progress, **convert_kwargs))


def ensure_converted_v2(files: dict, bank_dtype: str = "fp16", progress: bool = True, **convert_kwargs) -> Path:
    """ensure_converted for GMem v2's files {"network", "bank", "vavae", "stats"}: the folder sits beside the network
    file and is reused while it is a whole conversion of the network and the bank as they are now (a new bank file,
    e.g. $GMEM_V2_BANK_FILE changed, converts again). The VA-VAE files are checked at conversion only."""
    files = {role: Path(p).expanduser() for role, p in files.items()}
    network, bank = files["network"], files["bank"]

    def current(recorded: dict) -> bool:
        return is_conversion_of(recorded, network) and isinstance(recorded.get("bank"), dict) \
            and recorded["bank"].get("file") == bank.name and is_conversion_of(recorded["bank"], bank)

    return _convert_once(network, bank_dtype, current, lambda out: convert_official_v2(
        network, bank, out, vavae=files.get("vavae"), stats=files.get("stats"), bank_dtype=bank_dtype,
        progress=progress, **convert_kwargs))


def _convert_once(src: Path, bank_dtype: str, current, convert) -> Path:
    out = converted_folder_for(src, bank_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # Windows: no flock; concurrent conversions are still atomic, just duplicated
            pass
        if out.exists():
            if current(recorded_source(out)) and conversion_is_complete(out):
                return out
            # the source changed (re-download, re-save), or the folder lost or damaged a file (a cleaned disk, a
            # partial copy of a cache): the folder is ours, so it is converted again rather than left to fail
            shutil.rmtree(out)
        return convert(out)


def recorded_source(folder: Path) -> dict:
    """config.json's "source" of a cached conversion; {} when it is missing or unreadable (then not reused)."""
    try:
        source = json.loads((folder / "config.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return {}
    return source if isinstance(source, dict) else {}


def conversion_is_complete(folder: Path) -> bool:
    """Both tensor files there, with readable headers and all the bytes those describe (read_header's checks:
    a few kB read, not the 3.7 GB)."""
    try:
        for name in ("model.safetensors", "bank.safetensors"):
            read_header(folder / name)
    except (OSError, ValueError):
        return False
    return True
