"""DINOv2 ViT-B/14 as a snippet encoder: snippets from new images for the released GMem models.

The GMem bank rows are DINOv2-B/14 CLS features of 224 x 224 images normalised with the ImageNet mean / std;
a snippet is that CLS token, L2-normalised. Through transformers (`facebook/dinov2-base`):
    enc = DINOv2Encoder()                          # nothing is loaded yet
    snippets = enc.encode(uint8_images_or_pil)     # (N, 768) float32, unit norm; loads the weights once

Loading is lazy, so a checkpoint whose config names DINOv2 loads offline and samples from its bank; only
encoding a new image needs the weights (from the Hub, the HF cache, or a local folder saved with
save_pretrained). How an image becomes the model's input is the checkpoint's: its encoder config's "preprocess"
names one of PREPROCESSING (a config without the key is v1's):
- "gmem-v1"  centre crop to a square, bicubic antialiased resize to 224, ImageNet mean / std; transformers
             resamples the position embedding (37 x 37 -> 16 x 16, bicubic) at every call.
- "gmem-v2"  the bank of LINs-lab/GMem v2 (datasets/construct_memory_bank.py + models/dinov2.py): ADM's centre crop
             to 256 (box-filter halvings, bicubic resize of the short side, crop), [0, 1] -> [-1, 1] -> [0, 1],
             ImageNet mean / std, then bicubic to 224 *after* normalising, without antialiasing (F.interpolate's
             defaults: align_corners=False); the position embedding is resampled once to 16 x 16 as timm's
             resample_abs_pos_embed does (bicubic, antialiased).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import as_uint8_batch, load_rgb
from ..offline import cache_only

DINOV2_REPO = "facebook/dinov2-base"
DINOV2_ENV = "GMEM_DINOV2"  # a local folder used instead of DINOV2_REPO
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING = ("gmem-v1", "gmem-v2")  # the encoder config's "preprocess"; absent: "gmem-v1"


def prepare(images, size: int = 224) -> torch.Tensor:
    """GMem v1's preparation: uint8 (N, H, W, 3) tensor / array, or a list of PIL images / paths / arrays ->
    (N, 3, size, size) floats normalised with the ImageNet mean and std."""

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


def adm_centre_crop(image: Image.Image, side: int) -> np.ndarray:
    """ADM's center_crop_arr (guided-diffusion image_datasets.py; GMem v2's bank builder and VA-VAE data use it):
    halve with a box filter while the short side is >= 2 x side, resize (bicubic) so that the short side is `side`,
    cut the middle square. uint8 (side, side, 3)."""
    while min(image.size) >= 2 * side:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = side / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - side) // 2, (arr.shape[1] - side) // 2
    return arr[top:top + side, left:left + side]


def _full_size(images, side: int) -> list[torch.Tensor]:
    """Each image as uint8 (H, W, 3) at its own size: v2's crop starts from the whole picture."""
    if isinstance(images, (str, Path, bytes, bytearray, Image.Image)):
        images = [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return list(as_uint8_batch(images, side))  # checks dtype and layout; tensors keep their size there
    images = list(images)
    if not images:
        raise ValueError("no images given (an empty list): give at least one image")
    return [load_rgb(image) for image in images]


def prepare_v2(images, size: int = 224) -> torch.Tensor:
    """GMem v2's preparation (the module docstring), in upstream's order of operations: images of any kind ->
    (N, 3, size, size) floats. The crop is 256 px for size 224 (upstream: 224 * (resolution // 256))."""
    side = size * 256 // 224
    crops = [adm_centre_crop(Image.fromarray(np.ascontiguousarray(image.cpu().numpy())), side)
             for image in _full_size(images, side)]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)  # torchvision's ToTensor
    x = 2.0 * x - 1.0  # the bank builder hands dinov2.py images in [-1, 1] ...
    x = (x + 1.0) / 2.0  # ... which takes them back to [0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.interpolate(x, size, mode="bicubic")  # after normalising; no antialias, align_corners=False


PREPARE = {"gmem-v1": prepare, "gmem-v2": prepare_v2}


def resample_position_embeddings(model, grid: int) -> None:
    """GMem v2's get_dino_v2_model_256: the patch position embedding resampled once to grid x grid as timm's
    resample_abs_pos_embed does (float32, bicubic, antialiased; the CLS position kept), so that transformers uses it
    as it is for a grid x grid input instead of resampling without antialiasing at every call."""
    emb = model.embeddings.position_embeddings
    old = int(round((emb.shape[1] - 1) ** 0.5))
    if old == grid:
        return
    patches = emb[:, 1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(emb.dtype)
    model.embeddings.position_embeddings = torch.nn.Parameter(torch.cat([emb[:, :1], patches], dim=1),
                                                              requires_grad=False)


class DINOv2Encoder:
    """The snippet-encoder interface (dim, encode, config_dict, state_dict) over transformers' Dinov2Model.
    `preprocess`: one of PREPROCESSING, how an image becomes the model's input (the module docstring)."""

    def __init__(self, source: str = DINOV2_REPO, revision: str | None = None, image_size: int = 224,
                 dim: int = 768, device="cpu", dtype: torch.dtype = torch.float32, batch_size: int = 64,
                 preprocess: str = "gmem-v1"):
        if preprocess not in PREPROCESSING:
            raise ValueError(f"preprocess must be one of {PREPROCESSING} (how the checkpoint's bank was encoded: "
                             f"gmem-v1 for GMem v1, gmem-v2 for v2); got {preprocess!r}")
        self.source, self.revision, self.image_size, self.dim = str(source), revision, image_size, dim
        self.preprocess = preprocess
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self._model = None

    @classmethod
    def from_config(cls, cfg: dict, state: dict | None = None, **kwargs) -> "DINOv2Encoder":
        """From a checkpoint's encoder config; weights come from cfg["source"], not from the folder."""
        keys = ("source", "revision", "image_size", "dim", "preprocess")
        return cls(**{k: cfg[k] for k in keys if cfg.get(k) is not None}, **kwargs)

    def config_dict(self) -> dict:
        return {"type": "dinov2", "source": self.source, "revision": self.revision, "image_size": self.image_size,
                "dim": self.dim, "preprocess": self.preprocess}

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
        if self.preprocess == "gmem-v2":
            resample_position_embeddings(model, self.image_size // model.config.patch_size)
        return model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """(N, dim) float32 unit-norm CLS features (the last layer norm's output, as DINOv2's x_norm_clstoken)."""
        x = PREPARE[self.preprocess](images, self.image_size)
        model = self.model
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = x[start:start + self.batch_size].to(self.device, self.dtype)
            cls = model(pixel_values=batch).last_hidden_state[:, 0]
            out.append(F.normalize(cls.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)
