"""Fingerprints: short identities of what made a result, so that a resumed job can refuse to mix two of them.

- checkpoint_files(folder): a checkpoint folder's contents (sample-fid's run.json records it: a resume after
  another Hub revision, --bank-dtype or retraining would mix two models' images);
- training_data(images, labels, encoder): what a training run learns from (its train state records it: a resume on
  other images, or on snippets of another encoder, would not continue the run);
- snippet_encoder(encoder): a snippet encoder's config and weights;
- image_maker(model, autoencoder, sampler): what turns a snippet and a seed into an image (the gallery of generated
  row pictures, bank/gallery.py, keys its files by it: another network, autoencoder or sampler recipe draws anew).
Each is sha256 over content only (never paths, times or byte layout), cut to 16 hex digits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch


def _bytes_of(tensor: torch.Tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


# config.json keys that shape the images a folder makes. The others record where it came from and change with no
# image: a conversion's source (the .pth's modification time: another download of the same file, or another node's
# HF cache), a training run's figures, a name or description.
FINGERPRINT_CONFIG_KEYS = ("format", "model", "autoencoder", "encoder", "sampler")
FINGERPRINT_PREFIX = "tensors-sha256:"
FINGERPRINT_FILES = ("model.safetensors", "bank.safetensors", "encoder.safetensors")
FINGERPRINT_CHUNK = 16 << 20


def checkpoint_files(folder) -> str:
    """A short identity of a checkpoint folder's contents ("tensors-sha256:" + 16 hex digits): the same contents
    give the same string, another Hub revision's weights, bank precision (--bank-dtype), retrained weights or one
    edited bank row give another. Records made from a checkpoint (sample-fid's run.json) use it to refuse a resume
    that would mix images of two models.

    What is hashed: the image-shaping keys of config.json (FINGERPRINT_CONFIG_KEYS, sorted), and of each tensor file
    its metadata and every tensor (name, dtype, shape, all of its bytes) in name order, so the file's byte layout
    (safetensors writes metadata keys in no fixed order; a streamed conversion and save_checkpoint order tensors
    differently) does not count. Every byte is read, as sampled blocks would miss an edited bank row: gmem-v1-xl's
    2.7 GB network and 1 GB bank take about 2-4 s of one core (sha256 at 1-2 GB/s) on a run of GPU-hours."""
    from .safefiles import read_header  # imports torch: the CLI reads fingerprints before any command runs

    folder = Path(folder)
    digest = hashlib.sha256()
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_bytes())
        shaping = {k: config.get(k) for k in FINGERPRINT_CONFIG_KEYS}
        digest.update(b"config.json:" + json.dumps(shaping, sort_keys=True).encode())
    for name in FINGERPRINT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        entries, metadata, data_start = read_header(path)
        digest.update(f"{name}:".encode() + json.dumps(metadata, sort_keys=True).encode())
        with open(path, "rb") as f:
            for key in sorted(entries):
                entry = entries[key]
                begin, end = entry["data_offsets"]
                digest.update(json.dumps([key, entry["dtype"], entry["shape"], end - begin]).encode())
                f.seek(data_start + begin)
                left = end - begin
                while left > 0:
                    block = f.read(min(left, FINGERPRINT_CHUNK))
                    if not block:
                        raise ValueError(f"{path} is truncated inside tensor {key!r}; copy or save it again")
                    digest.update(block)
                    left -= len(block)
    return FINGERPRINT_PREFIX + digest.hexdigest()[:16]


def snippet_encoder(encoder) -> str:
    """16 hex digits of sha256 over a snippet encoder's config_dict and its weights (name order): the same encoder
    gives the same string on any machine (DINOv2, whose weights are not ours, by its config: source and revision)."""
    digest = hashlib.sha256(json.dumps(encoder.config_dict(), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(_bytes_of(tensor))
    return digest.hexdigest()[:16]


def training_data(images, labels=None, encoder=None) -> dict:
    """{"images": count, "sha256": hash of the images (and of the labels a "label" run is conditioned on),
    "encoder": snippet_encoder(encoder) when given}. A "snippet" run's rows come from its encoder, so the encoder
    stands for them: the rows themselves are computed in float and may differ in the last bits on another machine.
    3,000 emoji (9 MB) take ~10 ms."""
    images = torch.as_tensor(images)
    digest = hashlib.sha256(f"{tuple(images.shape)} {images.dtype}".encode())
    digest.update(_bytes_of(images))
    if labels is not None:
        digest.update(_bytes_of(torch.as_tensor(labels)))
    record = {"images": len(images), "sha256": digest.hexdigest()[:16]}
    if encoder is not None:
        record["encoder"] = snippet_encoder(encoder)
    return record


def _update_with_module(digest, module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(_bytes_of(tensor))


def _update_with_settings(digest, obj) -> None:
    """An autoencoder's type, plain settings, tensors and modules' weights (its attributes in name order): PixelSpace
    by its size, the VA-VAE by its config, weights and latent statistics, the SD-VAE by its diffusers module."""
    digest.update(type(obj).__name__.encode())
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else ():
        if isinstance(value, torch.nn.Module):
            digest.update(f"{name}:module".encode())
            _update_with_module(digest, value)
        elif isinstance(value, torch.Tensor):
            digest.update(f"{name} {value.dtype} {tuple(value.shape)}".encode())
            digest.update(_bytes_of(value))
        elif isinstance(value, (bool, int, float, str, type(None))) or dataclasses.is_dataclass(value):
            digest.update(f"{name}={value!r}".encode())


def image_maker(model, autoencoder=None, sampler=None) -> str:
    """16 hex digits of sha256 over what turns a snippet and a seed into an image: the network's config and every
    weight and buffer (name, dtype, shape, bytes, in name order), the autoencoder (_update_with_settings) and the
    sampler settings (a SamplerSettings or its config dict). The same model loaded twice, on any machine, gives the
    same string; a fine-tuned, re-converted to another dtype or otherwise changed network gives another. The device
    is left out: a picture made on the GPU serves the CPU (they differ in the last bits only).
    Reads every byte: the released 675M-parameter networks (2.7 GB in fp32) take 2-4 s of one core, so callers
    memoise it per model (bank/gallery.py)."""
    digest = hashlib.sha256(b"image-maker v1|")
    config = getattr(model, "config", None)
    shown = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    digest.update(json.dumps(shown, sort_keys=True, default=str).encode())
    _update_with_module(digest, model)
    if autoencoder is not None:
        _update_with_settings(digest, autoencoder)
    if sampler is not None:
        settings = sampler.to_config() if hasattr(sampler, "to_config") else sampler
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
