"""DINOv2 (transformers) and SD-VAE (diffusers) through the real loading code, on tiny models saved locally with
save_pretrained; and the "external knowledge" flow: a new image -> snippet -> images, on a converted checkpoint."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY, randomize
from gmem_explore import offline  # noqa: E402
from gmem_explore import GMemPipeline, build_model, load_checkpoint
from gmem_explore.autoencoders import SD_VAE_SCALE, SDVAE
from gmem_explore.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DINOv2Encoder
from gmem_explore.checkpoints.official import ENCODER, convert_official

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")
LATENT = dict(TINY, in_channels=4)  # SD-VAE latents have 4 channels


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    patch_size=14, image_size=28)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dino")
    transformers.Dinov2Model(cfg).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


def test_dinov2_is_lazy_and_gives_the_normalised_cls_token(tiny_dino):
    enc = DINOv2Encoder(source=str(tiny_dino), dim=16)
    assert not enc.loaded and enc.config_dict()["type"] == "dinov2" and enc.state_dict() == {}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 40, 30, 3), generator=g, dtype=torch.uint8)
    got = enc.encode(images)
    assert enc.loaded and got.shape == (3, 16) and got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)
    # by hand: centre crop 30x30, bicubic to 224, ImageNet mean/std, CLS of the final layer norm, L2-normalised
    x = images.permute(0, 3, 1, 2).float()[:, :, 5:35, :] / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = transformers.Dinov2Model.from_pretrained(tiny_dino).eval()
    with torch.no_grad():
        cls = ref(pixel_values=x).pooler_output
    assert torch.allclose(got, F.normalize(cls, dim=-1), atol=1e-5)
    # PIL images take the same route (resized by PIL, so close rather than equal)
    pil = [Image.fromarray(im.numpy()) for im in images]
    assert F.cosine_similarity(enc.encode(pil), got).min() > 0.98


def test_dinov2_offline_fails_fast_with_how_to(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    enc = DINOv2Encoder()  # facebook/dinov2-base: creating it needs nothing
    transformers.Dinov2Model  # noqa: B018  (import the module first: the clock measures the failure, not imports)
    start = time.monotonic()
    with pytest.raises(OSError, match="hf download facebook/dinov2-base"):
        enc.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    assert time.monotonic() - start < 10


def test_dinov2_takes_a_local_copy_from_the_environment(tiny_dino, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("GMEM_DINOV2", str(tiny_dino))
    enc = DINOv2Encoder(dim=16)  # the released repo id in its config; the weights come from the local folder
    assert enc.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, 16)
    assert enc.config_dict()["source"] == "facebook/dinov2-base"  # a saved checkpoint still names the real source


def test_sdvae_decode_and_encode_through_diffusers(tiny_vae):
    vae = SDVAE(image_size=16, source=str(tiny_vae))
    assert vae.latent_shape() == (4, 8, 8)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = vae.decode(latents)
    ref = diffusers.AutoencoderKL.from_pretrained(tiny_vae).eval()
    with torch.no_grad():
        x = ref.decode(latents / SD_VAE_SCALE).sample
    # the released sampler's FID images (LINs-lab/GMem engine/generate.py): (x + 1) / 2, times 255, clamped, cast to
    # uint8, which truncates; rounding would make them half a level brighter on average
    expect = torch.clamp(255.0 * ((x + 1) / 2.0), 0, 255).permute(0, 2, 3, 1).to(torch.uint8)
    assert images.dtype == torch.uint8 and torch.equal(images, expect)
    assert not torch.equal(images, ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    assert vae.encode(images).shape == (2, 4, 8, 8)


def test_sdvae_offline_says_how_and_takes_a_local_copy_from_the_environment(tiny_vae, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GMEM_SD_VAE", raising=False)
    with pytest.raises(OSError, match="set GMEM_SD_VAE=DIR"):
        SDVAE(image_size=16)  # the released repo id, not in this empty cache
    monkeypatch.setenv("GMEM_SD_VAE", str(tiny_vae))
    assert SDVAE(image_size=16).latent_shape() == (4, 8, 8)  # the same call now finds the local copy


def test_converted_checkpoint_with_sdvae_and_dinov2_end_to_end(tmp_path, tiny_vae, tiny_dino, capsys):
    raw_model = randomize(build_model(**LATENT), seed=5)
    g = torch.Generator().manual_seed(2)
    raw = {"network": raw_model.state_dict(), "memorybank": torch.randn(12, 16, generator=g),
           "memoryfreq": torch.arange(1, 13).float()}
    torch.save(raw, tmp_path / "tiny.pth")
    folder = convert_official(tmp_path / "tiny.pth", tmp_path / "conv", model_overrides=LATENT,
                              autoencoder={"type": "sd-vae", "image_size": 16, "source": str(tiny_vae)},
                              encoder={"type": "dinov2", "source": str(tiny_dino), "dim": 16})
    ckpt = load_checkpoint(folder)
    assert isinstance(ckpt.encoder, DINOv2Encoder) and not ckpt.encoder.loaded
    pipe = GMemPipeline.from_checkpoint(ckpt)
    out = pipe.generate(2, seeds=[0, 1], steps=2)
    assert out.images.shape == (2, 16, 16, 3)
    snippets = pipe.snippets_from_images(out.images)  # "external knowledge": snippets of new images
    assert snippets.shape == (2, 16)
    again = pipe.generate(snippets=snippets, seeds=[0, 1], steps=2)
    assert again.images.shape == (2, 16, 16, 3) and again.indices == [None, None]
    # `gmem bank nearest --image` encodes a picture with the checkpoint's encoder and searches the bank
    from gmem_explore.cli.main import main

    picture = tmp_path / "photo.png"
    out.pil()[0].save(picture)
    assert main(["bank", "nearest", str(folder), "--image", str(picture), "--k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{picture}: ") and line.count("(") == 3


def test_released_encoder_config_loads_offline_until_needed(tmp_path):
    raw = {"network": randomize(build_model(**dict(TINY, snippet_dim=768))).state_dict(),
           "memorybank": torch.randn(4, 768), "memoryfreq": torch.ones(4)}
    torch.save(raw, tmp_path / "t.pth")
    folder = convert_official(tmp_path / "t.pth", tmp_path / "conv", model_overrides=dict(TINY, snippet_dim=768))
    ckpt = load_checkpoint(folder)  # HF_HUB_OFFLINE=1 (conftest): nothing is fetched here
    assert ckpt.encoder.config_dict()["source"] == ENCODER["source"] and not ckpt.encoder.loaded
    out = GMemPipeline.from_checkpoint(ckpt).generate(1, seeds=[0], steps=1)
    assert out.images.shape == (1, 8, 8, 3)


def test_hub_ids_come_from_the_cache_alone_when_the_hub_is_unreachable(tmp_path, monkeypatch, tiny_vae):
    """Without HF_HUB_OFFLINE and without a route to the Hub, diffusers and transformers retried for 57 s (SD-VAE)
    and 25 s (DINOv2) before failing; now they are told to use the cache alone, which fails at once."""
    import gmem_explore.checkpoints.hub as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name in ("GMEM_SD_VAE", "GMEM_DINOV2"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(offline, "hub_reachable", lambda timeout=3.0: False)
    asked = []

    def spy(real):
        def from_pretrained(source, *args, **kwargs):
            asked.append((str(source), kwargs.get("local_files_only")))
            if not kwargs.get("local_files_only") and not str(source).startswith(str(tmp_path.parent)):
                raise OSError("this test has no network: the Hub would have been retried here")
            return real(source, *args, **kwargs)
        return from_pretrained

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", spy(diffusers.AutoencoderKL.from_pretrained))
    monkeypatch.setattr(transformers.Dinov2Model, "from_pretrained", spy(transformers.Dinov2Model.from_pretrained))
    with pytest.raises(OSError, match="(?s)unreachable or HF_HUB_OFFLINE is set.*download it once"):
        SDVAE()
    with pytest.raises(OSError, match="(?s)unreachable or HF_HUB_OFFLINE is set.*download it once"):
        DINOv2Encoder().encode(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    assert asked == [("stabilityai/sd-vae-ft-mse", True), ("facebook/dinov2-base", True)]
    SDVAE(image_size=32, source=str(tiny_vae))  # a local folder needs no Hub and is not restricted
    assert asked[-1] == (str(tiny_vae), False)
