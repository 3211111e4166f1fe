"""Our own checkpoint format: a folder of safetensors files plus one JSON config, pickle-free.

    config.json          {"format": "gmem-explore-1", "model": {...}, "autoencoder": {...},
                          "encoder": {...} | null, "sampler": {"method": ..., "steps": ...},
                          "choose": "noise" | "uniform" | "frequency", ...}
    model.safetensors    network weights (EMA weights for trained models)
    bank.safetensors     the memory bank (see bank/memory.py)

"model" is a SiT config (v1, no "backbone" key) or {"backbone": "lightningdit", ...} (v2): models/registry.py builds
either. "choose" is the checkpoint's rule for picking bank rows when generate() is given none: v1 draws them from the
initial noise by frequency ("noise", the default when the key is absent), v2 uniformly ("uniform", upstream's
torch.randint). "autoencoder" is {"type": "pixels"}, {"type": "sd-vae", ...} or {"type": "va-vae", "checkpoint": ...,
"stats": ...} (paths, relative ones read from the folder, or "hf://REPO/FILE" names; see checkpoints/hub.py).
    encoder.safetensors  the snippet encoder's weights, when the config names one

Every file is written atomically; a folder is complete once config.json (written last) exists. Saving over an
existing folder replaces it as a whole (see save_checkpoint), so a killed save leaves the old checkpoint or the
new one, never the model of one save with the bank or config of another.
"""
from __future__ import annotations

import errno
import math
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..bank.memory import MemoryBank
from ..models.registry import BACKBONES, config_from_dict, network_for
from ..models.sit import load_network_state
from ..safefiles import load_tensors, save_tensors, write_bytes_atomic
from ..values import is_whole
from ..encoders.conv import encoder_from_config
from ..sampling.settings import RECIPES, SamplerSettings

FORMAT = "gmem-explore-1"
CHOOSE_RULES = ("noise", "frequency", "uniform")  # generate()'s `choose` values a checkpoint may default to


@dataclass
class Checkpoint:
    model: nn.Module  # GMemSiT (v1) or LightningDiT (v2)
    bank: MemoryBank
    autoencoder: dict = field(default_factory=lambda: {"type": "pixels"})
    encoder: object | None = None
    sampler: SamplerSettings = field(default_factory=lambda: RECIPES["gmem-v1"])  # config.json's "sampler"
    info: dict = field(default_factory=dict)  # name, description, training figures, licence notes
    choose: str = "noise"  # config.json's "choose": how generate() picks rows when given none
    folder: Path | None = None  # where it was loaded from (relative autoencoder paths are read from there)


CHECKPOINT_FILES = ("config.json", "model.safetensors", "bank.safetensors", "encoder.safetensors")


