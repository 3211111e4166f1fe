"""Named checkpoints and where their files come from.

- "emoji-32": the embedded default, shipped inside the package (gmem_explore/weights/emoji-32), no download.
- "gmem-v1-xl": the released GMem v1 SiT-XL/2 (Hugging Face `Tangentone/GMem`, 4.7 GB .pth), downloaded with
  huggingface_hub (revision pinnable, HF_HOME / HF_HUB_CACHE honoured, HF_HUB_OFFLINE honoured), checked, and
  converted once into a pickle-free folder beside the downloaded file (official.py converts,
  conversion_cache.py keeps it), then reused.
- "gmem-v2-xl-160ep", "gmem-v2-xl-600ep": GMem v2 (LightningDiT-XL/1 + the 1.28M-row ImageNet bank + hustvl's
  VA-VAE f16d32). Four files: the network and the bank from `Tangentone/GMem` (revision pinnable), the VA-VAE and its
  latent statistics from hustvl (main). The network and bank are converted once into a folder beside the network
  file (official_v2.py); the folder names the VA-VAE files as "hf://REPO/FILE", found in the cache when the pipeline
  loads (or in the folder $GMEM_VA_VAE). File names that cannot be confirmed offline are overridable by environment
  variables (HUB's and V2_FILES' "env").
- a local folder in our checkpoint format (see folder.py).
- a local released-format .pth file (e.g. the official file copied from elsewhere): converted once, then reused.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .. import offline

WEIGHTS = Path(__file__).parent.parent / "weights"
DEFAULT_NAME = "emoji-32"
EMBEDDED = {"emoji-32": WEIGHTS / "emoji-32"}
# name -> where the released file lives on the Hub
HUB = {"gmem-v1-xl": {"repo_id": "Tangentone/GMem", "filename": "GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth",
                      "size": "4.7 GB"},
       # v2: "filename" is the network file; the other files are V2_FILES. The 160-epoch name is the model card's
       # (GMEM.md). The 600-epoch name could not be confirmed offline: it follows the 160-epoch file's pattern and
       # $GMEM_V2_600EP_NETWORK_FILE replaces it. LightningDiT-XL/1 in fp32: about 2.7 GB.
       "gmem-v2-xl-160ep": {"repo_id": "Tangentone/GMem", "filename": "GMem_XL_160Epoch_in1k256_network.pth",
                            "size": "about 2.7 GB", "generation": 2, "env": "GMEM_V2_160EP_NETWORK_FILE"},
       "gmem-v2-xl-600ep": {"repo_id": "Tangentone/GMem", "filename": "GMem_XL_600Epoch_in1k256_network.pth",
                            "size": "about 2.7 GB", "generation": 2, "env": "GMEM_V2_600EP_NETWORK_FILE",
                            "unconfirmed": True}}
VAVAE_REPO = "hustvl/vavae-imagenet256-f16d32-dinov2"  # hustvl's README and LightningDiT's docs/tutorial.md
# The other files of a v2 checkpoint, shared by both networks. The bank's name on the Hub could not be confirmed
# offline: the default is the name upstream's configs/gmem_sde_xl.yaml gives the full 1.28M bank
# (GMem.bank_path, bank_type 'full'); $GMEM_V2_BANK_FILE replaces it, and either upstream layout (a bare tensor,
# 'full', or the low-rank dict, 'dmd') is recognised from the file itself. Upstream's README links the VA-VAE to a
# LightningDiT file by mistake; the VA-VAE and latents_stats.pt live in VAVAE_REPO.
V2_FILES = {
    "bank": {"repo_id": "Tangentone/GMem", "filename": "in1k256_Kfull_dim768_init_seed0.pth", "size":
             "about 3.9 GB (1.28M x 768 fp32)", "env": "GMEM_V2_BANK_FILE", "unconfirmed": True},
    "vavae": {"repo_id": VAVAE_REPO, "filename": "vavae-imagenet256-f16d32-dinov2.pt", "size": "about 0.8 GB",
              "env": "GMEM_VAVAE_FILE", "fixed_revision": True},
    "stats": {"repo_id": VAVAE_REPO, "filename": "latents_stats.pt", "size": "1 kB", "env": "GMEM_VAVAE_STATS_FILE",
              "fixed_revision": True},
}
VA_VAE_ENV = "GMEM_VA_VAE"  # a local folder holding the VA-VAE file and latents_stats.pt, used instead of the Hub
HF_PREFIX = "hf://"  # how a checkpoint folder names a Hub file: hf://REPO_OWNER/REPO_NAME/FILE
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
                       autoencoder_overrides: dict | None = None, **kwargs) -> Path:
    """A local checkpoint folder for a name or a path (downloading and converting the released model once).

    `model_overrides` (keywords of build_model on top of SiT-XL/2, or LightningDiT-XL/1 for a v2 name) describe a
    released-format .pth of another size, and `autoencoder_overrides` (LDMConfig keywords) a VA-VAE of another size;
    the tests use them for tiny models in the official layouts."""
    if kwargs:
        raise TypeError(f"resolve_checkpoint got unknown options {sorted(kwargs)}")
    name = checkpoint_name(name_or_path)
    check_revision(name_or_path, revision)
    if name in EMBEDDED:
        folder = EMBEDDED[name]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"The embedded checkpoint {name!r} is missing from {folder}; reinstall gmem-explore")
        return folder
    if name in HUB and HUB[name].get("generation") == 2:
        from .conversion_cache import ensure_converted_v2  # imports torch: hub.py is read by the CLI before torch

        files = download_v2(name, revision=revision, cache_dir=cache_dir)
        return ensure_converted_v2(files, bank_dtype, progress=progress, model_overrides=model_overrides,
                                   autoencoder_overrides=autoencoder_overrides, names=vavae_names(name),
                                   info={"name": name})
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


def how_to_get(name: str, why: str, spec: dict | None = None) -> str:
    """How to get the file `spec` (default: the name's one file) of a Hub checkpoint without this machine's network."""
    spec = spec or HUB[name]
    if HUB[name].get("generation") == 2:
        return how_to_get_v2(name, why, spec)
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


def how_to_get_v2(name: str, why: str, spec: dict) -> str:
    files = v2_specs(name)
    lines = [f"       hf download {f['repo_id']} {f['filename']} --local-dir DIR" for f in files.values()]
    unsure = [f"{f['filename']} (set {f['env']} to its real name if the Hub's differs)" for f in files.values()
              if f.get("unconfirmed")]
    note = f"\n  File names not confirmed offline: {'; '.join(unsure)}." if unsure else ""
    return (
        f"{name}: {why}. The missing file is {spec['repo_id']}/{spec['filename']} ({spec['size']}); a GMem v2 "
        f"checkpoint is four files. Either\n"
        f"  1. download them where a network exists:\n" + "\n".join(lines) + "\n"
        f"     copy DIR here and convert once:\n"
        f"       gmem convert DIR/{files['network']['filename']} OUT/ --bank DIR/{files['bank']['filename']} "
        f"--vavae DIR/{files['vavae']['filename']} --stats DIR/{files['stats']['filename']}\n"
        f"     then pass OUT/ wherever a checkpoint goes (or set {VA_VAE_ENV}=DIR for the VA-VAE files alone); or\n"
        f"  2. copy a Hugging Face cache that holds them and set HF_HOME (or HF_HUB_CACHE) to it "
        f"(looked in: {offline.hub_cache_dir()}).{note}"
    )


def v2_specs(name: str) -> dict[str, dict]:
    """role -> {repo_id, filename, size, ...} of a v2 name's files (network, bank, vavae, stats), the environment's
    file names applied (read at call time)."""
    specs = {"network": HUB[name], **V2_FILES}
    return {role: {**spec, "filename": os.environ.get(spec["env"]) or spec["filename"]} for role, spec in specs.items()}


def vavae_names(name: str = "gmem-v2-xl-160ep") -> dict[str, str]:
    """The "hf://REPO/FILE" names a converted v2 folder records for its VA-VAE files (checkpoint, stats): hustvl's,
    the environment's file names applied."""
    specs = v2_specs(name)
    return {"checkpoint": hf_name(specs["vavae"]), "stats": hf_name(specs["stats"])}


def hf_name(spec: dict) -> str:
    return f"{HF_PREFIX}{spec['repo_id']}/{spec['filename']}"


def download_v2(name: str, revision: str | None = None, cache_dir=None) -> dict[str, Path]:
    """role -> local path of a v2 name's four files: the network and bank at `revision` of Tangentone/GMem, the
    VA-VAE files at hustvl's main (or from the $GMEM_VA_VAE folder). Each fails fast offline with the how-to."""
    files = {}
    for role, spec in v2_specs(name).items():
        if role in ("vavae", "stats") and os.environ.get(VA_VAE_ENV):
            files[role] = local_vavae_file(spec["filename"], role)
        else:
            files[role] = download(name, None if spec.get("fixed_revision") else revision, cache_dir, spec)
    return files


def local_vavae_file(filename: str, role: str) -> Path:
    path = Path(os.environ[VA_VAE_ENV]).expanduser() / filename
    if not path.is_file():
        what = "latent statistics" if role == "stats" else "checkpoint"
        raise CheckpointUnavailable(f"{VA_VAE_ENV} is set to {os.environ[VA_VAE_ENV]}, which has no {filename} (the "
                                    f"VA-VAE {what}): copy it there (hf download {VAVAE_REPO} {filename} --local-dir "
                                    f"DIR), or unset {VA_VAE_ENV} to use the Hugging Face cache")
    return path


def autoencoder_file(value, role: str, folder=None) -> Path:
    """A VA-VAE file a checkpoint's "autoencoder" section names: "hf://REPO/FILE" (from $GMEM_VA_VAE when set, else
    the Hugging Face cache, downloaded when the Hub is reachable; offline it fails at once with the how-to), or a path,
    a relative one read from the checkpoint folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"the checkpoint's autoencoder section names no VA-VAE {role} file (got {value!r}): give a "
                         f"path or an {HF_PREFIX}OWNER/REPO/FILE name")
    if value.startswith(HF_PREFIX):
        parts = value[len(HF_PREFIX):].split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{value!r} is not a Hub file name: write {HF_PREFIX}OWNER/REPO/FILE")
        if os.environ.get(VA_VAE_ENV):
            return local_vavae_file(parts[2], role)
        spec = {"repo_id": f"{parts[0]}/{parts[1]}", "filename": parts[2], "size": "see the Hub"}
        return download(f"VA-VAE {role}", None, None, spec)
    path = Path(value).expanduser()
    if not path.is_absolute() and folder is not None:
        path = Path(folder) / path
    if not path.is_file():
        raise FileNotFoundError(f"The VA-VAE {role} file {path} named by the checkpoint's config.json is missing: "
                                f"put it back, or edit config.json's \"autoencoder\".{role} to where it is")
    return path


def unavailable(name: str, why: str, spec: dict) -> str:
    """how_to_get for a named checkpoint's file; for a VA-VAE file a checkpoint folder names, its own how-to."""
    if name in HUB:
        return how_to_get(name, why, spec)
    return (f"{name} {spec['repo_id']}/{spec['filename']}: {why}. Download it where a network exists "
            f"(hf download {spec['repo_id']} {spec['filename']} --local-dir DIR), copy DIR here and set "
            f"{VA_VAE_ENV}=DIR (a folder with the VA-VAE file and latents_stats.pt), or set HF_HOME (or HF_HUB_CACHE) "
            f"to a Hugging Face cache that holds it (looked in: {offline.hub_cache_dir()}).")


def download(name: str = "gmem-v1-xl", revision: str | None = None, cache_dir=None, spec: dict | None = None) -> Path:
    """The local path of a Hub checkpoint file (`spec`, default the name's one file): from the cache when it is there
    (offline, or pinned to a commit, or the Hub is unreachable), else downloaded and its size (and sha256, for LFS
    files) checked."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    spec = spec or HUB[name]
    cache_dir = Path(cache_dir) if cache_dir else offline.hub_cache_dir()
    cached = try_to_load_from_cache(spec["repo_id"], spec["filename"], cache_dir=cache_dir, revision=revision)
    cached = Path(cached) if isinstance(cached, str) else None
    pinned = revision is not None and len(revision) == 40  # a commit hash never changes: no need to ask the Hub
    if cached is not None and (pinned or offline.is_offline()):
        return cached
    if offline.is_offline():
        why = (f"HF_HUB_OFFLINE is set and revision {revision or 'main'!r} is not in the Hugging Face cache"
               f"{partial_note(spec, cache_dir)}")
        raise CheckpointUnavailable(unavailable(name, why, spec))
    if not offline.hub_reachable():
        if cached is not None:
            return cached
        why = f"the Hugging Face Hub is unreachable and the file is not cached{partial_note(spec, cache_dir)}"
        raise CheckpointUnavailable(unavailable(name, why, spec))
    try:
        path = Path(hf_hub_download(spec["repo_id"], spec["filename"], revision=revision, cache_dir=cache_dir))
    except Exception as e:  # network errors, a missing revision, a full disk: all end here with the how-to
        if disk_full(e):  # no other machine or copy helps here: the cache's disk is the problem
            raise CheckpointUnavailable(
                f"{name}: the disk of the Hugging Face cache ({cache_dir}) filled up while downloading "
                f"{spec['repo_id']}/{spec['filename']} ({spec['size']}, plus about 3.7 GB for its conversion beside "
                f"it). Free space there and run again (huggingface_hub resumes the partial download), or set "
                f"HF_HUB_CACHE (or HF_HOME) to a folder on a bigger disk and run again.") from e
        raise CheckpointUnavailable(unavailable(name, f"the download failed ({type(e).__name__}: {e})", spec)) from e
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
