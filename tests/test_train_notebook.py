"""notebook/finetune.py's helpers (behind notebooks/03_finetune.ipynb) with odd inputs: a refusal that says what was
wrong instead of a silently wrong folder or a bare Python error."""
from __future__ import annotations

import pytest
import torch

from gmem_explore.bank.build import bank_from_images
from gmem_explore.notebook import finetune as nbt
from gmem_explore.data import ImageSet


def test_write_image_folder_refuses_labels_that_name_no_group(tmp_path):
    """Label -1 wrote the image into the last group's folder without a word; 2 of 2 groups was an IndexError."""
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    for labels in ([0, -1], [0, 2]):
        with pytest.raises(ValueError, match=rf"labels \[{labels[1]}\] name no group: label_names has 2 "
                                             r"\(labels 0 to 1\)"):
            nbt.write_image_folder(images, ["a", "b"], labels, ["g", "h"], tmp_path / "x")
    assert not (tmp_path / "x").exists()


class Mean:
    def encode(self, images):
        return images.float().mean(dim=(1, 2))


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_bank_from_images_refuses_a_batch_size_that_is_not_a_count(batch_size):
    data = ImageSet(torch.zeros(3, 4, 4, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["g"],
                    ["a", "b", "c"])
    with pytest.raises(ValueError, match=f"batch_size must be a whole number of images, 1 or more; got {batch_size}"):
        bank_from_images(Mean(), data, batch_size=batch_size)
