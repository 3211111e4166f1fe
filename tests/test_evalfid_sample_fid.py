"""sample-fid for a researcher's FID run: what run.json pins (bank precision, Hub revision), the sampler the recorded
precision names, the evaluator's view of the .npz, resumes over folders with other images or a damaged PNG, '~'
paths, and --steps checked once before the checkpoint is looked up."""
from __future__ import annotations

import argparse
import json
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import gmem_explore.checkpoints.hub
from gmem_explore import GMemPipeline
from gmem_explore.checkpoints.folder import Checkpoint, save_checkpoint
from gmem_explore.cli import sample_fid
from gmem_explore.cli.main import main
import gmem_explore.evaluation.fid_sampling as sharded
from gmem_explore.evaluation.fid_sampling import png_path, run, save_png, write_npz


def tiny_checkpoint(model, bank, folder, bank_dtype=None):
    return save_checkpoint(folder, Checkpoint(model, bank, {"type": "pixels"}, None, {"method": "euler", "steps": 2}),
                           bank_dtype=bank_dtype)


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, tiny_bank):
    return tiny_checkpoint(tiny_model, tiny_bank, tmp_path / "tiny")


def quick(checkpoint, out, **kwargs):
    options = dict(num=2, base_seed=10, device="cpu", npz=None, progress=False)
    return run(str(checkpoint), out, **{**options, **kwargs})


def test_run_json_records_the_bank_precision_and_a_resume_on_another_names_both(tiny_folder, tiny_model, tiny_bank,
                                                                               tmp_path):
    out = tmp_path / "fid"
    quick(tiny_folder, out)
    record = json.loads((out / "run.json").read_text())
    assert record["bank_dtype"] == "fp32" and record["revision"] is None  # a local folder has no Hub revision
    tiny_checkpoint(tiny_model, tiny_bank, tiny_folder, bank_dtype=torch.float16)  # re-saved with an fp16 bank
    with pytest.raises(ValueError, match=r"made with an fp32 bank and this run's is fp16: resume with --bank-dtype "
                                         r"fp32.*another --out"):
        quick(tiny_folder, out)


def test_a_resume_from_another_hub_revision_is_refused_naming_both(tiny_folder, tmp_path, monkeypatch):
    """gmem-v1-xl at two revisions (the Hub is faked: both resolve to the tiny folder, so only the revision differs)."""
    asked, resolve = [], gmem_explore.checkpoints.hub.resolve_checkpoint

    def fake_resolve(name, revision=None, **kwargs):
        if name != "gmem-v1-xl":  # from_pretrained(folder) resolves the folder again
            return resolve(name, revision=revision, **kwargs)
        asked.append(revision)
        return tiny_folder

    monkeypatch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", fake_resolve)
    out = tmp_path / "fid"
    quick("gmem-v1-xl", out)
    assert json.loads((out / "run.json").read_text())["revision"] == "main"
    with pytest.raises(ValueError, match=r"Hub revision 'main' and this run's is 'abc123': resume with --revision main"):
        quick("gmem-v1-xl", out, revision="abc123")
    quick("gmem-v1-xl", out, revision="main")  # the same revision spelled out resumes
    assert asked == [None, "abc123", "main"]


def test_an_old_run_json_without_the_fields_resumes_and_gains_them(tiny_folder, tmp_path):
    out = tmp_path / "fid"
    quick(tiny_folder, out)
    record = json.loads((out / "run.json").read_text())
    for key in ("bank_dtype", "revision", "weights"):
        del record[key]
    (out / "run.json").write_text(json.dumps(record))
    quick(tiny_folder, out, num=3)
    assert {"bank_dtype": "fp32", "revision": None}.items() <= json.loads((out / "run.json").read_text()).items()


def test_revision_or_bank_dtype_that_would_be_ignored_is_refused_before_anything_is_written(tiny_folder, tmp_path):
    with pytest.raises(ValueError, match=r"revision 'v2' \(--revision\) picks a version of a Hub checkpoint.*drop "
                                         r"--revision"):
        quick(tiny_folder, tmp_path / "a", revision="v2")
    with pytest.raises(ValueError, match="is a converted folder whose bank is fp32.*Drop --bank-dtype"):
        quick(tiny_folder, tmp_path / "b", bank_dtype="fp16")
    with pytest.raises(ValueError, match="bank_dtype must be one of"):
        quick(tiny_folder, tmp_path / "c", bank_dtype="int8")
    assert not any((tmp_path / name).exists() for name in "abc")
    quick(tiny_folder, tmp_path / "d", bank_dtype="fp32")  # what the folder holds: no conflict


