"""GMemPipeline and our checkpoint folder: generation by count, rows or snippets; seeds; files; the CLI."""
import argparse
import json
import subprocess
import sys

import pytest
import torch

from gmem_explore import Checkpoint, GMemPipeline, load_checkpoint, save_checkpoint
from gmem_explore.cli.main import main as gmem
from gmem_explore.models.sit import GMemSiT
from gmem_explore.sampling import SamplerSettings


def test_generate_by_count_returns_what_was_used(tiny_pipeline):
    out = tiny_pipeline.generate(5, seeds=[1, 2, 3, 4, 5])
    assert out.images.shape == (5, 8, 8, 3) and out.images.dtype == torch.uint8
    assert out.seeds == [1, 2, 3, 4, 5] and len(out.indices) == 5
    assert torch.allclose(out.snippets, tiny_pipeline.bank.snippets(out.indices))
    # the released rule: rows follow from the initial noise of each seed
    again = tiny_pipeline.generate(seeds=[3])
    assert again.indices == [out.indices[2]] and torch.equal(again.images[0], out.images[2])


def test_random_seeds_are_returned_and_reproduce(tiny_pipeline):
    first = tiny_pipeline.generate(2)
    assert all(isinstance(s, int) for s in first.seeds)
    replay = tiny_pipeline.generate(2, seeds=first.seeds)
    assert torch.equal(first.images, replay.images)


def test_same_seed_same_image_at_batch_size_1_and_8(tiny_pipeline):
    seeds = list(range(8))
    a = tiny_pipeline.generate(8, seeds=seeds, method="sde", steps=4, batch_size=8)
    b = tiny_pipeline.generate(8, seeds=seeds, method="sde", steps=4, batch_size=1)
    assert a.indices == b.indices
    assert (a.images.int() - b.images.int()).abs().max() <= 1  # float32 kernels may round one step apart
    assert len({bytes(im.numpy()) for im in a.images}) == 8


def test_rows_and_snippets_drive_generation(tiny_pipeline):
    by_row = tiny_pipeline.generate(indices=[4, 4, 9], seeds=[0, 0, 0])
    assert by_row.indices == [4, 4, 9]
    assert torch.equal(by_row.images[0], by_row.images[1]) and not torch.equal(by_row.images[0], by_row.images[2])
    snip = tiny_pipeline.bank.snippets([9]) * 3  # unnormalised on purpose: the pipeline normalises
    by_snip = tiny_pipeline.generate(snippets=snip, seeds=[0])
    assert by_snip.indices == [None] and torch.equal(by_snip.images[0], by_row.images[2])


def test_choose_strategies_are_seeded(tiny_pipeline):
    a = tiny_pipeline.generate(6, seeds=range(6), choose="uniform")
    b = tiny_pipeline.generate(6, seeds=range(6), choose="uniform")
    assert a.indices == b.indices


def test_interpolation_uses_one_seed_and_ends_on_the_rows(tiny_pipeline):
    strip = tiny_pipeline.interpolate(2, 7, k=5, mix="slerp", seed=3)
    ends = tiny_pipeline.generate(indices=[2, 7], seeds=[3, 3])
    assert strip.seeds == [3] * 5 and strip.images.shape[0] == 5
    assert (strip.images[0].int() - ends.images[0].int()).abs().max() <= 1
    assert (strip.images[-1].int() - ends.images[1].int()).abs().max() <= 1
    # the tiny model's images barely depend on the snippet, so the frames' snippets say where the strip ends:
    # the first frame is row 2's snippet and the last row 7's (weights 0 and 1, not 0 .. (k - 1) / k)
    torch.testing.assert_close(strip.snippets[0], ends.snippets[0])
    torch.testing.assert_close(strip.snippets[-1], ends.snippets[1])


def test_interpolation_takes_the_sampler_like_generate_and_records_the_mix(tiny_pipeline):
    strip = tiny_pipeline.interpolate(2, 7, k=3, mix="lerp", seed=1, method="euler", steps=2)
    assert strip.settings["method"] == "euler" and strip.settings["steps"] == 2
    assert (strip.settings["mix"], strip.settings["from_row"], strip.settings["to_row"]) == ("lerp", 2, 7)
    assert strip.indices == [None] * 3  # frames are mixes, not rows
    with pytest.raises(ValueError, match="mix='lerp'"):
        tiny_pipeline.interpolate(2, 7, k=3, method="lerp")
    with pytest.raises(ValueError, match="pass seed="):
        tiny_pipeline.interpolate(2, 7, k=3, seeds=[1, 2, 3])
    vector = tiny_pipeline.interpolate(tiny_pipeline.bank.rows[3], 7, k=2, steps=1)
    assert vector.settings["from_row"] is None and vector.settings["to_row"] == 7


