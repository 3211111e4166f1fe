"""VA-VAE f16d32 (GMem v2's autoencoder): hustvl's checkpoint layout loaded strictly on the decoder, upstream's
decode formula to the uint8 level, bad files refused with errors that name the problem."""
from __future__ import annotations

import pytest
import torch

from gmem_explore.autoencoders import VAVAE
from gmem_explore.autoencoders.ldm import KLAutoencoder, LDMConfig

# two levels (factor 2), 32 channels, attention at 4 x 4: the decoder's first up level and the encoder's last
TINY_LDM = LDMConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), z_channels=4, resolution=8)
TRAINING_ONLY = {  # what the released file holds beside the autoencoder: ignored
    "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4), "loss.logvar": torch.zeros(()),
    "foundation_model.model.blocks.0.attn.qkv.weight": torch.randn(12, 4), "linear_proj.weight": torch.randn(4, 8, 1, 1),
}


def ldm_state(seed=0, encoder=True) -> dict:
    torch.manual_seed(seed)
    state = KLAutoencoder(TINY_LDM).state_dict()
    return {k: v for k, v in state.items() if encoder or not k.startswith(("encoder.", "quant_conv."))}


def save_files(tmp_path, state, mean=None, std=None, name="vavae.pt"):
    torch.save({"state_dict": {**state, **TRAINING_ONLY}, "epoch": 10, "global_step": 5000}, tmp_path / name)
    mean = torch.tensor([0.5, -0.25, 1.0, 0.0]).view(1, 4, 1, 1) if mean is None else mean
    std = torch.tensor([2.0, 0.5, 1.5, 1.0]).view(1, 4, 1, 1) if std is None else std
    torch.save({"mean": mean, "std": std}, tmp_path / "latents_stats.pt")
    return tmp_path / name, tmp_path / "latents_stats.pt"