@pytest.mark.parametrize("precision, fast", [("tf32", False), ("fp32", False), ("bf16", False), ("fp8", "fp8")])
def test_the_recorded_precision_picks_the_sampler(tiny_folder, tmp_path, monkeypatch, precision, fast):
    """generate's default fast=None takes the bf16 fast path on every CUDA run: a tf32 run ('the reference's
    setting', as run.json says) must ask for the released sampler. On a GPU bf16 is the fast path, on a CPU the
    released sampler on a bf16 network. fp8 is the fast path's FP8 mode everywhere (slow but correct on a CPU)."""
    seen = []
    generate = GMemPipeline.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("fast", None))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GMemPipeline, "generate", spy)
    quick(tiny_folder, tmp_path / "fid", precision=precision)
    assert seen == [fast]
    gpu = torch.device("cuda", 0)
    assert sharded.sampler_path(precision, gpu) == (precision if precision in ("bf16", "fp8") else False)


def test_a_home_relative_out_is_written_under_home(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    npz = quick(tiny_folder, "~/fid", npz="auto")
    assert npz == tmp_path / "home" / "fid.npz" and npz.is_file()
    assert png_path(tmp_path / "home" / "fid", 10).is_file() and not (tmp_path / "~").exists()


def evaluator_batches(path, batch_size):
    """What the ADM evaluator (guided-diffusion evaluations/evaluator.py) does with a sample batch: arr_0.npy opened
    inside the zip, its npy header parsed, then batch_size images at a time read as raw bytes (the last batch
    short); np.load for the optional 'mu' statistics."""
    assert "mu" not in np.load(path).files  # no precomputed statistics: the evaluator computes them from arr_0
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = {(1, 0): np.lib.format.read_array_header_1_0,
                                 (2, 0): np.lib.format.read_array_header_2_0}[version](f)
        assert not fortran and not dtype.hasobject  # else it would read the whole array instead of streaming
        done = 0
        while done < shape[0]:
            count = min(batch_size, shape[0] - done)
            data = f.read(count * int(np.prod(shape[1:])) * dtype.itemsize)
            yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])
            done += count
        assert f.read() == b""  # nothing after the images


def test_the_npz_is_what_the_adm_evaluator_reads_in_seed_order_and_rgb(tmp_path):
    """Five PNGs of known colours, and stale ones of an earlier run with other seeds beside them: arr_0 holds the run's
    five, uint8 N x H x W x 3 in seed order, red in channel 0, read in batches of 2 as the evaluator would."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]
    for i, colour in enumerate(colours):
        save_png(png_path(tmp_path, 100 + i), np.full((4, 6, 3), colour, np.uint8), {"seed": 100 + i})
    for seed in (7, 105, 999):  # an earlier, longer run with --seed 7 and another: not this run's images
        save_png(png_path(tmp_path, seed), np.zeros((4, 6, 3), np.uint8), {"seed": seed})
    (tmp_path / ".000106.png.abcd1234.tmp").write_bytes(b"half a PNG")  # a write killed mid-way
    seeds = list(range(100, 105))
    npz = write_npz(tmp_path, seeds, tmp_path / "run.npz")
    batches = list(evaluator_batches(npz, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    arr = np.concatenate(batches)
    assert arr.dtype == np.uint8 and arr.shape == (5, 4, 6, 3)
    assert [tuple(int(v) for v in image[0, 0]) for image in arr] == colours


def test_progress_counts_only_this_runs_finished_images(tmp_path):
    """The bar of a run into a folder that also holds an earlier, longer run's images (or other --seed values)
    showed more than 100%; a killed write's hidden temporary file is not an image."""
    for seed in (7, 100, 101, 105, 999):
        save_png(png_path(tmp_path, seed), np.zeros((4, 4, 3), np.uint8), {"seed": seed})
    (tmp_path / ".000102.png.abcd1234.tmp").write_bytes(b"half a PNG")
    assert sharded.count_done(tmp_path, list(range(100, 104))) == 2