def test_degenerate_requests_are_refused_with_reasons(tiny_pipeline):
    with pytest.raises(ValueError, match="indices is empty"):
        tiny_pipeline.generate(indices=[])
    with pytest.raises(ValueError, match="finite number"):
        tiny_pipeline.generate(1, seeds=[0], steps=2, guidance=float("inf"))
    np = pytest.importorskip("numpy")
    out = tiny_pipeline.generate(1, seeds=[0], steps=np.int64(2))
    assert out.settings["steps"] == 2 and type(out.settings["steps"]) is int


def test_numpy_and_tensor_integers_are_integers_and_one_seed_numbers_the_images(tiny_pipeline):
    """Seeds and rows may be NumPy or tensor integers; one int seed s gives the images s, s + 1, ... (as the CLI's
    and the app's --seed), each the same image as when asked for alone."""
    np = pytest.importorskip("numpy")
    out = tiny_pipeline.generate(3, seeds=np.int64(5), steps=3)
    assert out.seeds == [5, 6, 7] and all(type(s) is int for s in out.seeds)
    alone = tiny_pipeline.generate(seeds=[6], steps=3)
    assert torch.equal(alone.images[0], out.images[1])
    assert tiny_pipeline.generate(seeds=np.arange(2), steps=3).seeds == [0, 1]
    assert tiny_pipeline.generate(seeds=torch.tensor([3, 4]), steps=3).seeds == [3, 4]
    rows = tiny_pipeline.generate(indices=np.array([2, 7]), seeds=0, steps=3)
    assert rows.indices == [2, 7] and rows.seeds == [0, 1]
    strip = tiny_pipeline.interpolate(np.int64(2), torch.tensor(7), k=np.int64(3), seed=3, steps=3)
    assert len(strip) == 3 and torch.allclose(strip.snippets[0], tiny_pipeline.bank.snippets([2])[0], atol=1e-6)


def test_callback_and_previews(tiny_pipeline):
    seen = []
    tiny_pipeline.generate(3, seeds=range(3), steps=3, batch_size=2,
                           callback=lambda info, start, total: seen.append((info.step, start, total)))
    assert seen == [(1, 0, 3), (2, 0, 3), (3, 0, 3), (1, 2, 3), (2, 2, 3), (3, 2, 3)]


def test_progress_bar_counts_images_and_ends_full(tiny_pipeline, tqdm_bars):
    """progress=True: a bar of the 3 images (not of images x steps: 16 images of 8 steps read "128 steps"), the
    sampler step beside it, ending full after batches of 2 and 1."""
    tiny_pipeline.generate(3, seeds=range(3), steps=2, batch_size=2, progress=True)
    assert [(b.total, b.n, b.postfix, b.closed) for b in tqdm_bars] == [(3, 3, "step 2/2", True)]


