"""GMem v2's released files (upstream's exact formats, tiny sizes) converted into our folder format, loaded and sampled
with the gmem-v2 recipe and uniform rows; the named checkpoints offline (fail fast with the how-to) and from a faked
Hugging Face cache (converted once); every bad input refused with a message that names it, nothing written."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import randomize
from gmem_explore import GMemPipeline, build_model, load_checkpoint
from gmem_explore.bank.lowrank import DMD_KEYS, LowRankBank, compress
from gmem_explore.bank.memory import MemoryBank
from gmem_explore.checkpoints.hub import HUB, V2_FILES, CheckpointUnavailable, resolve_checkpoint
from gmem_explore.checkpoints.official import convert_official, file_sha256
from gmem_explore.checkpoints.official_v2 import convert_official_v2
from test_official import released_dict
from test_vavae import TINY_LDM, ldm_state, save_files

# LightningDiT on the tiny VA-VAE's latents (4 channels, factor 2): 4 x 4 latents -> 8 px images; 16-d snippets
MODEL = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, snippet_dim=16,
             projector_dim=16, repa_dim=8)
LDM = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4], "z_channels": 4, "resolution": 8}
ROWS = 12


def network_state(seed=0) -> dict:
    return randomize(build_model(backbone="lightningdit", **MODEL), seed=seed).state_dict()


def full_bank(seed=0, width=16) -> torch.Tensor:
    return torch.randn(ROWS, width, generator=torch.Generator().manual_seed(seed + 7)) * 2 + 0.5


def dmd_bank(rows: torch.Tensor, rank=4) -> dict:
    """Upstream's DMDMemoryBank._initialize_from_data and save(), verbatim in effect."""
    mean = rows.mean(dim=0)
    U, S, Vh = torch.linalg.svd(rows - mean, full_matrices=False)
    S = S[:rank]
    return {"C": (U[:, :rank] * S.sqrt()).clone(), "M": (Vh.T[:, :rank] * S.sqrt()).clone(), "S": S, "mean": mean,
            "latent_dim": rank, "feature_dim": rows.shape[1]}


@pytest.fixture
def files(tmp_path):
    """Upstream's files: network {"ema": ...}, bank 'full', VA-VAE {"state_dict": ...} and latents_stats.pt."""
    state, rows = network_state(), full_bank()
    torch.save({"ema": state, "model": state, "opt": {}}, tmp_path / "network.pth")
    torch.save(rows, tmp_path / "bank.pth")
    vavae, stats = save_files(tmp_path, ldm_state())
    return {"network": tmp_path / "network.pth", "bank": tmp_path / "bank.pth", "vavae": vavae, "stats": stats,
            "state": state, "rows": rows}


def convert(files, out, **kwargs):
    options = dict(vavae=files["vavae"], stats=files["stats"], model_overrides=MODEL, autoencoder_overrides=LDM)
    return convert_official_v2(files["network"], files["bank"], out, **{**options, **kwargs})


def test_converted_v2_loads_strictly_and_samples_with_its_recipe(files, tmp_path):
    folder = convert(files, tmp_path / "v2", bank_dtype="fp32")
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["backbone"] == "lightningdit" and config["choose"] == "uniform"
    assert config["sampler"]["method"] == "sde-heun" and config["autoencoder"]["type"] == "va-vae"
    assert config["source"]["bank"]["layout"] == "full"
    assert f"memory bank of {ROWS:,} DINOv2 snippets" in config["about"] and "rows drawn uniformly" in config["about"]
    ckpt = load_checkpoint(folder)
    for key in ("pos_embed", "feat_rope.freqs_cos", "projector.0.0.weight", "blocks.1.mlp.w12.weight"):
        assert torch.equal(ckpt.model.state_dict()[key], files["state"][key])
    assert torch.equal(ckpt.bank.rows, files["rows"]) and ckpt.bank.freq is None
    pipe = GMemPipeline.from_pretrained(str(folder))
    d = pipe.describe()
    assert d["backbone"] == "LightningDiT" and d["image_size"] == 8 and d["choose"] == "uniform"
    projector = sum(v.numel() for k, v in files["state"].items() if k.startswith("projector."))
    assert d["parameters"]["projector"] == projector > 0
    assert "LightningDiT" in pipe.summary() and "rows uniformly" in pipe.summary()
    out = pipe.generate(seeds=[3, 4], steps=4)
    assert out.images.shape == (2, 8, 8, 3) and out.images.dtype == torch.uint8
    assert out.settings["method"] == "sde-heun" and out.settings["choose"] == "uniform"
    # upstream's torch.randint, one generator per image seed
    assert out.indices == [int(torch.randint(ROWS, (1,), generator=torch.Generator().manual_seed(s))) for s in (3, 4)]
    again = pipe.generate(seeds=[3, 4], steps=4)
    assert torch.equal(again.images, out.images)
    assert pipe.generate(seeds=[3], steps=2, choose="noise").settings["choose"] == "noise"  # an explicit rule wins


