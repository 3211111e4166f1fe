"""Named checkpoints and where their files come from.

- "emoji-32": the embedded default, shipped inside the package (gmem_explore/weights/emoji-32), no download.
- "gmem-v1-xl": the released GMem v1 SiT-XL/2 (Hugging Face `Tangentone/GMem`, 4.7 GB .pth), downloaded with
  huggingface_hub (revision pinnable, HF_HOME / HF_HUB_CACHE honoured, HF_HUB_OFFLINE honoured), checked, and
  converted once into a pickle-free folder beside the downloaded file (official.py converts,
  conversion_cache.py keeps it), then reused.
- a local folder in our checkpoint format (see folder.py).
- a local released-format .pth file (e.g. the official file copied from elsewhere): converted once, then reused.
"""
from __future__ import annotations

import errno
from pathlib import Path

from .. import offline

WEIGHTS = Path(__file__).parent.parent / "weights"
DEFAULT_NAME = "emoji-32"
EMBEDDED = {"emoji-32": WEIGHTS / "emoji-32"}
# name -> where the released file lives on the Hub
HUB = {"gmem-v1-xl": {"repo_id": "Tangentone/GMem", "filename": "GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth",
                      "size": "4.7 GB"}}
PTH_SUFFIXES = (".pth", ".pt")


class CheckpointUnavailable(OSError):
    """The file is neither cached nor reachable; the message says how to get it."""


def available() -> list[str]:
    return sorted(EMBEDDED) + sorted(HUB)


def checkpoint_name(name_or_path) -> str:
    """The name or path as resolve_checkpoint reads it: a known name typed with a trailing slash ("emoji-32/", what
    shell completion gives beside a folder of that name) is that name, unless such a local folder exists: then the
    folder wins, as any path does."""
    name = str(name_or_path or DEFAULT_NAME)
    bare = name.rstrip("/\\")
    if bare != name and (bare in EMBEDDED or bare in HUB) and not Path(name).expanduser().is_dir():
        return bare
    return name


def resolve_checkpoint(name_or_path: str | None = None, *, revision: str | None = None, cache_dir=None,
                       bank_dtype: str = "fp16", progress: bool = True, model_overrides: dict | None = None,
                       **kwargs) -> Path:
    """A local checkpoint folder for a name or a path (downloading and converting the released model once).

    `model_overrides` (keywords of build_model on top of SiT-XL/2) describe a released-format .pth of another
    size; the tests use it for a tiny model in the official layout."""
    if kwargs:
        raise TypeError(f"resolve_checkpoint got unknown options {sorted(kwargs)}")
    name = checkpoint_name(name_or_path)
    check_revision(name_or_path, revision)
    if name in EMBEDDED:
        folder = EMBEDDED[name]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"The embedded checkpoint {name!r} is missing from {folder}; reinstall gmem-explore")
        return folder
    if name in HUB:
        from .conversion_cache import ensure_converted  # imports torch: hub.py is read by the CLI before torch

        return ensure_converted(download(name, revision=revision, cache_dir=cache_dir), bank_dtype,
                                progress=progress, model_overrides=model_overrides)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() in PTH_SUFFIXES:  # "GMEM.PTH" from a FAT-formatted drive too
        from .conversion_cache import ensure_converted  # imports torch: hub.py is read by the CLI before torch

        return ensure_converted(path, bank_dtype, progress=progress, model_overrides=model_overrides)
    from .folder import CHECKPOINT_FILES  # here, on the way to an error: folder.py imports torch

    hint = ""
    if path.is_file() and path.name in CHECKPOINT_FILES:  # the file inside the folder, given for the folder
        hint = f": {path.name} is one file of a checkpoint folder; give the folder itself, {path.parent}"
    elif path.is_file():
        hint = f": {path} is a {path.suffix or 'suffix-less'} file, while a released-format file ends in .pth or .pt"
    raise ValueError(f"{name_or_path!r} is neither a known checkpoint name {available()}, a checkpoint folder, "
                     f"nor a released-format .pth file{hint}")


def check_revision(name_or_path, revision) -> None:
    """A revision picks a version of a Hub checkpoint; for the embedded one or a local folder or file it would be
    ignored, and a run the user believes pinned would not be, so it is refused."""
    name = checkpoint_name(name_or_path)
    if revision is None or name in HUB:
        return
    what = "the embedded checkpoint" if name in EMBEDDED else "a local folder or file"
    raise ValueError(f"revision {revision!r} (--revision) picks a version of a Hub checkpoint ({', '.join(HUB)}); "
                     f"{name_or_path or name} is {what}, which has none: drop --revision")