def test_previews_show_the_denoised_estimate_not_the_noisy_state(tiny_pipeline):
    """The app's live previews decode x_t - t v (the clean estimate): after the first of 3 Euler steps the state is
    still two thirds noise, which a preview of the state itself would show."""
    decode = tiny_pipeline.autoencoder.decode
    shown = []
    tiny_pipeline.generate(2, seeds=[0, 1], method="euler", steps=3, callback=lambda info, start, total: shown.append(
        (tiny_pipeline.decode_preview(info), decode(info.denoised.float()), decode(info.x.float()))))
    preview, denoised, state = shown[0]
    assert torch.equal(preview, denoised) and not torch.equal(preview, state)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(n=0), ValueError, "positive integer"),
    (dict(n=2, seeds=[1]), ValueError, "2 images"),
    (dict(n=1, seeds=[-1]), ValueError, "seeds must be integers"),
    (dict(n=1, seeds=[2**64]), ValueError, "seeds must be integers"),
    (dict(indices=[99]), IndexError, "rows 0..19"),
    (dict(snippets=torch.randn(2, 768)), ValueError, r"\(N, 16\)"),
    (dict(snippets=torch.full((1, 16), float("nan"))), ValueError, "NaN"),
    (dict(n=1, choose="best"), ValueError, "Unknown choice"),
    (dict(n=1, method="ddpm"), ValueError, "Unknown sampler"),
    (dict(n=1, steps=-1), ValueError, "steps must be"),
    (dict(n=10**7), ValueError, "too many"),
    (dict(indices=[1], snippets=torch.randn(1, 16)), ValueError, "not both"),
    (dict(indices=[1.7]), ValueError, r"indices \(bank rows\) must be integers; got 1.7"),  # not silently row 1
    (dict(n=1, seeds=[1.5]), ValueError, "seeds must be integers; got 1.5"),
    (dict(n=1, seeds="3"), ValueError, "seeds must be integers"),
    (dict(n=1, guidance="2"), ValueError, "guidance must be a finite number"),  # was a TypeError from a comparison
    (dict(n=10**6), ValueError, "gmem sample-fid"),
])
def test_bad_requests_are_explained(tiny_pipeline, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_pipeline.generate(**kwargs)


def test_checkpoint_folder_round_trip(tmp_path, tiny_pipeline):
    ckpt = Checkpoint(tiny_pipeline.model, tiny_pipeline.bank, {"type": "pixels"}, None,
                      {"method": "euler", "steps": 3}, {"name": "tiny"})
    save_checkpoint(tmp_path / "ck", ckpt)
    back = load_checkpoint(tmp_path / "ck")
    assert back.info["name"] == "tiny" and back.sampler == SamplerSettings("euler", 3)
    pipe = GMemPipeline.from_pretrained(str(tmp_path / "ck"))
    assert torch.equal(pipe.generate(seeds=[5, 6]).images, tiny_pipeline.generate(seeds=[5, 6], steps=3).images)


def test_loading_a_checkpoint_skips_random_initialisation(tmp_path, tiny_pipeline, monkeypatch):
    """Weights go straight from the file into uninitialised memory: initialising first would cost seconds of CPU
    and a second copy for SiT-XL/2, only to be overwritten."""
    ckpt = Checkpoint(tiny_pipeline.model, tiny_pipeline.bank, {"type": "pixels"}, None, {"method": "euler", "steps": 3}, {})
    save_checkpoint(tmp_path / "ck", ckpt)

    def no_init(self):
        raise AssertionError("load_checkpoint initialised the weights it was about to overwrite")

    monkeypatch.setattr(GMemSiT, "initialize_weights", no_init)
    back = load_checkpoint(tmp_path / "ck")
    for (name, a), b in zip(tiny_pipeline.model.state_dict().items(), back.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_damaged_checkpoints_are_explained(tmp_path, tiny_pipeline):
    folder = tmp_path / "ck"
    save_checkpoint(folder, Checkpoint(tiny_pipeline.model, tiny_pipeline.bank))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(folder)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="neither a known checkpoint name"):
        GMemPipeline.from_pretrained(str(tmp_path / "nowhere"))


def test_gmem_sample_writes_a_grid_and_its_record(tmp_path, tiny_pipeline):
    save_checkpoint(tmp_path / "ck", Checkpoint(tiny_pipeline.model, tiny_pipeline.bank, sampler={"method": "euler", "steps": 2}))
    out = tmp_path / "grid.png"
    assert gmem(["sample", "--checkpoint", str(tmp_path / "ck"), "--n", "4", "--seed", "10", "--out", str(out)]) == 0
    from PIL import Image
    # a 2x2 grid of 8 px images with 2 px padding, at the default scale that shows each image at 128 px (16x)
    assert Image.open(out).size == (16 * (2 + 2 * 10), 16 * (2 + 2 * 10))
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["seeds"] == [10, 11, 12, 13] and len(record["rows"]) == 4
    assert gmem(["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 1
    jpg = tmp_path / "grid.JPG"  # the format follows the extension, whatever its case
    assert gmem(["sample", "--checkpoint", str(tmp_path / "ck"), "--n", "1", "--out", str(jpg)]) == 0
    assert Image.open(jpg).format == "JPEG"
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, nothing left behind


def test_gmem_sample_refuses_an_unknown_image_type_before_sampling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(GMemPipeline, "from_pretrained", lambda *a, **k: pytest.fail("sampled before checking --out"))
    assert gmem(["sample", "--out", str(tmp_path / "grid.pgn")]) == 1
    assert "cannot write images of type '.pgn'; end the name in .png" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    for option, message in ((["--guidance", "-1"], "guidance must be a finite number >= 0"),
                            (["--steps", "0"], "steps must be an integer in [1,"),
                            (["--guidance", "2", "--guidance-interval", "0.9", "0.1"], "0 <= low <= high <= 1")):
        assert gmem(["sample", *option, "--out", str(tmp_path / "grid.png")]) == 1
        assert message in capsys.readouterr().err


def test_gmem_help_explains_itself():
    result = subprocess.run([sys.executable, "-m", "gmem_explore", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "sample" in result.stdout and "emoji-32" in result.stdout


def test_every_gmem_command_and_option_explains_itself():
    """Each command and `gmem bank` action has a description, each option a help text, and an option with a
    default (other than none / off) says what it is, since the commands' help formatter does not add it."""
    from gmem_explore.cli.main import build_parser

    def parsers(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from parsers(sub, f"{name} {sub_name}")

    seen = []
    for name, parser in parsers(build_parser(), "gmem"):
        seen.append(name)
        assert parser.description, f"`{name} --help` has no description"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            option = action.option_strings[0] if action.option_strings else action.dest
            assert action.help, f"{name} {option} has no help"
            if action.option_strings and not action.required and action.default not in (None, False):
                assert "default" in action.help, f"{name} {option}: its help does not state its default"
    assert {"gmem train", "gmem bank stats", "gmem bank nearest", "gmem bank compress"} <= set(seen)


@pytest.mark.parametrize("choose", ["uniform", "frequency"])
def test_choose_strategies_draw_each_row_with_its_images_seed(tiny_pipeline, choose):
    out = tiny_pipeline.generate(6, seeds=range(6), choose=choose, steps=1)
    expected = [tiny_pipeline.bank.choose(1, choose, torch.Generator().manual_seed(s)).item() for s in range(6)]
    assert out.indices == expected
    assert len(set(out.indices)) > 1  # seeds 0..5 do not all draw the same row


def final_state(pipe, **kwargs):
    """The latents generate() decoded (the last step's state, seen through the callback), and the Generation."""
    seen = []
    out = pipe.generate(callback=lambda info, start, total: seen.append(info.x.clone()), **kwargs)
    return seen[-1], out


def test_guidance_and_its_interval_reach_the_sampler(tiny_pipeline):
    """generate(guidance=, guidance_interval=) samples exactly as sampling.sample with those settings."""
    from gmem_explore.sampling import initial_noise, make_generators, sample

    kw = dict(indices=[3], seeds=[0], method="euler", steps=3)
    plain, _ = final_state(tiny_pipeline, **kw)
    guided, out = final_state(tiny_pipeline, guidance=3.0, **kw)
    narrow, _ = final_state(tiny_pipeline, guidance=3.0, guidance_interval=(0.9, 1.0), **kw)
    assert out.settings["guidance"] == 3.0
    assert (guided - plain).abs().max() > 1e-4 and (narrow - guided).abs().max() > 1e-4
    for interval, got in (((0.0, 1.0), guided), ((0.9, 1.0), narrow)):
        gens = make_generators([0], "cpu")
        noise = initial_noise(gens, (3, 8, 8))
        direct = sample(tiny_pipeline.model, noise, tiny_pipeline.bank.snippets(torch.tensor([3])), "euler", 3,
                        generators=gens, guidance=3.0, guidance_interval=interval)
        torch.testing.assert_close(got.float(), direct, rtol=0, atol=1e-6)


def test_a_pipeline_says_what_it_is(tiny_pipeline):
    """`pipe` at the end of a notebook cell (its repr) names every part, with the parameters that generate apart
    from the REPA projector that only training uses."""
    counts = tiny_pipeline.parameter_counts()
    total = sum(p.numel() for p in tiny_pipeline.model.parameters())
    assert counts["projector"] > 0 and counts["generating"] + counts["projector"] == total and counts["encoder"] == 0
    text = repr(tiny_pipeline)
    assert text.splitlines() == [
        "GMemPipeline('unnamed')",
        "  model        SiT, 8 px images, 8x8x3 input, patch 2, width 32, depth 2: "
        f"{counts['generating']:,} parameters (+{counts['projector']:,} REPA projector, training only)",  # not 0.0M
        "  bank         20 rows x 16 (float32), with freq, labels, thumbnails, 3 groups",
        "  encoder      none (snippets of new images cannot be made)",
        "  autoencoder  pixels",
        "  sampler      euler, 4 steps by default; rows by frequency from the noise",
        "  device       cpu"]
    default = GMemPipeline.from_pretrained()
    assert default.summary().startswith("GMemPipeline('emoji-32')\n  model        SiT, 32 px images")
    assert "  encoder      ConvEncoder, 1.1M parameters" in default.summary()
    assert "4.3M parameters (+0.3M REPA projector, training only)" in default.summary()
