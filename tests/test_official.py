"""The released GMem v1 checkpoint path, exercised on a tiny checkpoint written in the exact released layout:
torch.save({"network": state_dict, "memorybank": (N, D), "memoryfreq": (N,)}) with the official key names."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, randomize
from gmem_explore import offline  # noqa: E402
from gmem_explore import GMemPipeline, build_model, load_checkpoint
from gmem_explore.bank.memory import MemoryBank
from gmem_explore.checkpoints.hub import HUB, CheckpointUnavailable, download, resolve_checkpoint
from gmem_explore.checkpoints.conversion_cache import converted_folder_for
from gmem_explore.checkpoints.official import UnsafeCheckpointError, convert_official, file_sha256, load_official
from gmem_explore.safefiles import load_tensors

FILE = HUB["gmem-v1-xl"]["filename"]
REPO_DIR = "models--Tangentone--GMem"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def released_dict(rows=24, seed=0):
    model = randomize(build_model(**TINY), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    return {"network": model.state_dict(), "memorybank": torch.randn(rows, TINY["snippet_dim"], generator=g) * 3,
            "memoryfreq": torch.randint(1, 50, (rows,), generator=g).float()}


@pytest.fixture
def official_pth(tmp_path):
    raw = released_dict()
    path = tmp_path / "dl" / FILE
    path.parent.mkdir()
    torch.save(raw, path)
    return path, raw


def hf_cache(root: Path, raw: dict, commit: str = COMMIT) -> Path:
    """The Hugging Face cache layout: blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/main."""
    repo = root / REPO_DIR
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "incoming"
    torch.save(raw, tmp)
    sha = file_sha256(tmp)
    tmp.rename(repo / "blobs" / sha)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / FILE).symlink_to(Path("..") / ".." / "blobs" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap / FILE


def test_conversion_progress_bar_ends_full(official_pth, tqdm_bars):
    """The 'converting' bar counts every byte written, the memoryfreq counts included (it stopped short of its
    total by their size), and closes."""
    path, _ = official_pth
    resolve_checkpoint(str(path), bank_dtype="fp16", model_overrides=TINY, progress=True)
    (bar,) = [b for b in tqdm_bars if b.desc == "converting"]
    assert bar.n == bar.total > 0 and bar.closed


def test_local_pth_converts_once_and_loads_exactly(official_pth):
    path, raw = official_pth
    folder = resolve_checkpoint(str(path), bank_dtype="fp32", model_overrides=TINY, progress=False)
    assert folder == converted_folder_for(path, "fp32") and folder.parent == path.parent
    ckpt = load_checkpoint(folder)
    for k, v in raw["network"].items():
        assert torch.equal(ckpt.model.state_dict()[k], v), k
    assert torch.equal(ckpt.bank.rows, raw["memorybank"]) and torch.equal(ckpt.bank.freq, raw["memoryfreq"].double())
    config = json.loads((folder / "config.json").read_text())
    assert config["sampler"] == {"method": "sde", "steps": 250}
    assert config["source"]["bytes"] == path.stat().st_size
    # the app's note on the model names its bank as converted (its own rows, not the released 640,000)
    assert f"memory bank of {len(raw['memorybank']):,} DINOv2 snippets" in config["about"]
    from gmem_explore.app.server import model_note

    assert model_note(GMemPipeline.from_pretrained(str(folder)), "gmem-v1-xl").startswith(
        "**What gmem-v1-xl does.** GMem's released ImageNet model (v1)")
    # the second resolve reuses the conversion: nothing is rewritten
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_checkpoint(str(path), bank_dtype="fp32", model_overrides=TINY, progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    # the pipeline samples from it through the same path (pixels here, since the tiny model has 3 channels)
    pipe = GMemPipeline.from_pretrained(str(path), bank_dtype="fp32", model_overrides=TINY, progress=False)
    out = pipe.generate(2, seeds=[0, 1], steps=2)
    assert out.images.shape == (2, 8, 8, 3) and out.settings["method"] == "sde"
    assert (folder.stat().st_mode & 0o777) == 0o755  # readable by the other users of a shared cache


def test_a_resaved_pth_of_the_same_size_is_converted_again(official_pth):
    """Every checkpoint of one architecture has the same size: the cache must notice new weights."""
    path, raw = official_pth
    first = resolve_checkpoint(str(path), bank_dtype="fp32", model_overrides=TINY, progress=False)
    newer = released_dict(seed=5)
    torch.save(newer, path)
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 10**9))  # a later save, even on a coarse clock
    assert path.stat().st_size == json.loads((first / "config.json").read_text())["source"]["bytes"]
    folder = resolve_checkpoint(str(path), bank_dtype="fp32", model_overrides=TINY, progress=False)
    weights = load_checkpoint(folder).model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in newer["network"].items())


def test_fp16_bank_and_pickle_free_files(official_pth, tmp_path):
    path, raw = official_pth
    out = convert_official(path, tmp_path / "conv", bank_dtype="fp16", model_overrides=TINY)
    assert sorted(p.name for p in out.iterdir()) == ["bank.safetensors", "config.json", "model.safetensors"]
    tensors, meta = load_tensors(out / "bank.safetensors")
    assert tensors["rows"].dtype == torch.float16 and meta["format"] == "gmem-explore-bank-1"
    bank = MemoryBank.load(out / "bank.safetensors")
    assert torch.allclose(bank.rows.float(), raw["memorybank"], rtol=1e-3, atol=1e-3)
    assert not list(tmp_path.glob(".conv.*"))  # no partial folder left behind
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        convert_official(path, out, model_overrides=TINY)


def test_hf_cache_layout_offline(tmp_path, monkeypatch):
    raw = released_dict(seed=3)
    hub = tmp_path / "hf" / "hub"
    cached = hf_cache(hub, raw)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # honoured at call time: hub = $HF_HOME/hub
    assert download("gmem-v1-xl") == cached  # refs/main -> the snapshot
    assert download("gmem-v1-xl", revision=COMMIT) == cached  # a pinned commit
    with pytest.raises(CheckpointUnavailable, match="not in the Hugging Face cache"):
        download("gmem-v1-xl", revision="f" * 40)
    folder = resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)
    assert folder.parent == cached.parent  # converted beside the file, inside that snapshot
    config = json.loads((folder / "config.json").read_text())
    assert config["source"]["sha256"] == cached.resolve().name  # verified against the blob's name (the LFS etag)
    assert torch.equal(load_checkpoint(folder).model.state_dict()["pos_embed"], raw["network"]["pos_embed"])


def test_corrupt_cached_blob_is_detected(tmp_path, monkeypatch):
    cached = hf_cache(tmp_path / "hub", released_dict())
    blob = cached.resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: its sha256"):
        convert_official(cached, tmp_path / "out", model_overrides=TINY)
    assert not (tmp_path / "out").exists()


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp") / f"gmem-pwned-{os.getpid()}"


def test_pickle_carrying_code_is_refused_and_nothing_runs(tmp_path):
    raw = released_dict()
    raw["memoryfreq"] = RunsCode()
    path = tmp_path / FILE
    torch.save(raw, path)
    with pytest.raises(UnsafeCheckpointError, match="Nothing from it was executed") as err:
        load_official(path)
    assert "system" in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        resolve_checkpoint(str(path), model_overrides=TINY, progress=False)
    assert not MARKER.exists()


def test_layout_errors_name_what_is_wrong(tmp_path):
    raw = released_dict()
    path = tmp_path / "a.pth"
    torch.save({"network": raw["network"], "memorybank": raw["memorybank"]}, path)
    with pytest.raises(ValueError, match=r"keys \['memoryfreq'\] are missing"):
        load_official(path)
    net = dict(raw["network"])
    net["label_embedder.weight"] = net.pop("condition_projection.linear.weight")
    torch.save({**raw, "network": net}, path)
    with pytest.raises(ValueError, match="missing keys: condition_projection.linear.weight.*unexpected keys: label_embedder"):
        convert_official(path, tmp_path / "out", model_overrides=TINY)
    # the real size is the default: a tiny network does not fit SiT-XL/2, and the message says which shapes
    torch.save(raw, path)
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_official(path, tmp_path / "out2")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_official(path)


def test_offline_name_fails_at_once_with_how_to(tmp_path, monkeypatch, capsys):
    from gmem_explore.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    start = time.monotonic()
    code = main(["sample-fid", "--checkpoint", "gmem-v1-xl", "--out", str(tmp_path / "s"), "--num-fid-samples", "2"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 3  # no network wait, no retries
    assert "hf download Tangentone/GMem " + FILE in err and "HF_HOME" in err
    assert "--checkpoint DIR/" + FILE in err  # how to use the file once it is here
    assert not (tmp_path / "s").exists()
    with pytest.raises(CheckpointUnavailable, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint("gmem-v1-xl")


def test_convert_command(official_pth, tmp_path, capsys):
    from gmem_explore.cli.main import main

    path, raw = official_pth
    out = tmp_path / "cli-out"
    assert main(["convert", str(path), str(out), "--bank-dtype", "fp32", "--model-config", json.dumps(TINY)]) == 0
    assert torch.equal(load_checkpoint(out).bank.rows, raw["memorybank"])
    assert main(["convert", str(path), str(out)]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "o2"), "--sha256", "0" * 64, "--model-config", json.dumps(TINY)]) == 1
    assert "does not match the sha256 you gave" in capsys.readouterr().err


def test_online_download_is_size_checked(tmp_path, monkeypatch):
    """The online branch with the Hub faked: hf_hub_download's answer is checked against the Hub's metadata."""
    import huggingface_hub

    import gmem_explore.checkpoints.hub as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(offline, "hub_reachable", lambda timeout=3.0: True)
    fetched = tmp_path / FILE
    fetched.write_bytes(b"x" * 100)
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, revision, Path(cache_dir)))
        return str(fetched)

    class Meta:
        size = 100

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url: Meta)
    assert download("gmem-v1-xl", revision="v1") == fetched
    assert calls == [("Tangentone/GMem", FILE, "v1", tmp_path / "cache")]  # revision and cache honoured
    Meta.size = 4096
    with pytest.raises(CheckpointUnavailable, match="has 100 bytes but the Hub says 4096"):
        download("gmem-v1-xl")


def test_a_network_saved_from_a_ddp_wrapper_loses_its_module_prefix(tmp_path):
    # torch.save(ddp_model.state_dict()) names every key "module.<key>"; the released layout has plain keys
    raw = released_dict()
    path = tmp_path / "ddp.pth"
    torch.save({**raw, "network": {f"module.{k}": v for k, v in raw["network"].items()}}, path)
    network = load_official(path)["network"]
    assert sorted(network) == sorted(raw["network"])
    out = convert_official(path, tmp_path / "conv", bank_dtype="fp32", model_overrides=TINY)
    model = load_checkpoint(out).model.state_dict()
    for k, v in raw["network"].items():
        assert torch.equal(model[k], v), k
    # a key that merely starts with "module." among plain ones is left alone (it is not a DDP save)
    mixed = {**raw["network"], "module.extra": torch.zeros(1)}
    torch.save({**raw, "network": mixed}, path)
    assert "module.extra" in load_official(path)["network"]
