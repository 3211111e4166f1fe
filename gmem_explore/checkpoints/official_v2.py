"""GMem v2's released files -> our checkpoint folder (config.json, model.safetensors, bank.safetensors).

Upstream (LINs-lab/GMem since February 2025) ships a v2 model as separate files:
    network  a LightningDiT-XL/1 state_dict, bare or as {"ema": ...} (utils/loading.py get_model);
             on the Hub: Tangentone/GMem GMem_XL_160Epoch_in1k256_network.pth
    bank     utils/svd_utils.py, either layout: `full`, a bare (N, 768) tensor (datasets/construct_memory_bank.py
             saves torch.cat of the snippets), or `dmd`, the dict {C (N, d), M (768, d), S (d,), mean (768,),
             latent_dim, feature_dim} with row i = C[i] @ M.T + mean (C = U sqrt(S), M = V sqrt(S))
    VA-VAE   hustvl's vavae-imagenet256-f16d32-dinov2.pt and latents_stats.pt (autoencoders/va_vae.py)
Each .pth is read with torch.load(weights_only=True, mmap=True), and checked before anything is written: a file of the
other generation (v1's dict, a v1 SiT network) or of the other role (a bank given as the network) is named as what it
looks like. The bank is written row slice by row slice (a `dmd` bank is expanded slice by slice), so the 1.28M x 768
rows are never held twice. The VA-VAE is not copied: config.json names its files (paths, or hf://REPO/FILE names
for a Hub checkpoint) and the recipe: gmem-v2's sampler and uniform rows (upstream's torch.randint).

    gmem convert NETWORK.pth OUT/ --bank BANK.pth --vavae vavae-imagenet256-f16d32-dinov2.pt --stats latents_stats.pt
    convert_official_v2("NETWORK.pth", "BANK.pth", "OUT/", vavae=..., stats=..., bank_dtype="fp16")
"""
from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import torch

from ..autoencoders.ldm import LDMConfig
from ..autoencoders.va_vae import check_files as check_vavae_files
from ..models.lightningdit import upstream_state
from ..models.registry import build_model, model_config
from ..models.sit import load_network_state
from ..safefiles import write_bytes_atomic
from ..sampling.settings import RECIPES
from .folder import FORMAT
from .official_layouts import looks_like
from .official import (BANK_DTYPES, UnsafeCheckpointError, _not_a_torch_file, _unpickling_reason,
                       assembled_folder, check_source_path, expected_sha256_from_cache, file_sha256, no_space,
                       remove_stale_partials,
                       snapshot_commit)
from ..bank.lowrank import LowRankRows
from ..safefiles import write_streaming

V2_REPO = "Tangentone/GMem"
V2_MODEL = "LightningDiT-XL/1"
DMD_KEYS = ("C", "M", "S", "mean", "latent_dim", "feature_dim")  # utils/svd_utils.py DMDMemoryBank.save
AUTOENCODER = {"type": "va-vae", "image_size": 256, "multiplier": 1.0}  # configs/gmem_sde_xl.yaml latent_multiplier
# the bank's encoder and how it read images (encoders/dinov2.py: ADM crop to 256, normalise, then bicubic to 224)
ENCODER = {"type": "dinov2", "source": "facebook/dinov2-base", "image_size": 224, "dim": 768, "preprocess": "gmem-v2"}
SAMPLER = RECIPES["gmem-v2"].to_config()  # the released recipe: SDE Heun, 50 time points, 99 evaluations
CHOOSE = "uniform"  # upstream draws rows with torch.randint


def about(rows: int) -> str:
    """The app's one-paragraph note on a converted v2 model (config "about"), in a visitor's words."""
    return (f"GMem v2 (upstream's code since 2025): a LightningDiT-XL/1 that draws 256 px images through the VA-VAE "
            f"from a memory bank of {rows:,} DINOv2 snippets (all of ImageNet's training images in the released "
            f"bank), rows drawn uniformly. A row gives varied images of its source image's kind, one per seed; two "
            f"rows mixed, or an uploaded photo, give new ones. Upstream reports FID 1.53 after 160 epochs and 1.32 "
            f"after 600, without guidance.")


def read_pth(path, role: str):
    """The contents of a .pth, tensors only (memory-mapped when it is a zip); a ValueError for a file that is not a
    torch file or is truncated, UnsafeCheckpointError for a pickle that asks to run code."""
    path = check_source_path(path)
    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise ValueError(f"{path} (the {role}) is not a PyTorch .pth at all: {not_torch}. Check the path, or download "
                         f"the file again if it is a cut-off download or an error page.")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format: no mmap
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"Refused to load {path} (the {role}): it is a pickle that asks to run code or "
                                    f"build objects that are not plain tensors ({_unpickling_reason(str(e))}). Nothing from "
                                    f"it was executed; download the file again from {V2_REPO}.") from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, TypeError) as e:
        raise ValueError(f"Could not read {path} (the {role}) as a torch checkpoint ({e}). The file is truncated or "
                         f"damaged: delete it and download it again. Nothing was written.") from None