def how_to_get(name: str, why: str) -> str:
    spec = HUB[name]
    return (
        f"{name}: {why}. The file is {spec['repo_id']}/{spec['filename']} ({spec['size']}). Either\n"
        f"  1. download it where a network exists:\n"
        f"       hf download {spec['repo_id']} {spec['filename']} --local-dir DIR\n"
        f"     (`huggingface-cli download` with huggingface_hub < 1.0; or the file's page on huggingface.co)\n"
        f"     copy it here and pass its path instead of the name, e.g.\n"
        f"       gmem sample-fid --checkpoint DIR/{spec['filename']}   or   "
        f"GMemPipeline.from_pretrained('DIR/{spec['filename']}')\n"
        f"     (`gmem convert DIR/{spec['filename']} OUT/` makes a pickle-free folder once); or\n"
        f"  2. copy a Hugging Face cache that holds it and set HF_HOME (or HF_HUB_CACHE) to it "
        f"(looked in: {offline.hub_cache_dir()})."
    )


def download(name: str = "gmem-v1-xl", revision: str | None = None, cache_dir=None) -> Path:
    """The local path of a Hub checkpoint file: from the cache when it is there (offline, or pinned to a commit,
    or the Hub is unreachable), else downloaded and its size (and sha256, for LFS files) checked."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    spec = HUB[name]
    cache_dir = Path(cache_dir) if cache_dir else offline.hub_cache_dir()
    cached = try_to_load_from_cache(spec["repo_id"], spec["filename"], cache_dir=cache_dir, revision=revision)
    cached = Path(cached) if isinstance(cached, str) else None
    pinned = revision is not None and len(revision) == 40  # a commit hash never changes: no need to ask the Hub
    if cached is not None and (pinned or offline.is_offline()):
        return cached
    if offline.is_offline():
        raise CheckpointUnavailable(how_to_get(name, f"HF_HUB_OFFLINE is set and revision {revision or 'main'!r} "
                                                     f"is not in the Hugging Face cache{partial_note(spec, cache_dir)}"))
    if not offline.hub_reachable():
        if cached is not None:
            return cached
        raise CheckpointUnavailable(how_to_get(name, f"the Hugging Face Hub is unreachable and the file is not "
                                                     f"cached{partial_note(spec, cache_dir)}"))
    try:
        path = Path(hf_hub_download(spec["repo_id"], spec["filename"], revision=revision, cache_dir=cache_dir))
    except Exception as e:  # network errors, a missing revision, a full disk: all end here with the how-to
        if disk_full(e):  # no other machine or copy helps here: the cache's disk is the problem
            raise CheckpointUnavailable(
                f"{name}: the disk of the Hugging Face cache ({cache_dir}) filled up while downloading "
                f"{spec['repo_id']}/{spec['filename']} ({spec['size']}, plus about 3.7 GB for its conversion beside "
                f"it). Free space there and run again (huggingface_hub resumes the partial download), or set "
                f"HF_HUB_CACHE (or HF_HOME) to a folder on a bigger disk and run again.") from e
        raise CheckpointUnavailable(how_to_get(name, f"the download failed ({type(e).__name__}: {e})")) from e
    verify_download(path, spec["repo_id"], spec["filename"], revision)
    return path


def disk_full(error: BaseException) -> bool:
    """Whether an error, or one it was raised from, is "No space left on device" (huggingface_hub may wrap it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def partial_note(spec: dict, cache_dir: Path) -> str:
    """What an interrupted download left in the cache (huggingface_hub resumes blobs/<sha256>.incomplete), so the
    user knows that a run with a network continues it rather than starting the 4.7 GB again."""
    blobs = Path(cache_dir) / f"models--{spec['repo_id'].replace('/', '--')}" / "blobs"
    parts = [p for p in blobs.glob("*.incomplete") if p.is_file()]
    if not parts:
        return ""
    biggest = max(parts, key=lambda p: p.stat().st_size)
    return (f" (an interrupted download is there: {biggest.stat().st_size / 1e9:.2f} GB of {spec['size']} in "
            f"{biggest}; a run where the Hub is reachable resumes it)")


def verify_download(path: Path, repo_id: str, filename: str, revision: str | None) -> None:
    """Size against the Hub's metadata (cheap). The sha256 (the LFS etag, which is also the blob's name in the
    cache) is checked once, when the file is converted (conversion_cache.ensure_converted), since it reads 4.7 GB."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    except Exception:  # metadata is a check, not a requirement: the sha256 check at conversion still applies
        return
    size = path.stat().st_size
    if meta.size is not None and meta.size != size:
        from .official import delete_hint  # imports torch: only on the way to an error

        raise CheckpointUnavailable(f"{path} has {size} bytes but the Hub says {meta.size}: the download is "
                                    f"incomplete or corrupt. {delete_hint(path, sentence=True)}.")
