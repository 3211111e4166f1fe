"""Images as the bank's thumbnails and the grids show them (tests written to kill mutants of images.py and viz.py
that the suite let through): transparency over white, float / 16-bit / greyscale inputs, a centre crop that keeps
the aspect, one image as a batch of one, and grids that put image i in row i // nrow, column i % nrow."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from gmem_explore.images import as_uint8_batch, load_rgb
from gmem_explore.viz import image_grid, to_pil


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_transparent_pixels_become_white_for_rgba_and_for_a_colour_key():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert load_rgb(png_bytes(rgba)).unique().tolist() == [255]
    keyed = Image.new("RGB", (4, 4), (0, 0, 0))
    keyed.info["transparency"] = (0, 0, 0)  # a PNG tRNS colour key: black means transparent
    assert load_rgb(png_bytes(keyed)).unique().tolist() == [255]


def test_float_16_bit_and_greyscale_inputs_keep_their_brightness():
    assert load_rgb(np.full((4, 4, 3), 0.5, dtype=np.float32)).unique().tolist() == [128]
    grey16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))  # half of 16-bit white
    assert load_rgb(png_bytes(grey16)).unique().tolist() == [128]
    dark16 = Image.fromarray(np.full((4, 4), 200, dtype=np.uint16))  # 16-bit by its mode, however dark: 200/65535
    assert load_rgb(png_bytes(dark16)).unique().tolist() == [1]  # not 200 (read as 8-bit because every value <= 255)
    grey = load_rgb(np.full((4, 5), 200, dtype=np.uint8))
    assert grey.shape == (4, 5, 3) and grey.unique().tolist() == [200]


def test_resizing_crops_the_centre_instead_of_squeezing():
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # white middle third, black sides
    out = load_rgb(wide, 10)
    assert out.shape == (10, 10, 3) and int(out.min()) >= 250  # only the middle square is kept


def test_one_image_is_a_batch_of_one():
    one = torch.zeros(6, 6, 3, dtype=torch.uint8)
    assert as_uint8_batch(one, 6).shape == (1, 6, 6, 3)


def test_grid_places_image_i_in_row_i_over_nrow_and_column_i_mod_nrow():
    images = torch.stack([torch.full((2, 2, 3), 10 * (i + 1), dtype=torch.uint8) for i in range(5)])
    grid = torch.from_numpy(np.array(image_grid(images, pad=1)))  # 5 images: 3 a row (ceil sqrt 5), 2 rows
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        assert int(grid[1 + 3 * r, 1 + 3 * c, 0]) == 10 * (i + 1)
    assert int(grid[1 + 3, 1 + 3 * 2, 0]) == 255  # the sixth cell is background
    big = to_pil(images[:1], scale=3)[0]
    assert big.size == (6, 6)


def test_exif_rotation_is_applied_and_scale_0_is_refused():
    import pytest

    img = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    assert tuple(load_rgb(buf.getvalue()).shape) == (4, 2, 3)
    with pytest.raises(ValueError, match="scale"):
        image_grid(torch.zeros(1, 2, 2, 3, dtype=torch.uint8), scale=0)