def save_checkpoint(folder, ckpt: Checkpoint, bank_dtype: torch.dtype | None = None) -> Path:
    """Write the folder. The files go into a hidden sibling folder first; that is renamed into place (an existing
    folder is renamed aside just before and deleted just after), so a crash at any moment leaves the old
    checkpoint or the new one. Other files in an existing folder (notes, trainer state) are carried over."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.saving-", dir=folder.parent))
    os.chmod(staging, folder.stat().st_mode & 0o7777 if folder.exists() else 0o755)  # mkdtemp makes it 0700
    try:
        _write_checkpoint_files(staging, ckpt, bank_dtype)
        if folder.exists():
            for extra in folder.iterdir():
                if extra.name not in CHECKPOINT_FILES and not extra.name.startswith("."):
                    target = staging / extra.name
                    if extra.is_dir():
                        shutil.copytree(extra, target)
                    else:
                        try:
                            os.link(extra, target)  # no copy of a large trainer state; the old name goes away below
                        except OSError:
                            shutil.copy2(extra, target)
            aside = folder.parent / f".{folder.name}.old-{staging.name.rsplit('-', 1)[-1]}"
            os.rename(folder, aside)
            os.rename(staging, folder)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(staging, folder)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # it named the hidden staging folder, now gone
            raise OSError(errno.ENOSPC, f"No space left on device while saving {folder}: the checkpoint needs about "
                                        f"{checkpoint_bytes(ckpt, bank_dtype) / 1e9:.2f} GB free in {folder.parent} "
                                        f"(nothing was left behind; an existing checkpoint there is unchanged). "
                                        f"Free some space, or save to another disk") from e
        raise
    for stale in folder.parent.glob(f".{folder.name}.saving-*"):  # left by saves that were killed
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.parent.glob(f".{folder.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def checkpoint_bytes(ckpt: Checkpoint, bank_dtype=None) -> int:
    """About how many bytes a saved checkpoint takes: every tensor of the network, bank and encoder."""
    def size(t):
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    bank = ckpt.bank
    rows = len(bank) * bank.dim * (bank_dtype or bank.dtype).itemsize
    parts = [bank.column(name) for name in ("freq", "labels", "thumbnails")]  # as stored: nothing is copied
    encoder = ckpt.encoder.state_dict().values() if ckpt.encoder is not None else ()
    return (sum(map(size, ckpt.model.state_dict().values())) + rows
            + sum(math.prod(p.shape) * p.dtype.itemsize for p in parts if p is not None)
            + sum(map(size, encoder)))


def interrupted_save(folder) -> Path | None:
    """The complete copy a save killed between its two renames left beside a missing folder (new, else old)."""
    folder = Path(folder)
    for pattern in (f".{folder.name}.saving-*", f".{folder.name}.old-*"):
        done = [p for p in folder.parent.glob(pattern) if (p / "config.json").is_file()]
        if done:
            return max(done, key=lambda p: (p / "config.json").stat().st_mtime)
    return None


def _write_checkpoint_files(folder: Path, ckpt: Checkpoint, bank_dtype) -> None:
    save_tensors(folder / "model.safetensors", ckpt.model.state_dict())
    ckpt.bank.save(folder / "bank.safetensors", dtype=bank_dtype)
    encoder_cfg = None
    if ckpt.encoder is not None:
        encoder_cfg = ckpt.encoder.config_dict()
        save_tensors(folder / "encoder.safetensors", ckpt.encoder.state_dict())
    config = {"format": FORMAT, "model": ckpt.model.config.to_dict(), "autoencoder": ckpt.autoencoder,
              "encoder": encoder_cfg, "sampler": SamplerSettings.from_config(ckpt.sampler).to_config(),
              "choose": ckpt.choose, **{k: v for k, v in ckpt.info.items() if k != "choose"}}
    write_bytes_atomic(folder / "config.json", json.dumps(config, indent=2).encode())


AGAIN = "Copy the checkpoint folder again, or save it again (save_checkpoint, `gmem convert`)"
WEIGHTS_ELSEWHERE = ("dinov2",)  # snippet encoders whose config names their source instead of an encoder.safetensors
SECTIONS = ("autoencoder", "encoder", "sampler", "training")  # objects (or null) that the loaders call .get on


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} is damaged: {what}. {AGAIN}.")


def _check_model_section(path: Path, model) -> None:
    """Each model size a positive integer and each ratio a number, named by its key; then the config class's own
    checks (unknown keys, geometry), whose message is kept and said to come from config.json. The config class is
    the backbone's ("backbone": "lightningdit"; none: SiT, as every v1 folder)."""
    if not isinstance(model, dict):
        raise _damaged(path, f"its \"model\" entry is {_short(model)}, not an object of model sizes")
    backbone = model.get("backbone", "sit")
    if backbone not in BACKBONES:
        raise ValueError(f"{path} describes a network of backbone {backbone!r}, which this version of gmem-explore "
                         f"does not know (it knows {sorted(BACKBONES)}): upgrade gmem-explore to load it")
    config_class = BACKBONES[backbone].config_class
    kinds = {f.name: type(f.default).__name__ for f in fields(config_class)}  # "int", "float" or "bool"
    for key, value in model.items():
        kind = kinds.get(key)
        if kind == "int" and not is_whole(value, 1):
            raise _damaged(path, f"\"model\".{key} is {_short(value)}, not a positive integer")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _damaged(path, f"\"model\".{key} is {_short(value)}, not a number")
        if kind == "bool" and not isinstance(value, bool):
            raise _damaged(path, f"\"model\".{key} is {_short(value)}, not true or false")
    unknown = sorted(set(model) - set(kinds) - {"backbone"})
    if unknown:  # a setting this version cannot build: written by a newer gmem-explore, not damaged
        raise ValueError(f"{path} describes a network with settings this version of gmem-explore does not know "
                         f"(Unknown model config keys {unknown}; known keys: {sorted(kinds)}). It was probably "
                         f"written by a newer gmem-explore: upgrade gmem-explore to load this checkpoint (if no "
                         f"version wrote it, the file is damaged: {AGAIN.lower()}).")
    try:
        config_from_dict(model)
    except (ValueError, TypeError) as e:
        raise _damaged(path, f"its \"model\" entry is not a valid network ({e})") from e


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or value == value else "NaN"
    return f"{text[:60]}..." if len(text) > 60 else text