def test_dmd_bank_bare_network_and_fp16(files, tmp_path):
    torch.save(files["state"], files["network"])  # a bare state_dict, as upstream's model card file may be
    dmd = dmd_bank(files["rows"])
    torch.save(dmd, files["bank"])
    folder = convert(files, tmp_path / "v2", bank_dtype="fp32")
    expected = dmd["C"] @ dmd["M"].T + dmd["mean"]
    assert torch.allclose(load_checkpoint(folder).bank.rows, expected, atol=1e-5)
    assert json.loads((folder / "config.json").read_text())["source"]["bank"]["layout"] == "dmd"
    half = load_checkpoint(convert(files, tmp_path / "v2-16")).bank
    assert half.rows.dtype == torch.float16 and torch.allclose(half.rows.float(), expected, atol=1e-2)


def test_lowrank_reads_and_writes_upstreams_dmd_layout(tmp_path):
    rows = full_bank()
    dmd = dmd_bank(rows)
    low = LowRankBank.from_dmd(dmd)
    assert torch.allclose(low.rows(), dmd["C"] @ dmd["M"].T + dmd["mean"], atol=1e-5)
    assert torch.allclose(low.basis @ low.basis.T, torch.eye(4), atol=1e-5)  # ours keeps orthonormal basis rows
    ours = compress(MemoryBank(rows), rank=5, coeff_dtype=torch.float32)
    ours.save_dmd(tmp_path / "dmd.pth")
    saved = torch.load(tmp_path / "dmd.pth", weights_only=True)
    assert set(saved) == set(DMD_KEYS) and saved["latent_dim"] == 5 and saved["feature_dim"] == 16
    assert saved["C"].shape == (ROWS, 5) and saved["M"].shape == (16, 5) and saved["S"].shape == (5,)
    # upstream's get(i) and its add_exact projection (centered @ M) / S agree with our rows
    assert torch.allclose(saved["C"] @ saved["M"].T + saved["mean"], ours.rows(), atol=1e-5)
    x = ours.rows()[2]
    assert torch.allclose((x - saved["mean"]) @ saved["M"] / saved["S"], saved["C"][2], atol=1e-4)
    assert torch.allclose(LowRankBank.from_dmd(tmp_path / "dmd.pth").rows(), ours.rows(), atol=1e-5)
    with pytest.raises(ValueError, match="'full' layout"):
        LowRankBank.from_dmd({"C": torch.zeros(2, 2)})


