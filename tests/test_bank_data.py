"""Image folders and splits (tests written to kill mutants of data.py that the suite let through)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from gmem_explore.data import load_folder, split_key


def test_skin_tones_and_variation_selectors_share_their_base_emojis_split():
    assert split_key("1f44d-1f3fb:thumbsup:skin-tone-2") == "1f44d"
    assert split_key("2764-fe0f:heart") == "2764"
    assert split_key("1f468-1f3fd-200d-1f4bb:technologist") == "1f468-200d-1f4bb"


def test_upper_case_suffixes_are_images_too(tmp_path):
    for name in ("a.PNG", "b.JpG", "c.png"):
        Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / name, format="PNG")
    data = load_folder(tmp_path, size=4)
    assert data.names == ["a.PNG", "b.JpG", "c.png"]


def test_images_of_different_sizes_are_refused_without_a_size(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (5, 4)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_folder(tmp_path, size=None)
    assert load_folder(tmp_path, size=4).images.shape == (2, 4, 4, 3)


def test_a_subset_keeps_names_labels_and_images_together(tmp_path):
    for i, group in enumerate(["x", "y", "x", "y"]):
        (tmp_path / group).mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), (i * 50, 0, 0)).save(tmp_path / group / f"{i}.png")
    data = load_folder(tmp_path, size=4)
    part = data.subset(torch.tensor([False, True, False, True]))
    assert part.names == [data.names[1], data.names[3]] and torch.equal(part.labels, data.labels[[1, 3]])
    assert torch.equal(part.images, data.images[[1, 3]])


def test_the_held_out_split_is_pinned_to_the_hash():
    from gmem_explore.data import is_held_out

    # The shipped emoji-32 model and the README figures use this split: it must never move
    keys = [f"img{i}.png" for i in range(100)]
    assert [k for k in keys if is_held_out(k)] == ['img32.png', 'img47.png', 'img65.png', 'img66.png', 'img70.png', 'img73.png', 'img79.png', 'img84.png']
