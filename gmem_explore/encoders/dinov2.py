"""DINOv2 ViT-B/14 as a snippet encoder: snippets from new images for the released GMem models.

The GMem bank rows are DINOv2-B/14 CLS features of 224 x 224 images normalised with the ImageNet mean / std;
a snippet is that CLS token, L2-normalised. Through transformers (`facebook/dinov2-base`):
    enc = DINOv2Encoder()                          # nothing is loaded yet
    snippets = enc.encode(uint8_images_or_pil)     # (N, 768) float32, unit norm; loads the weights once

Loading is lazy, so a checkpoint whose config names DINOv2 loads offline and samples from its bank; only
encoding a new image needs the weights (from the Hub, the HF cache, or a local folder saved with
save_pretrained). Images of any size are centre-cropped to a square and resized (bicubic, antialiased), the
ImageNet preparation; transformers resamples the position embedding to the 16 x 16 patch grid of 224 px.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from ..images import as_uint8_batch
from ..offline import cache_only

DINOV2_REPO = "facebook/dinov2-base"
DINOV2_ENV = "GMEM_DINOV2"  # a local folder used instead of DINOV2_REPO
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prepare(images, size: int = 224) -> torch.Tensor:
    """uint8 (N, H, W, 3) tensor / array, or a list of PIL images / paths / arrays -> (N, 3, size, size) floats
    normalised with the ImageNet mean and std."""

    x = as_uint8_batch(images, size).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if h != w:  # centre crop to a square, then resize: the aspect ratio is kept, as in ImageNet preparation
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top:top + side, left:left + side]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class DINOv2Encoder:
    """The snippet-encoder interface (dim, encode, config_dict, state_dict) over transformers' Dinov2Model."""

    def __init__(self, source: str = DINOV2_REPO, revision: str | None = None, image_size: int = 224,
                 dim: int = 768, device="cpu", dtype: torch.dtype = torch.float32, batch_size: int = 64):
        self.source, self.revision, self.image_size, self.dim = str(source), revision, image_size, dim
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self._model = None

    @classmethod
    def from_config(cls, cfg: dict, state: dict | None = None, **kwargs) -> "DINOv2Encoder":
        """From a checkpoint's encoder config; weights come from cfg["source"], not from the folder."""
        keys = ("source", "revision", "image_size", "dim")
        return cls(**{k: cfg[k] for k in keys if cfg.get(k) is not None}, **kwargs)

    def config_dict(self) -> dict:
        return {"type": "dinov2", "source": self.source, "revision": self.revision, "image_size": self.image_size,
                "dim": self.dim}

    def state_dict(self) -> dict:
        return {}  # the weights are not ours to copy: config_dict names where they come from

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def to(self, device) -> "DINOv2Encoder":
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        try:
            from transformers import Dinov2Model
        except ImportError as e:
            raise ImportError("Snippets from new images need transformers: pip install 'gmem-explore[dino]'") from e
        source = self.source
        if source == DINOV2_REPO and os.environ.get(DINOV2_ENV):
            source = os.environ[DINOV2_ENV]  # a local copy, for machines without a network (CLI, app, notebooks)

        offline = cache_only(source)
        try:
            model = Dinov2Model.from_pretrained(source, revision=self.revision, dtype=self.dtype,
                                                local_files_only=offline)
        except OSError as e:
            unreachable = "the Hugging Face Hub is unreachable or HF_HUB_OFFLINE is set: " if offline else ""
            raise OSError(
                f"Could not load DINOv2 from {source!r} ({unreachable}{str(e).splitlines()[0] if str(e) else e}). "
                f"Without a network, download it once where one exists "
                f"(hf download {DINOV2_REPO} --local-dir DIR), copy DIR here and set {DINOV2_ENV}=DIR (or use "
                f"DINOv2Encoder(source='DIR')), or set HF_HOME to a cache that holds it. Sampling from the bank "
                f"does not need it."
            ) from e
        hidden = model.config.hidden_size
        if hidden != self.dim:
            raise ValueError(f"{self.source} gives {hidden}-d features but this encoder is configured for {self.dim}")
        return model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """(N, dim) float32 unit-norm CLS features (the last layer norm's output, as DINOv2's x_norm_clstoken)."""
        x = prepare(images, self.image_size)
        model = self.model
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = x[start:start + self.batch_size].to(self.device, self.dtype)
            cls = model(pixel_values=batch).last_hidden_state[:, 0]
            out.append(F.normalize(cls.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)
