"""The DINOv2 encoder's two preparations: v1's (centre crop, antialiased resize, normalise) and v2's, which must feed
the model exactly what LINs-lab/GMem's bank builder feeds it (datasets/construct_memory_bank.py -> models/dinov2.py),
written out here from upstream's own operations. Which one runs is the checkpoint's: its encoder config's
"preprocess", v2 for converted v2 folders, v1 for configs without the key."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import randomize
from gmem_explore import build_model
from gmem_explore.checkpoints.folder import load_encoder
from gmem_explore.encoders import encoder_from_config
from gmem_explore.encoders.dinov2 import DINOv2Encoder
from test_official_v2 import MODEL, convert, full_bank
from test_vavae import ldm_state, save_files

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_MEAN / STD


def upstream_bank_image(arr: np.ndarray, image_size: int = 256) -> torch.Tensor:
    """CustomImageDataset of datasets/construct_memory_bank.py: center_crop_arr, ToTensor, then 2x - 1."""
    pil = Image.fromarray(arr)
    while min(pil.size) >= 2 * image_size:
        pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), resample=Image.BOX)
    scale = image_size / min(pil.size)
    pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)), resample=Image.BICUBIC)
    a = np.array(pil)
    crop_y, crop_x = (a.shape[0] - image_size) // 2, (a.shape[1] - image_size) // 2
    pil = Image.fromarray(a[crop_y: crop_y + image_size, crop_x: crop_x + image_size])
    tensor = torch.from_numpy(np.array(pil).transpose((2, 0, 1))).contiguous().float().div(255)  # ToTensor
    return 2.0 * tensor - 1.0


def upstream_preprocess_raw_image(x: torch.Tensor) -> torch.Tensor:
    """models/dinov2.py preprocess_raw_image: [-1, 1] -> [0, 1], Normalize, then interpolate(..., mode='bicubic')."""
    resolution = x.shape[-1]
    x = (x + 1.) / 2.
    x = (x - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)  # torchvision Normalize
    return F.interpolate(x, 224 * (resolution // 256), mode="bicubic")


class Recorder(torch.nn.Module):
    """A stand-in DINOv2: remembers the pixels it was given and answers a CLS token made from them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, pixel_values):
        self.seen.append(pixel_values.clone())
        cls = torch.stack([pixel_values.mean((2, 3)), pixel_values.std((2, 3))], 1).flatten(1)  # (N, 6)
        return SimpleNamespace(last_hidden_state=torch.cat([cls[:, None], cls[:, None]], 1))


def stubbed(preprocess: str) -> tuple[DINOv2Encoder, Recorder]:
    enc = DINOv2Encoder(dim=6, preprocess=preprocess)
    enc._model = Recorder()  # as if loaded: nothing is read from the Hub
    return enc, enc._model