def nothing_written(tmp_path, out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_each_bad_input_is_named_and_nothing_is_written(files, tmp_path):
    out = tmp_path / "out"
    v1 = tmp_path / "v1.pth"
    torch.save(released_dict(), v1)
    with pytest.raises(ValueError, match=r"given as a GMem v2 network but looks like the GMem v1 release.*--bank"):
        convert({**files, "network": v1}, out)
    with pytest.raises(ValueError, match="given as the GMem v1 release but looks like a GMem v2 LightningDiT network"):
        convert_official(files["network"], out)
    with pytest.raises(ValueError, match="given as a GMem v2 memory bank but looks like a GMem v2 LightningDiT"):
        convert({**files, "bank": files["network"]}, out)
    with pytest.raises(ValueError, match="given as a GMem v2 network but looks like a GMem v2 memory bank"):
        convert({**files, "network": files["bank"]}, out)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(files["network"].read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated or damaged"):
        convert({**files, "network": cut}, out)
    torch.save(full_bank(width=12), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match="rows have 12 values but the network's condition_projection takes 16"):
        convert({**files, "bank": tmp_path / "narrow.pth"}, out)
    state = ldm_state()
    for key in ("decoder.conv_out.weight", "decoder.conv_in.weight", "decoder.norm_out.bias"):
        del state[key]
    (tmp_path / "broken").mkdir()
    broken, _ = save_files(tmp_path / "broken", state)
    with pytest.raises(ValueError, match=r"VA-VAE decoder.*missing keys \(3\): decoder.conv_in.weight, "
                                         r"decoder.conv_out.weight, decoder.norm_out.bias"):
        convert({**files, "vavae": broken}, out)
    torch.save({"mean": torch.zeros(1, 3, 1, 1), "std": torch.ones(1, 3, 1, 1)}, tmp_path / "stats3.pt")
    with pytest.raises(ValueError, match=r"'mean' must hold one value per latent channel \(4"):
        convert({**files, "stats": tmp_path / "stats3.pt"}, out)
    nothing_written(tmp_path, out)


def test_convert_command_takes_v2_files(files, tmp_path, capsys):
    from gmem_explore.cli.main import main

    out = tmp_path / "cli"
    args = ["convert", str(files["network"]), str(out), "--bank", str(files["bank"]), "--vavae", str(files["vavae"]),
            "--stats", str(files["stats"]), "--model-config", json.dumps(MODEL)]
    # the tiny VA-VAE is not f16d32: the command checks it against f16d32 and names the mismatch
    assert main(args) == 1 and "does not hold a VA-VAE decoder" in capsys.readouterr().err
    assert main(args[:5] + args[9:]) == 1  # the network's 4 channels are not f16d32's 32
    assert "latents have 32 channels but the network takes 4" in capsys.readouterr().err
    wide = {**MODEL, "in_channels": 32}  # latents of f16d32's width: hustvl's VA-VAE, named on the Hub
    torch.save(randomize(build_model(backbone="lightningdit", **wide)).state_dict(), files["network"])
    assert main(args[:5] + ["--model-config", json.dumps(wide)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0  # the VA-VAE named, not loaded: info works before it is downloaded
    info = capsys.readouterr().out
    assert "LightningDiT, 64 px images" in info and "va-vae" in info and "sde-heun" in info and "uniformly" in info
    config = json.loads((out / "config.json").read_text())
    assert config["autoencoder"]["checkpoint"] == "hf://hustvl/vavae-imagenet256-f16d32-dinov2/" \
                                                  "vavae-imagenet256-f16d32-dinov2.pt"
    assert main(["convert", str(files["network"]), str(tmp_path / "o2"), "--vavae", str(files["vavae"])]) == 1
    assert "also needs --bank" in capsys.readouterr().err


def test_named_v2_offline_fails_fast_with_the_how_to(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert {"gmem-v2-xl-160ep", "gmem-v2-xl-600ep"} <= set(HUB)
    for name in ("gmem-v2-xl-160ep", "gmem-v2-xl-600ep"):
        start = time.monotonic()
        with pytest.raises(CheckpointUnavailable) as e:
            resolve_checkpoint(name)
        assert time.monotonic() - start < 3
        text = str(e.value)
        assert "HF_HUB_OFFLINE is set" in text and "hf download Tangentone/GMem " + HUB[name]["filename"] in text
        assert "hf download hustvl/vavae-imagenet256-f16d32-dinov2 latents_stats.pt" in text
        assert "gmem convert DIR/" in text and "--bank DIR/" in text and "GMEM_V2_BANK_FILE" in text
    assert "GMEM_V2_600EP_NETWORK_FILE" in text  # the unconfirmed 600-epoch name says how to replace it


def cache_file(root: Path, repo_id: str, commit: str, name: str, write) -> None:
    """One file in the Hugging Face cache layout: blobs/<sha256>, snapshots/<commit>/<name> -> the blob, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    incoming = repo / "blobs" / "incoming"
    write(incoming)
    sha = file_sha256(incoming)
    incoming.rename(repo / "blobs" / sha)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit / name).symlink_to(Path("..") / ".." / "blobs" / sha)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_named_v2_from_a_hub_cache_converts_once(files, tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    gmem, vae = "a" * 40, "b" * 40
    spec = HUB["gmem-v2-xl-160ep"]
    cache_file(hub, "Tangentone/GMem", gmem, spec["filename"], lambda p: torch.save({"ema": files["state"]}, p))
    cache_file(hub, "Tangentone/GMem", gmem, V2_FILES["bank"]["filename"], lambda p: torch.save(files["rows"], p))
    cache_file(hub, "Tangentone/GMem", gmem, "other_bank.pth", lambda p: torch.save(dmd_bank(files["rows"]), p))
    for role, src in (("vavae", files["vavae"]), ("stats", files["stats"])):
        part = V2_FILES[role]
        cache_file(hub, part["repo_id"], vae, part["filename"], lambda p, src=src: p.write_bytes(src.read_bytes()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("GMEM_V2_BANK_FILE", raising=False)

    def resolve():
        return resolve_checkpoint("gmem-v2-xl-160ep", model_overrides=MODEL, autoencoder_overrides=LDM, progress=False)

    folder = resolve()
    assert folder.parent.name == gmem  # beside the network file, in its snapshot
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "gmem-v2-xl-160ep" and config["source"]["revision"] == gmem
    assert config["autoencoder"]["stats"] == "hf://hustvl/vavae-imagenet256-f16d32-dinov2/latents_stats.pt"
    stamp = (folder / "bank.safetensors").stat().st_mtime_ns
    assert resolve() == folder and (folder / "bank.safetensors").stat().st_mtime_ns == stamp  # converted once
    pipe = GMemPipeline.from_pretrained("gmem-v2-xl-160ep", model_overrides=MODEL, autoencoder_overrides=LDM,
                                        progress=False)
    assert pipe.generate(seeds=[1], steps=2).images.shape == (1, 8, 8, 3)  # the VA-VAE found in the cache offline
    monkeypatch.setenv("GMEM_V2_BANK_FILE", "other_bank.pth")  # another bank file: converted again
    assert json.loads((resolve() / "config.json").read_text())["source"]["bank"]["layout"] == "dmd"
