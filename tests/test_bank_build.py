"""gmem build-bank's bank (with a stand-in encoder, so no checkpoint is loaded): one row per image with its label,
thumbnail and frequency 1, and the Twemoji licence only on banks of the Twemoji data set."""
from __future__ import annotations

import types

import torch
from PIL import Image

import gmem_explore.checkpoints.folder
import gmem_explore.checkpoints.hub
from gmem_explore.cli.build_bank import build_bank


class StandInEncoder:
    def encode(self, images):
        return images.float().mean(dim=(1, 2))  # (N, 3): enough to tell the rows apart

    def config_dict(self):
        return {"kind": "stand-in"}


def test_a_folder_whose_name_starts_with_twemoji_gets_no_twemoji_licence(tmp_path, monkeypatch):
    monkeypatch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", lambda name: "stand-in")
    monkeypatch.setattr(gmem_explore.checkpoints.folder, "load_checkpoint", lambda folder: types.SimpleNamespace(encoder=StandInEncoder()))
    folder = tmp_path / "twemoji_fanart"
    for i, group in enumerate(["cats", "dogs", "cats"]):
        (folder / group).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (60 * i + 10, 20, 30)).save(folder / group / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    bank = build_bank("twemoji_fanart", thumb_size=8)
    assert "attribution" not in bank.meta  # the user's own pictures, not Twitter's
    assert len(bank) == 3 and bank.label_names == ["cats", "dogs"] and bank.labels.tolist() == [0, 0, 1]
    assert bank.thumbnails.shape == (3, 8, 8, 3) and torch.equal(bank.freq, torch.ones(3, dtype=torch.float64))
    assert bank.meta["names"] == ["cats/0.png", "cats/2.png", "dogs/1.png"]


def test_the_split_asked_for_is_the_split_encoded(tmp_path, monkeypatch):
    from gmem_explore.data import load_folder

    monkeypatch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", lambda name: "stand-in")
    monkeypatch.setattr(gmem_explore.checkpoints.folder, "load_checkpoint", lambda folder: types.SimpleNamespace(encoder=StandInEncoder()))
    for i in range(20):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / f"{i}.png")
    train = load_folder(tmp_path, 8, "train")
    assert 0 < len(train) < 20  # the hash holds some of these 20 names out: the test can tell the splits apart
    bank = build_bank(str(tmp_path), split="train", thumb_size=8)
    assert bank.meta["names"] == train.names and bank.meta["split"] == "train"
    assert torch.equal(bank.thumbnails, train.images)


def test_the_command_stores_rows_in_the_dtype_asked_and_credits_twemoji(tmp_path, monkeypatch):
    import gmem_explore.data
    from gmem_explore.bank.memory import MemoryBank
    from gmem_explore.cli.main import main
    from gmem_explore.data import TWEMOJI_ATTRIBUTION, ImageSet

    monkeypatch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", lambda name: "stand-in")
    monkeypatch.setattr(gmem_explore.checkpoints.folder, "load_checkpoint", lambda folder: types.SimpleNamespace(encoder=StandInEncoder()))
    emoji = ImageSet(torch.randint(1, 255, (3, 8, 8, 3), dtype=torch.uint8), torch.tensor([0, 1, 0]), ["x", "y"],
                     ["1f600:grinning", "1f601:grin", "1f602:joy"])
    monkeypatch.setattr(gmem_explore.data, "load_dataset", lambda name, size, split: emoji)  # no 5 s decode
    out = tmp_path / "bank.safetensors"
    assert main(["build-bank", "--images", "twemoji", "--out", str(out)]) == 0
    bank = MemoryBank.load(out)
    assert bank.rows.dtype == torch.float16 and bank.meta["attribution"] == TWEMOJI_ATTRIBUTION  # the default
    assert main(["build-bank", "--images", "twemoji", "--out", str(out), "--dtype", "float32"]) == 0
    assert MemoryBank.load(out).rows.dtype == torch.float32