def test_a_damaged_png_is_named_with_what_to_do(tmp_path):
    for seed in range(3):
        save_png(png_path(tmp_path, seed), np.full((8, 8, 3), seed, np.uint8), {"seed": seed})
    whole = png_path(tmp_path, 1).read_bytes()
    png_path(tmp_path, 1).write_bytes(whole[:len(whole) // 2])  # a disk that lost the end of the file
    with pytest.raises(ValueError, match=r"000001.png is damaged .*delete it and run the sampler again"):
        write_npz(tmp_path, [0, 1, 2], tmp_path / "run.npz")
    with pytest.raises(ValueError, match=r"000001.png is damaged"):  # the first image, which gives the size
        write_npz(tmp_path, [1, 0, 2], tmp_path / "run.npz")
    assert not (tmp_path / "run.npz").exists()


def test_steps_are_checked_once_and_before_the_checkpoint_is_looked_up(tiny_folder, tmp_path, monkeypatch, capsys):
    import gmem_explore.evaluation.fid_sampling
    import gmem_explore.sampling

    def never(*args, **kwargs):
        pytest.fail("the checkpoint was looked up before --steps 0 was refused")

    with monkeypatch.context() as patch:
        patch.setattr(gmem_explore.checkpoints.hub, "resolve_checkpoint", never)
        assert main(["sample-fid", "--checkpoint", str(tiny_folder), "--out", str(tmp_path / "bad"),
                     "--steps", "0", "--no-progress"]) == 1
    assert "steps must be an integer in [1, 5000]" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    calls = []
    check = gmem_explore.sampling.check_method_and_steps

    def counted(*args):  # the argument checks of the command and of fid_sampling.run, not the sampler's own per call
        caller = sys._getframe(1).f_globals["__name__"]
        if caller in ("gmem_explore.evaluation.fid_sampling", "gmem_explore.cli.sample_fid"):
            calls.append((caller, *args))
        return check(*args)

    # where the command (imports at run time) and fid_sampling (imports at its top) look the check up
    monkeypatch.setattr(gmem_explore.sampling, "check_method_and_steps", counted)
    monkeypatch.setattr(gmem_explore.evaluation.fid_sampling, "check_method_and_steps", counted)
    assert main(["sample-fid", "--checkpoint", str(tiny_folder), "--out", str(tmp_path / "fid"), "--steps", "1",
                 "--method", "euler", "--num-fid-samples", "1", "--no-npz", "--no-progress", "--device", "cpu"]) == 0
    # was three times: by the command, by fid_sampling.run before the load, and again after it
    assert calls == [("gmem_explore.evaluation.fid_sampling", "euler", 1)]
    assert Image.open(png_path(tmp_path / "fid", 0)).size == (8, 8)


class NoGroup:
    """Stands in for the gloo group when the ranks of a run are played one after another in this process."""

    def __init__(self, world):
        pass

    def barrier(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("world", [3, 7])  # 5 images over 3 ranks (2, 2, 1); over 7 (two ranks have none)
def test_every_image_is_made_once_by_one_rank_for_odd_sizes(tiny_folder, tmp_path, monkeypatch, world):
    one = quick(tiny_folder, tmp_path / "one", num=5, batch_size=2, npz="auto")
    monkeypatch.setattr(sharded, "Group", NoGroup)
    written = []
    save = sharded.save_png
    monkeypatch.setattr(sharded, "save_png", lambda path, image, info: written.append(info["seed"]) or save(path, image,
                                                                                                             info))
    for rank in [*range(1, world), 0]:  # rank 0 last: it writes the .npz once the others are done
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        npz = quick(tiny_folder, tmp_path / "many", num=5, batch_size=2, npz="auto")
    assert sorted(written) == [10, 11, 12, 13, 14]  # each seed once
    many = np.load(npz)["arr_0"]
    assert np.array_equal(many, np.load(one)["arr_0"]) and len({image.tobytes() for image in many}) == 5


def test_rows_follow_the_checkpoints_rule_unless_choose_is_given(tiny_model, tiny_bank, tiny_folder, tmp_path,
                                                                 monkeypatch, capsys):
    """sample-fid chose rows by the noise rule for every checkpoint; a v2 checkpoint draws them uniformly."""
    v2_like = save_checkpoint(tmp_path / "uniform", Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, None,
                                                               {"method": "euler", "steps": 2}, choose="uniform"))
    seen = []
    generate = GMemPipeline.generate
    monkeypatch.setattr(GMemPipeline, "generate", lambda self, *a, **k: seen.append(self.choose) or
                        seen.append(k["choose"]) or generate(self, *a, **k))
    for folder, rule in ((v2_like, "uniform"), (tiny_folder, "noise")):
        out = tmp_path / f"fid-{rule}"
        assert main(["sample-fid", "--checkpoint", str(folder), "--out", str(out), "--num-fid-samples", "2",
                     "--no-npz", "--no-progress", "--device", "cpu"]) == 0
        assert json.loads((out / "run.json").read_text())["choose"] == rule and seen[-1] == rule
    # upstream's randint, one generator per image seed
    pipe = GMemPipeline.from_pretrained(str(v2_like))
    expect = pipe.generate(seeds=[0], choose="uniform").images[0].numpy()
    assert np.array_equal(np.asarray(Image.open(png_path(tmp_path / "fid-uniform", 0))), expect)
    # an explicit rule wins, is recorded, and a resume must name it again
    out = tmp_path / "fid-explicit"
    assert main(["sample-fid", "--checkpoint", str(v2_like), "--out", str(out), "--num-fid-samples", "1",
                 "--choose", "noise", "--no-npz", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((out / "run.json").read_text())["choose"] == "noise" and seen[-1] == "noise"
    assert main(["sample-fid", "--checkpoint", str(v2_like), "--out", str(out), "--num-fid-samples", "1",
                 "--no-npz", "--no-progress", "--device", "cpu"]) == 1
    assert "'choose': ('noise', 'uniform')" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    sample_fid.add_arguments(parser)
    said = " ".join(parser.format_help().split())
    assert parser.parse_args(["--out", "x"]).choose is None and "(default: the checkpoint's rule, noise" in said