def test_f16d32_has_the_ldm_layout():
    with torch.device("meta"):
        state = KLAutoencoder(LDMConfig()).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 342  # keys of upstream's tokenizer AutoencoderKL(embed_dim=32, ch_mult=(1, 1, 2, 2, 4))
    assert shapes["decoder.conv_in.weight"] == (512, 32, 3, 3)
    assert shapes["decoder.up.4.attn.2.q.weight"] == (512, 512, 1, 1)  # attention at 16 x 16, first up level
    assert not any(k.startswith("decoder.up.3.attn") for k in shapes)
    assert shapes["decoder.up.3.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert shapes["decoder.up.1.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert "decoder.up.4.upsample.conv.weight" in shapes and not any(k.startswith("decoder.up.0.upsample") for k in shapes)
    assert shapes["encoder.down.4.attn.1.q.weight"] == (512, 512, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (64, 512, 3, 3)
    assert shapes["quant_conv.weight"] == (64, 64, 1, 1) and shapes["post_quant_conv.weight"] == (32, 32, 1, 1)
    decoder = sum(v.numel() for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv.")))
    assert decoder == 41_418_659
    assert LDMConfig().factor == 16  # so 256 px images have (32, 16, 16) latents


def test_decode_is_upstreams_formula_to_the_level(tmp_path):
    state = ldm_state()
    # a decoder whose output is a constant per channel: -1, 0.5 and 0.999 before the uint8 conversion
    state["decoder.conv_out.weight"] = torch.zeros_like(state["decoder.conv_out.weight"])
    state["decoder.conv_out.bias"] = torch.tensor([-1.0, 0.5, 0.999])
    vae = VAVAE(*save_files(tmp_path, state), image_size=8, config=TINY_LDM)
    images = vae.decode(torch.randn(2, 4, 4, 4))
    assert images.dtype == torch.uint8 and images.shape == (2, 8, 8, 3)
    # clamp(127.5 x + 128, 0, 255) cast to uint8: 0.5 -> 0, 191.75 -> 191 (a cast truncates), 255.37 -> 255
    assert images.reshape(-1, 3).unique(dim=0).tolist() == [[0, 191, 255]]


def test_decode_denormalises_with_the_stats_and_ignores_training_keys(tmp_path):
    state = ldm_state(seed=1)
    ckpt, stats = save_files(tmp_path, state)
    vae = VAVAE(ckpt, stats, image_size=8, config=TINY_LDM)
    assert vae.latent_shape() == (4, 4, 4) and vae.has_encoder
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = KLAutoencoder(TINY_LDM)
    reference.load_state_dict(state)
    mean = torch.tensor([0.5, -0.25, 1.0, 0.0]).view(1, 4, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.5, 1.0]).view(1, 4, 1, 1)
    with torch.no_grad():
        x = reference.decode(latents * std + mean)
    want = (127.5 * x + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    got = vae.decode(latents)
    assert (got.int() - want.int()).abs().max() <= 1  # the same network up to float summation order
    with torch.no_grad():
        plain = (127.5 * reference.decode(latents) + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert (got.int() - plain.int()).abs().max() > 5  # the stats are applied


def test_encode_gives_normalised_latents(tmp_path):
    vae = VAVAE(*save_files(tmp_path, ldm_state(seed=2)), image_size=8, config=TINY_LDM)
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    a = vae.encode(images, generator=torch.Generator().manual_seed(3))
    b = vae.encode(images, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 4, 4, 4) and torch.equal(a, b)
    assert vae.decode(a).shape == (2, 8, 8, 3)


def test_a_decoder_only_file_decodes_but_does_not_encode(tmp_path):
    vae = VAVAE(*save_files(tmp_path, ldm_state(encoder=False)), image_size=8, config=TINY_LDM)
    assert vae.decode(torch.zeros(1, 4, 4, 4)).shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="no encoder weights"):
        vae.encode(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))


def test_bad_checkpoints_are_named(tmp_path):
    state = ldm_state()
    missing = {k: v for k, v in state.items() if not k.startswith("decoder.up.1.attn.0.")}
    with pytest.raises(ValueError, match=r"decoder .*missing keys \(10\): decoder\.up\.1\.attn\.0\.k\.bias"):
        VAVAE(*save_files(tmp_path, missing), image_size=8, config=TINY_LDM)
    wrong = {**state, "decoder.conv_in.weight": torch.zeros(64, 8, 3, 3)}
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): decoder\.conv_in\.weight \(64, 8, 3, 3\) != "
                                         r"\(64, 4, 3, 3\)"):
        VAVAE(*save_files(tmp_path, wrong), image_size=8, config=TINY_LDM)
    partial_encoder = {k: v for k, v in state.items() if k != "quant_conv.bias"}
    with pytest.raises(ValueError, match=r"encoder .*missing keys \(1\): quant_conv\.bias"):
        VAVAE(*save_files(tmp_path, partial_encoder), image_size=8, config=TINY_LDM)
    ckpt, stats = save_files(tmp_path, state)
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:3000])
    with pytest.raises(ValueError, match="truncated or damaged"):
        VAVAE(tmp_path / "cut.pt", stats, image_size=8, config=TINY_LDM)
    torch.save({"network": {"x": 1}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a VA-VAE checkpoint"):
        VAVAE(tmp_path / "other.pt", stats, image_size=8, config=TINY_LDM)
    with pytest.raises(FileNotFoundError, match="VA-VAE checkpoint file not found"):
        VAVAE(tmp_path / "absent.pt", stats, image_size=8, config=TINY_LDM)


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_pickle_with_code_is_refused(tmp_path, capsys):
    ckpt, stats = save_files(tmp_path, ldm_state())
    torch.save({"state_dict": ldm_state(), "callbacks": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"weights_only=True refuses code"):
        VAVAE(tmp_path / "evil.pt", stats, image_size=8, config=TINY_LDM)
    torch.save({"mean": torch.zeros(4), "std": Payload()}, tmp_path / "evil_stats.pt")
    with pytest.raises(ValueError, match=r"weights_only=True refuses code"):
        VAVAE(ckpt, tmp_path / "evil_stats.pt", image_size=8, config=TINY_LDM)
    assert "code ran" not in capsys.readouterr().out


def test_bad_stats_are_named(tmp_path):
    state = ldm_state()
    with pytest.raises(ValueError, match=r"'mean' must hold one value per latent channel \(4.*got \(1, 32, 1, 1\)"):
        VAVAE(*save_files(tmp_path, state, mean=torch.zeros(1, 32, 1, 1)), image_size=8, config=TINY_LDM)
    with pytest.raises(ValueError, match="std finite and positive"):
        VAVAE(*save_files(tmp_path, state, std=torch.zeros(4)), image_size=8, config=TINY_LDM)
    ckpt, _ = save_files(tmp_path, state)
    torch.save({"mean": torch.zeros(4)}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match=r"expected \{'mean', 'std'\}; found \['mean'\]"):
        VAVAE(ckpt, tmp_path / "half.pt", image_size=8, config=TINY_LDM)
    with pytest.raises(ValueError, match="multiple of the VAE's factor 2"):
        VAVAE(ckpt, tmp_path / "latents_stats.pt", image_size=9, config=TINY_LDM)
    with pytest.raises(ValueError, match=r"latents must have shape \(N, 4, h, w\)"):
        VAVAE(ckpt, tmp_path / "latents_stats.pt", image_size=8, config=TINY_LDM).decode(torch.zeros(1, 3, 4, 4))
