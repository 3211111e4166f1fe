"""What `gmem` writes and shows as a new user meets it: a whole sentence per command in `gmem --help`, a sample grid
large enough to see, a progress bar that counts images, and --out that makes at most the file's own folder."""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from gmem_explore.cli.main import COMMANDS, build_parser, main, subparsers


def test_help_lists_every_command_with_a_whole_sentence(capsys):
    """The summary is the docstring's first paragraph: its first line alone cut `info` and `convert` mid-sentence
    ("... then what its")."""
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    (action,) = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    summaries = {c.dest: c.help for c in action._choices_actions}
    assert list(summaries) == COMMANDS
    for name, text in summaries.items():
        assert text.endswith(".") and len(text) <= 120, f"{name}: {text!r}"  # one sentence a line can hold
        assert f"{name} {text}" in listing, f"`gmem --help` does not show {name}'s summary whole"
    assert summaries["info"] == "Describe a checkpoint: its parts, default sampler and where it came from."
    assert all(sub.description for sub in subparsers(build_parser()))


def test_sample_grid_shows_each_image_at_a_readable_size_by_default(tmp_path, capsys):
    """emoji-32's 32 px images: the default grid of 16 was 138 px across, a stamp in an image viewer. By default each
    image is shown at 128 px or more (4x here); --scale 1 keeps the model's own pixels."""
    out = tmp_path / "grid.png"
    assert main(["sample", "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (4 * (2 + 2 * 34), 4 * (2 + 2 * 34))  # 2 x 2 images of 32 px, 2 px padding
    assert main(["sample", "--n", "4", "--steps", "2", "--scale", "1", "--out", str(out)]) == 0
    assert Image.open(out).size == (70, 70)
    from gmem_explore.cli.sample import readable_scale

    assert [readable_scale(w) for w in (8, 32, 64, 100, 256, 512)] == [16, 4, 2, 2, 1, 1]


def test_sample_progress_counts_images_with_the_step_beside(tmp_path, monkeypatch, capsys):
    """16 images of 8 steps are a bar of 16 images with "step k/8" beside it, not a count of 128."""
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.total, self.unit, self.n, self.postfix, self.closed = total, unit, 0, [], False
            bars.append(self)

        def set_postfix_str(self, text, refresh=True):
            self.postfix.append(text)

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    assert main(["sample", "--out", str(tmp_path / "g.png")]) == 0
    (bar,) = bars
    assert (bar.total, bar.unit, bar.n, bar.closed) == (16, "image", 16, True)
    assert bar.postfix == [f"step {k}/8" for k in range(1, 9)]


def test_sample_out_makes_only_the_files_own_folder(tmp_path, capsys, monkeypatch):
    """`--out new/grid.png` makes new/; `--out typo/run/grid.png` made the whole tree without a word: it is refused
    before the model loads, nothing created."""
    import gmem_explore.pipeline

    load = gmem_explore.pipeline.GMemPipeline.from_pretrained
    monkeypatch.setattr(gmem_explore.pipeline.GMemPipeline, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model loaded before --out was checked"))
    deep = tmp_path / "typo" / "run" / "grid.png"
    assert main(["sample", "--out", str(deep)]) == 1
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'typo'} does not exist, and only the file's own folder (run) is created" in err
    assert f"mkdir -p {tmp_path / 'typo' / 'run'}" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
    for command in (["bank", "compress", "emoji-32", "--out", str(tmp_path / "a" / "b" / "r.safetensors")],
                    ["build-bank", "--images", "digits", "--out", str(tmp_path / "a" / "b" / "bank.safetensors")]):
        assert main(command) == 1
        assert "does not exist, and only the file's own folder (b) is created" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(gmem_explore.pipeline.GMemPipeline, "from_pretrained", load)
    assert main(["sample", "--n", "1", "--steps", "1", "--out", str(tmp_path / "new" / "grid.png")]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["grid.json", "grid.png"]
    assert json.loads((tmp_path / "new" / "grid.json").read_text())["seeds"] == [0]
    assert re.search(r"wrote .*grid\.png \(1 images\)", capsys.readouterr().out)