def images(seed=0) -> np.ndarray:
    """Two non-square pictures: one small (no box halving), one large enough for a halving (short side >= 512)."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (300, 460, 3), dtype=np.uint8)
    large = np.kron(g.integers(0, 256, (70, 110, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 560 x 880, blocky
    return [small, large]


def test_v2_feeds_the_model_upstreams_tensor():
    enc, model = stubbed("gmem-v2")
    for arr in images():
        expect = upstream_preprocess_raw_image(upstream_bank_image(arr)[None])
        got = enc.encode(torch.from_numpy(arr))  # a uint8 (H, W, 3) tensor
        assert model.seen[-1].shape == (1, 3, 224, 224) and torch.equal(model.seen[-1], expect)
        cls = model(expect).last_hidden_state[:, 0]
        assert torch.allclose(got, F.normalize(cls, dim=-1), atol=1e-6)  # the CLS token, L2-normalised
        enc.encode([Image.fromarray(arr)])  # a PIL image takes the same route, at its own size
        assert torch.equal(model.seen[-1], expect)


def test_v2_differs_from_v1_on_a_non_square_image():
    arr = images()[0]
    (v1, seen1), (v2, seen2) = stubbed("gmem-v1"), stubbed("gmem-v2")
    v1.encode(torch.from_numpy(arr)), v2.encode(torch.from_numpy(arr))
    assert seen1.seen[0].shape == seen2.seen[0].shape == (1, 3, 224, 224)
    # v1 crops the middle 300 x 300 then resizes with antialiasing; v2 resizes the short side to 256, crops, and
    # resizes again without antialiasing after normalising
    assert (seen1.seen[0] - seen2.seen[0]).abs().mean() > 0.05


def test_preprocess_comes_from_the_config_and_old_configs_keep_v1():
    base = {"type": "dinov2", "source": "facebook/dinov2-base", "image_size": 224, "dim": 768}
    assert encoder_from_config(base, None).preprocess == "gmem-v1"  # written before the key existed
    v2 = encoder_from_config({**base, "preprocess": "gmem-v2"}, None)
    assert v2.preprocess == "gmem-v2" and v2.config_dict()["preprocess"] == "gmem-v2"
    assert encoder_from_config(v2.config_dict(), None).preprocess == "gmem-v2"  # saved and loaded again
    with pytest.raises(ValueError, match="preprocess must be one of .*gmem-v1.*gmem-v2.*'imagenet'"):
        DINOv2Encoder(preprocess="imagenet")


def test_a_converted_v2_folder_names_v2_preprocessing(tmp_path):
    wide = {**MODEL, "snippet_dim": 768}  # DINOv2-B/14's width: the converter then records the bank's encoder
    network = randomize(build_model(backbone="lightningdit", **wide)).state_dict()
    torch.save({"ema": network}, tmp_path / "network.pth")
    torch.save(full_bank(width=768), tmp_path / "bank.pth")
    vavae, stats = save_files(tmp_path, ldm_state())
    files = {"network": tmp_path / "network.pth", "bank": tmp_path / "bank.pth", "vavae": vavae, "stats": stats}
    folder = convert(files, tmp_path / "v2", model_overrides=wide)
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder"]["type"] == "dinov2" and config["encoder"]["preprocess"] == "gmem-v2"
    assert load_encoder(folder).preprocess == "gmem-v2"
    # a v2 folder converted before the key was recorded still reads images as v2's bank did
    del config["encoder"]["preprocess"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_encoder(folder).preprocess == "gmem-v2"
    del config["generation"]  # without either, a config is v1's
    (folder / "config.json").write_text(json.dumps(config))
    assert load_encoder(folder).preprocess == "gmem-v1"


def test_v2_resamples_the_position_embedding_as_timm_does(tmp_path):
    transformers = pytest.importorskip("transformers")
    # DINOv2-B/14's layout at a tiny width: 518 px, so 37 x 37 positions, resampled to 16 x 16 for 224 px inputs
    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    patch_size=14, image_size=518)
    torch.manual_seed(0)
    transformers.Dinov2Model(cfg).eval().save_pretrained(tmp_path)
    arr = images()[0]
    enc = DINOv2Encoder(source=str(tmp_path), dim=16, preprocess="gmem-v2")
    got = enc.encode(torch.from_numpy(arr))

    ref = transformers.Dinov2Model.from_pretrained(tmp_path).eval()
    pos = ref.embeddings.position_embeddings.data
    # timm.layers.pos_embed.resample_abs_pos_embed(pos, [16, 16]) with its defaults (bicubic, antialias=True)
    grid = pos[:, 1:].float().reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=[16, 16], mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 256, -1)
    resampled = torch.cat([pos[:, :1], grid], 1)
    assert torch.equal(enc.model.embeddings.position_embeddings, resampled)
    x = upstream_preprocess_raw_image(upstream_bank_image(arr)[None])
    with torch.no_grad():
        # transformers' own resampling (no antialiasing, at every call): what v1 gets, and not what v2's bank used
        plain = ref.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, 16), 224, 224)
        ref.embeddings.position_embeddings.data = resampled
        expect = F.normalize(ref(pixel_values=x).pooler_output, dim=-1)
    assert torch.allclose(got, expect, atol=1e-5)
    assert (plain - resampled).abs().max() > 0.1 * resampled[:, 1:].abs().max()