def v1_hint(kind: str) -> str:
    return (" It belongs to GMem v1: convert the v1 release alone, `gmem convert FILE.pth OUT/` "
            "(convert_official), without --bank." if "v1" in kind else "")


def network_state(obj, path) -> dict:
    """The LightningDiT state_dict inside a network file, or a ValueError naming what the file looks like."""
    kind = looks_like(obj)
    if "v2 LightningDiT network" not in kind:
        raise ValueError(f"{path} was given as a GMem v2 network but looks like {kind}.{v1_hint(kind)} Nothing was "
                         f"written.")
    state = upstream_state(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def bank_rows(obj, path, dim: int):
    """(rows: a tensor or LowRankRows, layout "full" | "dmd") of a v2 bank file, checked: 2-D float rows of width
    `dim` (the network's snippet width); a ValueError naming what the file is otherwise."""
    kind = looks_like(obj)
    if "memory bank" not in kind:
        raise ValueError(f"{path} was given as a GMem v2 memory bank but looks like {kind}.{v1_hint(kind)} Nothing "
                         f"was written.")
    if torch.is_tensor(obj):
        if obj.ndim != 2 or not obj.is_floating_point() or obj.shape[0] == 0:
            raise ValueError(f"{path}: a 'full' bank must be a non-empty 2-D float tensor (rows x {dim}); got "
                             f"{tuple(obj.shape)} {obj.dtype}. Nothing was written.")
        width, rows, layout = obj.shape[1], obj, "full"
    else:
        missing = [k for k in DMD_KEYS if k not in obj]
        coeffs, basis, mean = obj["C"], obj["M"], obj["mean"]
        tensors = all(torch.is_tensor(t) and t.is_floating_point() for t in (coeffs, basis, mean))
        if missing or not tensors or coeffs.ndim != 2 or basis.ndim != 2 or coeffs.shape[1] != basis.shape[1] \
                or mean.numel() != basis.shape[0] or int(obj["feature_dim"]) != basis.shape[0]:
            shapes = {k: tuple(obj[k].shape) if torch.is_tensor(obj[k]) else obj[k] for k in DMD_KEYS if k in obj}
            raise ValueError(f"{path}: a 'dmd' bank holds C (N, d), M (feature_dim, d), S (d,), mean (feature_dim,), "
                             f"latent_dim and feature_dim; this one has {shapes}"
                             f"{f', missing {missing}' if missing else ''}. Nothing was written.")
        width, rows, layout = basis.shape[0], LowRankRows(coeffs, basis, mean), "dmd"
    if width != dim:
        raise ValueError(f"{path}: the bank's rows have {width} values but the network's condition_projection takes "
                         f"{dim} (DINOv2-B/14 snippets: 768): this bank belongs to another model. Nothing was written.")
    return rows, layout


def check_network(state: dict, model: str | None, overrides: dict, path):
    """The network's config, after a strict check of `state` against it on the meta device (no weights allocated)."""
    with torch.device("meta"):
        skeleton = build_model(model, backbone="lightningdit", **overrides)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": exactly what we want here
            load_network_state(skeleton, state)
    except ValueError as e:
        asked = model if not overrides else f"{model or 'LightningDiT'} with {overrides}"
        raise ValueError(f"{path} is a GMem v2 network but not {asked}: {e} Nothing was written.") from None
    return skeleton.config


def checked_sha256(path: Path, progress: bool) -> str | None:
    """The Hugging Face cache's record of a file's sha256 (its blob's name), checked against the file; None outside
    a cache."""
    expected = expected_sha256_from_cache(path)
    if expected and file_sha256(path, progress) != expected:
        raise ValueError(f"{path} is corrupt: its sha256 differs from {expected}, the Hub's (the name of its blob in "
                         f"the Hugging Face cache). Delete {Path(path).resolve()} and run again where a network "
                         f"exists. Nothing was written.")
    return expected


def file_record(path: Path, sha256: str | None) -> dict:
    st = path.stat()
    return {"file": path.name, "revision": snapshot_commit(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha256}


def convert_official_v2(network_pth, bank_pth, out_folder, vavae=None, stats=None, bank_dtype: str = "fp16",
                        model: str | None = V2_MODEL, model_overrides: dict | None = None,
                        autoencoder_overrides: dict | None = None, names: dict | None = None,
                        encoder: dict | None = None, info: dict | None = None, progress: bool = False) -> Path:
    """Convert upstream's v2 network .pth and bank .pth (either layout) into a checkpoint folder.

    `vavae` and `stats` are the VA-VAE files (checked key by key now, and recorded as absolute paths); without them
    the folder names hustvl's files on the Hub. `names` ({"checkpoint", "stats"}) records other names for them (a Hub
    checkpoint records hf://REPO/FILE, so that a copied cache keeps working). `model_overrides` (build_model keywords
    on top of LightningDiT-XL/1) and `autoencoder_overrides` (LDMConfig keywords) describe files of other sizes.
    The folder is assembled in a hidden sibling and renamed into place: `out_folder` is complete or absent."""
    if bank_dtype not in BANK_DTYPES:
        raise ValueError(f"bank_dtype must be one of {sorted(BANK_DTYPES)}; got {bank_dtype!r}")
    network_pth, bank_pth, out = (Path(p).expanduser() for p in (network_pth, bank_pth, out_folder))
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a checkpoint; delete it or choose another folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    for given, what in ((model_overrides, "build_model"), (autoencoder_overrides, "LDMConfig")):
        if given is not None and not isinstance(given, dict):
            raise TypeError(f"overrides must be a dict of {what} keywords or None; got {type(given).__name__}")
    overrides = dict(model_overrides or {})
    model_config(model, backbone="lightningdit", **overrides)  # an unknown size or keyword: before reading GBs
    ldm = LDMConfig(**(autoencoder_overrides or {}))
    if (vavae is None) != (stats is None):
        raise ValueError("give both the VA-VAE checkpoint (vavae=, --vavae) and its latents_stats.pt (stats=, "
                         "--stats), or neither (then the folder names hustvl's files on the Hub)")
    if vavae is None and not {"checkpoint", "stats"} <= set(names or {}):
        raise ValueError("name the VA-VAE: vavae= and stats= (paths), or names={'checkpoint': ..., 'stats': ...} "
                         "(hf://REPO/FILE; hub.vavae_names(name) gives hustvl's)")
    sha = {role: checked_sha256(check_source_path(p), progress) for role, p in (("network", network_pth),
                                                                               ("bank", bank_pth))}
    raw = read_pth(network_pth, "network")
    state = network_state(raw, network_pth)
    config = check_network(state, model, overrides, network_pth)
    rows, layout = bank_rows(read_pth(bank_pth, "memory bank"), bank_pth, config.snippet_dim)
    n_rows = rows.shape[0]
    if vavae is not None:
        vavae, stats = Path(vavae).expanduser().absolute(), Path(stats).expanduser().absolute()
        check_vavae_files(vavae, stats, ldm)
    if ldm.z_channels != config.in_channels:
        raise ValueError(f"the VA-VAE's latents have {ldm.z_channels} channels but the network takes "
                         f"{config.in_channels}: they do not belong together. Nothing was written.")
    recorded = {"checkpoint": str(vavae), "stats": str(stats)} if vavae is not None else {}
    recorded.update(names or {})
    autoencoder = {**AUTOENCODER, "image_size": config.input_size * ldm.factor, **recorded}
    if autoencoder_overrides:
        autoencoder["ldm"] = {k: list(v) if isinstance(v, tuple) else v for k, v in autoencoder_overrides.items()}

    # DINOv2-B/14 made the released bank; a bank of another width (a tiny test model) has no known encoder
    default_encoder = ENCODER if config.snippet_dim == ENCODER["dim"] else None
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    network_bytes = sum(t.numel() * t.element_size() for t in state.values())
    needed = network_bytes + rows.shape[0] * rows.shape[1] * BANK_DTYPES[bank_dtype].itemsize + (1 << 20)
    free = shutil.disk_usage(out.parent).free
    if free < needed:  # refused before a byte is written
        raise no_space(network_pth, out, needed, free)
    bar = None
    try:
        with assembled_folder(out, network_pth, needed) as work:
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=needed - (1 << 20), unit="B", unit_scale=True, desc="converting")
            step = bar.update if bar is not None else None
            write_streaming(work / "model.safetensors", state, progress=step)
            state = raw = None  # drop the mapping of the network before the bank is streamed
            bank_meta = {"format": "gmem-explore-bank-1", "label_names": None,
                         "origin": f"{bank_pth.name}, upstream's '{layout}' layout (unnormalised; normalised at use)"}
            write_streaming(work / "bank.safetensors", {"rows": rows}, dtypes={"rows": BANK_DTYPES[bank_dtype]},
                            metadata=bank_meta, progress=step)
            full = {"format": FORMAT, "model": config.to_dict(), "autoencoder": autoencoder,
                    "encoder": encoder if encoder is not None else default_encoder,
                    "sampler": dict(SAMPLER), "choose": CHOOSE, "generation": 2,
                    "name": network_pth.stem,
                    "source": {"repo": V2_REPO, **file_record(network_pth, sha["network"]), "bank_dtype": bank_dtype,
                               "bank": {**file_record(bank_pth, sha["bank"]), "layout": layout}},
                    "licence": "MIT (GMem weights, Tangentone/GMem); VA-VAE: hustvl's licence",
                    "about": about(n_rows), **(info or {})}
            write_bytes_atomic(work / "config.json", json.dumps(full, indent=2).encode())
    finally:
        if bar is not None:
            bar.close()
    return out
