"""Our own checkpoint format: a folder of safetensors files plus one JSON config, pickle-free.

    config.json          {"format": "gmem-explore-1", "model": {...}, "autoencoder": {...},
                          "encoder": {...} | null, "sampler": {"method": ..., "steps": ...}, ...}
    model.safetensors    network weights (EMA weights for trained models)
    bank.safetensors     the memory bank (see bank.py)
    encoder.safetensors  the snippet encoder's weights, when the config names one

Every file is written atomically; a folder is complete once config.json (written last) exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bank import MemoryBank
from .model import GMemSiT, ModelConfig, load_network_state
from .safefiles import load_tensors, save_tensors, write_bytes_atomic

FORMAT = "gmem-explore-1"


@dataclass
class Checkpoint:
    model: GMemSiT
    bank: MemoryBank
    autoencoder: dict = field(default_factory=lambda: {"type": "pixels"})
    encoder: object | None = None
    sampler: dict = field(default_factory=lambda: {"method": "sde", "steps": 250})
    info: dict = field(default_factory=dict)  # name, description, training figures, licence notes


def save_checkpoint(folder, ckpt: Checkpoint, bank_dtype: torch.dtype | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "model.safetensors", ckpt.model.state_dict())
    ckpt.bank.save(folder / "bank.safetensors", dtype=bank_dtype)
    encoder_cfg = None
    if ckpt.encoder is not None:
        encoder_cfg = ckpt.encoder.config_dict()
        save_tensors(folder / "encoder.safetensors", ckpt.encoder.state_dict())
    config = {"format": FORMAT, "model": ckpt.model.config.to_dict(), "autoencoder": ckpt.autoencoder,
              "encoder": encoder_cfg, "sampler": ckpt.sampler, **ckpt.info}
    write_bytes_atomic(folder / "config.json", json.dumps(config, indent=2).encode())
    return folder


def read_config(folder) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a gmem-explore checkpoint folder: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} has format {config.get('format')!r}; this version reads {FORMAT!r}")
    return config


def load_checkpoint(folder, device="cpu") -> Checkpoint:
    folder = Path(folder)
    config = read_config(folder)
    model = GMemSiT(ModelConfig.from_dict(config["model"]))
    # Memory-mapped: the weights are copied once into the model, never held twice (2.7 GB for SiT-XL/2).
    state, _ = load_tensors(folder / "model.safetensors", mmap=True)
    load_network_state(model, state)
    del state
    model.to(device).eval()
    bank = MemoryBank.load(folder / "bank.safetensors")
    if bank.dim != model.config.snippet_dim:
        raise ValueError(f"{folder}: bank rows have dimension {bank.dim} but the model expects {model.config.snippet_dim}")
    encoder = None
    if config.get("encoder"):
        from .encoders import encoder_from_config  # the encoder module is only needed when one is present

        # encoder.safetensors exists only for encoders whose weights we trained; a DINOv2 config names its
        # source instead and is loaded lazily, so a converted official checkpoint loads offline.
        enc_path = folder / "encoder.safetensors"
        enc_state = load_tensors(enc_path, mmap=False)[0] if enc_path.is_file() else None
        encoder = encoder_from_config(config["encoder"], enc_state)
    info = {k: v for k, v in config.items() if k not in {"format", "model", "autoencoder", "encoder", "sampler"}}
    return Checkpoint(model, bank, config.get("autoencoder") or {"type": "pixels"}, encoder,
                      config.get("sampler") or {"method": "sde", "steps": 250}, info)
