"""Datasets: Twemoji counts and groups, a deterministic split, image folders, digits."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from gmem_explore.data import (TWEMOJI_ATTRIBUTION, is_held_out, load_dataset, load_digits, load_folder, load_twemoji,
                               split_key)


def test_split_is_a_fixed_function_of_the_key():
    keys = [f"emoji{i}" for i in range(2000)]
    first = [is_held_out(k) for k in keys]
    assert first == [is_held_out(k) for k in reversed(keys)][::-1]  # order does not matter
    assert 0.07 < sum(first) / len(first) < 0.13  # about 10% held out
    assert is_held_out("1f600") == is_held_out("1f600")
    assert split_key("1f44b-1f3fd:waving:skin-tone-4") == split_key("1f44b:wave") == "1f44b"
    assert split_key("2620-fe0f:skull_and_crossbones") == "2620"


def test_twemoji_counts_groups_and_split():
    all_ = load_twemoji(32, "all")
    train, held = load_twemoji(32, "train"), load_twemoji(32, "held_out")
    assert len(all_) == 1884 and all_.images.shape == (1884, 32, 32, 3) and all_.images.dtype == torch.uint8
    assert len(all_.label_names) == 9 and "Component" not in all_.label_names
    assert len(train) + len(held) == 1884
    assert not set(train.names) & set(held.names)
    assert held.names == load_twemoji(32, "held_out").names  # deterministic
    # composited over white: the corners of emoji images are white
    assert all_.images[:, 0, 0].float().mean() > 240
    assert "CC-BY 4.0" in TWEMOJI_ATTRIBUTION


def test_folder_labels_from_subfolders(tmp_path):
    for group, colour in (("cats", (255, 0, 0, 255)), ("dogs", (0, 0, 255, 128))):
        (tmp_path / group).mkdir()
        for i in range(2):
            Image.new("RGBA", (20, 10), colour).save(tmp_path / group / f"{i}.png")
    data = load_folder(tmp_path, size=8)
    assert data.images.shape == (4, 8, 8, 3) and data.label_names == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[2, 0, 0].tolist() == [127, 127, 255]  # half-transparent blue over white
    assert load_dataset(str(tmp_path), 8, "all").names == data.names


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No image folder"):
        load_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no images"):
        load_folder(tmp_path)
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("no-such-dataset")
    with pytest.raises(ValueError, match="split must be"):
        load_digits(split="test")


def test_digits_are_dark_on_white():
    d = load_digits()
    assert d.images.shape == (1797, 8, 8, 3) and d.labels.max() == 9
    assert d.images[:, 0, 0].float().mean() > 240  # background white
    assert load_digits(16).images.shape == (1797, 16, 16, 3)
