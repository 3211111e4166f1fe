"""The Bank tab's row details beside the folder the bank was built from (python app.py --imagenet-train DIR): the
row's source image and class next to its picture, which for a bank without thumbnails is its generation (kept in
the gallery); rows a session added or replaced, a folder of another size and an unreadable file are said so."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app_tiny import ROWS, tiny_bank, tiny_factory, tiny_pipeline
from gmem_explore import MemoryBank
from gmem_explore.app import bank_tab
from gmem_explore.app.common import Limits
from gmem_explore.app.server import build_app

pytest_plugins = ["app_tiny"]


def imagenet_like(root, files: int):
    """A train folder of 4 synset folders holding `files` small images, and a synset list beside it."""
    train = root / "train"
    synsets = ["n01440764", "n01443537", "n01484850", "n01491361"]
    for i in range(files):
        folder = train / synsets[i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (i * 6, 255 - i * 6, 40)).save(folder / f"{synsets[i % 4]}_{i}.JPEG", quality=95)
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
                                                 "n01484850 great white shark\nn01491361 tiger shark\n")
    return train


def app_with(train, bank: MemoryBank | None = None):
    factory = tiny_factory if bank is None else (lambda name: tiny_pipeline().with_bank(bank))
    return build_app(factory, "tiny", limits=Limits(preview_seconds=0.0), use_spaces_gpu=False,
                     imagenet_train=train).gmem_context


def test_row_details_show_the_rows_source_image_and_class(tmp_path):
    train = imagenet_like(tmp_path, ROWS)
    ctx = app_with(train)
    s = ctx.new_session()
    picture, text, neighbours, rows, source = bank_tab.row_details(ctx, s, 19)
    # the sorted paths: 10 files of each synset, synset by synset, names sorted as text (_1, _13, ..., _5, _9)
    expected = sorted(str(p) for p in train.rglob("*.JPEG"))[19]
    assert expected.endswith("n01443537/n01443537_9.JPEG")
    assert "**source**: n01443537 · goldfish, Carassius auratus (class 1) · `n01443537/n01443537_9.JPEG`" in text
    assert "may not line up" not in text  # as many files as rows
    pixels = np.asarray(source)
    assert source.size == (20, 16) and abs(pixels[..., 0].astype(int).mean() - 9 * 6) < 6  # file 9's red
    assert picture.size == (128, 128) and len(neighbours) == bank_tab.NEIGHBOURS  # the thumbnail, as before
    # the component is there only where a folder was given
    assert ctx.source is not None and app_with(None).source is None


def test_a_bank_without_thumbnails_shows_its_generated_picture_beside_the_source(tmp_path):
    train = imagenet_like(tmp_path, ROWS)
    ctx = app_with(train, MemoryBank(tiny_bank().column("rows")[:]))
    s = ctx.new_session()
    picture, text, _, _, source = bank_tab.row_details(ctx, s, 3)
    made = ctx.pipeline(s).generate(indices=[3], seeds=[0]).images[0]
    assert picture.size == (128, 128) and torch.equal(torch.from_numpy(np.array(picture))[::16, ::16], made)
    assert source is not None and "tench" in text
    before = ctx.generated_rows.generated
    bank_tab.row_details(ctx, ctx.new_session(), 3)
    assert ctx.generated_rows.generated == before  # kept: not generated again


def test_session_edits_a_folder_of_another_size_and_a_bad_file_are_said(tmp_path):
    train = imagenet_like(tmp_path, ROWS - 4)
    ctx = app_with(train)
    s = ctx.new_session()
    with pytest.warns(UserWarning, match=f"the bank has {ROWS} rows but .* holds {ROWS - 4} files"):
        _, text, _, _, source = bank_tab.row_details(ctx, s, 2)
    assert source is not None and f"the bank has {ROWS} rows" in text and "may not line up" in text
    _, text, _, _, source = bank_tab.row_details(ctx, s, ROWS - 2)  # beyond the folder's files
    assert source is None and f"row {ROWS - 2} has no source image" in text
    ctx.private_bank(s).replace(5, -ctx.bank(s).column("rows")[5][None])
    _, text, _, _, source = bank_tab.row_details(ctx, s, 5)
    assert source is not None and "replaced in this session" in text
    (new_row,) = ctx.private_bank(s).add(torch.randn(1, 16)).tolist()
    _, text, _, _, source = bank_tab.row_details(ctx, s, new_row)
    assert source is None and "added in this session" in text
    broken = sorted(train.rglob("*.JPEG"))[7]
    broken.write_bytes(b"\xff\xd8 truncated")
    _, text, _, _, source = bank_tab.row_details(ctx, ctx.new_session(), 7)
    assert source is None and "cannot be shown" in text and broken.name in text


def test_the_app_refuses_a_missing_folder_before_it_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="not there"):
        app_with(tmp_path / "nowhere")


def test_the_folder_comes_from_a_flag_or_the_spaces_variable(tmp_path, monkeypatch, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app

    monkeypatch.delenv("GMEM_IMAGENET_TRAIN", raising=False)
    assert app.parse_args([]).imagenet_train is None
    train = imagenet_like(tmp_path, 4)
    assert app.parse_args(["--imagenet-train", str(train)]).imagenet_train == str(train)
    monkeypatch.setenv("GMEM_IMAGENET_TRAIN", str(train))  # a Space passes no flags
    assert app.parse_args([]).imagenet_train == str(train)
    monkeypatch.setenv("GMEM_IMAGENET_TRAIN", str(tmp_path / "gone"))
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "$GMEM_IMAGENET_TRAIN is" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app.parse_args(["--imagenet-train", str(tmp_path / "gone")])
    err = capsys.readouterr().err
    assert "--imagenet-train is" in err and "not a folder" in err