def read_config(folder) -> dict:
    """config.json as a dict, checked: a JSON object of this format whose sections have the right kinds and whose
    model settings build a network. Anything else is a ValueError naming config.json and the wrong key."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a gmem-explore checkpoint folder: it has no config.json "
                                f"(give the folder save_checkpoint or `gmem convert` wrote)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: copy or save it again") from None
    if not isinstance(config, dict):
        raise _damaged(path, f"it holds {_short(config)} (a JSON {type(config).__name__}), not the object of "
                             f"settings a checkpoint's config.json holds")
    if config.get("format") != FORMAT:
        newer = isinstance(config.get("format"), str) and config["format"].startswith(FORMAT.rsplit("-", 1)[0])
        raise ValueError(f"{path} has format {config.get('format')!r}; this version reads {FORMAT!r}" + (
            ": the checkpoint was written by another version of gmem-explore; upgrade gmem-explore to load it"
            if newer else ": it is not a gmem-explore checkpoint folder"))
    if "model" not in config:
        raise _damaged(path, "it has no \"model\" entry (the network's sizes)")
    _check_model_section(path, config["model"])
    for key in SECTIONS:
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise _damaged(path, f"its \"{key}\" entry is {_short(config[key])}, not an object (or null)")
    if config.get("choose", "noise") not in CHOOSE_RULES:
        raise _damaged(path, f"its \"choose\" entry is {_short(config['choose'])}, not one of {list(CHOOSE_RULES)}")
    training = config.get("training") or {}
    if training.get("config") is not None and not isinstance(training["config"], dict):
        raise _damaged(path, f"\"training\".config is {_short(training['config'])}, not an object (or null)")
    return config


def load_checkpoint(folder, device="cpu") -> Checkpoint:
    folder = Path(folder)
    if not folder.exists() and interrupted_save(folder) is not None:
        folder = interrupted_save(folder)  # read it where it lies; loading never moves files
    config = read_config(folder)
    condition = ((config.get("training") or {}).get("config") or {}).get("condition", "snippet")
    if condition != "snippet":  # written by versions before Trainer.export refused these baselines
        raise ValueError(f"{folder} was trained with condition={condition!r}, a baseline for comparison: its network "
                         f"never saw bank snippets, so sampling it from the bank gives meaningless images. Sample it "
                         f"with Trainer.sample after Trainer.load_state, or train with condition='snippet'.")
    # Built on the meta device, then given uninitialised memory on the target device: no random initialisation
    # (SiT-XL/2: 675M parameters, seconds of CPU) and no second copy, since the strict load overwrites every tensor.
    with torch.device("meta"):
        model = network_for(config_from_dict(config["model"]))
    model = model.to_empty(device=device)
    # Memory-mapped: the weights are copied once into the model, never held twice (2.7 GB for SiT-XL/2).
    state, _ = load_tensors(folder / "model.safetensors", mmap=True)
    whole = sorted(k for k, v in state.items() if not v.is_floating_point())
    if whole:  # load_state_dict would cast integers into the float weights without a word
        raise _damaged(folder / "model.safetensors", f"tensors {whole[:4]} hold {state[whole[0]].dtype} values, "
                                                     f"where the network's weights are floating point")
    load_network_state(model, state)
    del state
    model.eval()
    bank = MemoryBank.load(folder / "bank.safetensors")
    if bank.dim != model.config.snippet_dim:
        raise ValueError(f"{folder}: bank rows have dimension {bank.dim} but the model expects {model.config.snippet_dim}; "
                         f"put back the bank saved with this model, or one built with its snippet encoder")
    encoder = load_encoder(folder, config)
    info = {k: v for k, v in config.items() if k not in {"format", "model", "autoencoder", "encoder", "sampler", "choose"}}
    try:  # read into SamplerSettings once, here; what the section leaves out comes from the GMem v1 recipe
        sampler = SamplerSettings.from_config(config.get("sampler"))
    except ValueError as e:
        raise _damaged(folder / "config.json", f"its \"sampler\" section: {e}") from None
    return Checkpoint(model, bank, config.get("autoencoder") or {"type": "pixels"}, encoder, sampler, info,
                      config.get("choose", "noise"), folder)


def load_encoder(folder, config: dict | None = None):
    """The checkpoint's snippet encoder, or None; without loading the network (e.g. to encode query images)."""
    folder = Path(folder)
    config = config if config is not None else read_config(folder)
    if not config.get("encoder"):
        return None

    # encoder.safetensors exists only for encoders whose weights we trained; a DINOv2 config names its
    # source instead and is loaded lazily, so a converted official checkpoint loads offline.
    enc_path = folder / "encoder.safetensors"
    kind = config["encoder"].get("type")
    if not enc_path.is_file() and kind not in WEIGHTS_ELSEWHERE:  # was AttributeError: 'NoneType' ... 'items'
        raise FileNotFoundError(f"{folder} is missing encoder.safetensors: its config.json names a {kind!r} snippet "
                                f"encoder whose weights are kept in that file. {AGAIN}.")
    enc_state = load_tensors(enc_path, mmap=False)[0] if enc_path.is_file() else None
    cfg = config["encoder"]
    if kind == "dinov2" and "preprocess" not in cfg and config.get("generation") == 2:
        # a v2 folder converted before the config recorded it: its bank was made with v2's preparation
        cfg = {**cfg, "preprocess": "gmem-v2"}
    return encoder_from_config(cfg, enc_state)
