"""`gmem evaluate` and evaluation.compare: the measures on feature sets whose answer is known, the pictures, the
command on the embedded model (generated and read back from an .npz give the same report) and its refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gmem_explore.evaluation import compare as evaluation
from gmem_explore.bank.memory import MemoryBank
from gmem_explore.checkpoints.folder import Checkpoint, save_checkpoint
from gmem_explore.cli.main import main
from gmem_explore.encoders.conv import ConvEncoder
from gmem_explore.evaluation.compare import compare, nearest_pairs


def gaussian(n, dim=8, seed=0, shift=0.0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + shift


def test_same_distribution_scores_like_real_images_and_a_shift_does_not():
    reals = gaussian(600, seed=0)
    same = compare(gaussian(300, seed=1), reals)
    assert same["fd"] < 0.3 and same["fd_floor"] < 0.3 and same["fd_copies"] < 0.3
    assert same["precision"] > 0.75 and same["recall"] > 0.75 and same["near_copies"] < 0.1
    assert same["samples"] == 300 and same["references"] == 600 and same["fd_floor_size"] == 300
    shifted = compare(gaussian(300, seed=1, shift=3.0), reals)
    assert 60 < shifted["fd"] < 85  # the means differ by 3 in each of 8 dimensions: 8 x 3^2 = 72
    assert shifted["precision"] < 0.05 and shifted["fd_floor"] == same["fd_floor"]  # the floor is the references'
    json.dumps(same)  # plain numbers: it goes into report.json


def test_new_real_images_are_measured_at_the_samples_sizes():
    """FD grows as the sets shrink, on both sides, so fd_split (m samples) and fd_floor (m real images) are measured
    against the same other R - m references, averaged over draws: samples from the references' own distribution
    score like new real images, while their FD against all R references is lower from set sizes alone."""
    reals, samples = gaussian(400, dim=32, seed=0), gaussian(300, dim=32, seed=1)
    report = compare(samples, reals)
    assert report["fd_floor_size"] == 200 and report["fd_split_references"] == 200 and report["fd_draws"] >= 3
    assert abs(report["fd_split"] - report["fd_floor"]) < 0.2 * report["fd_floor"]
    assert report["fd"] < 0.8 * report["fd_floor"]  # 300 vs 400 images: less bias than 200 vs 200, same distribution
    assert report["fd_floor_std"] > 0 and report["fd_copies_std"] > 0
    assert "FD at split sizes" in evaluation.summary(report) and "estimation bias" not in evaluation.summary(report)
    wide = compare(gaussian(300, dim=250, seed=1), gaussian(400, dim=250, seed=0))  # 200 images a set, 250 features
    assert "FD with 200 images a set and 250 features is mostly estimation bias" in evaluation.summary(wide)


def test_copies_of_references_are_near_copies():
    reals = gaussian(200, dim=16)
    copies = reals[torch.arange(0, 200, 2)] * 1.001  # cosine 1 after the scale
    report = compare(copies, reals)
    assert report["near_copies"] == 1.0 and report["nearest_cosine_median"] > 0.999


def test_precision_recall_rows_are_capped(monkeypatch):
    monkeypatch.setattr(evaluation, "PR_MAX_ROWS", 50)
    report = compare(gaussian(120, seed=1), gaussian(90, seed=2))
    assert report["pr_rows"] == [50, 50] and report["samples"] == 120  # FD still uses every row


@pytest.mark.parametrize("samples, reals, says", [
    (torch.full((10, 4), float("nan")), gaussian(10, 4), "NaN or infinite"),
    (gaussian(3, 4), gaussian(10, 4), "too few"),
    (gaussian(10, 4), gaussian(10, 5), "same encoder"),
    (torch.ones(10, 4, dtype=torch.long), gaussian(10, 4), "float features"),
])
def test_bad_features_are_refused(samples, reals, says):
    with pytest.raises(ValueError, match=says):
        compare(samples, reals)


def test_nearest_pairs_put_each_sample_beside_its_nearest_reference():
    g = torch.Generator().manual_seed(0)
    reals = torch.randint(0, 255, (12, 4, 4, 3), generator=g, dtype=torch.uint8)
    features = gaussian(12, dim=6)
    picks = torch.tensor([7, 2, 9, 4, 0])
    pairs = nearest_pairs(reals[picks], reals, features[picks] * 2, features, count=3)
    assert pairs.shape == (3, 4, 4 + 2 + 4, 3) and pairs.dtype == torch.uint8
    assert torch.equal(pairs[:, :, :4], pairs[:, :, 6:])  # each sample is its own nearest reference here
    assert (pairs[:, :, 4:6] == 255).all()
    bigger = reals.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 8 px references beside 4 px samples
    pairs = nearest_pairs(reals[picks], bigger, features[picks] * 2, features, count=9)
    assert pairs.shape == (5, 4, 4 + 2 + 4, 3)  # as many as there are samples, the references at their size


# ---- the command -------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_with_encoder(tmp_path, tiny_model, tiny_bank):
    """The tiny model (8x8 pixels, 16-d snippets) with a small conv encoder, so the command can run end to end."""
    torch.manual_seed(0)
    encoder = ConvEncoder(dim=16, image_size=8, widths=(8,), head_channels=8).eval()
    ckpt = Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, encoder, {"method": "euler", "steps": 2})
    return save_checkpoint(tmp_path / "tiny", ckpt)


def test_evaluate_writes_a_report_and_the_same_one_from_an_npz(tiny_with_encoder, tmp_path, capsys):
    from gmem_explore import GMemPipeline

    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--samples", "12", "--seed", "5",
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "precision / recall" in printed and "near copies" in printed
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["samples"] == 12 and report["references"] == 20 and report["reference"] == "the bank's thumbnails"
    assert report["generated"]["seeds"] == [5, 16] and report["generated"]["steps"] == 2
    assert Image.open(tmp_path / "eval" / "nearest.png").size[0] > Image.open(tmp_path / "eval" / "samples.png").size[0] // 2
    # the same images, read from the .npz sample-fid writes, give the same measures
    images = GMemPipeline.from_pretrained(str(tiny_with_encoder)).generate(12, seeds=5).images.numpy()
    np.savez(tmp_path / "samples.npz", arr_0=images)
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--images", str(tmp_path / "samples.npz"),
                 "--seed", "5", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["images"] == str(tmp_path / "samples.npz")
    for key in ("fd", "fd_floor", "fd_copies", "precision", "recall", "near_copies"):
        assert again[key] == pytest.approx(report[key], rel=1e-5, abs=1e-9), key


def test_npz_images_are_memory_mapped_when_stored_as_sample_fid_writes_them(tmp_path):
    from gmem_explore.cli.evaluate import npz_images, read_images
    from gmem_explore.evaluation.fid_sampling import save_png, write_npz

    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    for seed, image in enumerate(images):
        save_png(tmp_path / f"{seed:06d}.png", image, {"seed": seed})
    write_npz(tmp_path, [0, 1, 2, 3, 4], tmp_path / "run.npz")
    mapped = npz_images(tmp_path / "run.npz")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, images)
    np.savez_compressed(tmp_path / "packed.npz", arr_0=images)  # compressed: read whole, the same images
    packed = npz_images(tmp_path / "packed.npz")
    assert not isinstance(packed, np.memmap) and np.array_equal(packed, images)
    assert torch.equal(read_images(tmp_path / "run.npz"), torch.from_numpy(images))
    (tmp_path / "run.npz").rename(tmp_path / "RUN.NPZ")  # the extension in any case
    assert torch.equal(read_images(tmp_path / "RUN.NPZ"), torch.from_numpy(images))


def test_a_folder_of_images_is_not_held_twice(tmp_path, monkeypatch):
    """Each image goes into one tensor as it is read: a list then a stack would hold two copies at the peak
    (50,000 sample-fid PNGs of 256 px: 19.7 GB)."""
    import weakref

    from gmem_explore import data as data_module
    from gmem_explore.cli.evaluate import read_images

    pixels = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / f"{i:06d}.png")
    alive, most = [], [0]
    load_rgb = data_module.load_rgb  # data.read_image_files reads the folder

    def counting_load_rgb(source, size=None):
        image = load_rgb(source, size)
        alive.append(weakref.ref(image))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return image

    monkeypatch.setattr(data_module, "load_rgb", counting_load_rgb)
    assert torch.equal(read_images(tmp_path), torch.from_numpy(pixels))
    assert len(alive) == 10 and most[0] <= 3  # the first (its shape), the last copied, the one read (a list: 10)


def test_evaluate_reads_a_folder_and_compares_with_data(tiny_with_encoder, tmp_path, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 255 - 40 * i)).save(folder / f"{i}.png")
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--images", str(folder), "--data", "digits"]) == 0
    printed = capsys.readouterr().out
    assert "samples 6, reference images 1797" in printed and "add --out DIR" in printed


def test_evaluate_refusals_say_what_to_do(tiny_with_encoder, tiny_model, tiny_bank, tmp_path, capsys):
    def refused(*argv):
        assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), *argv]) == 1
        return capsys.readouterr().err

    assert "no such folder or .npz" in refused("--images", str(tmp_path / "missing"))
    np.savez(tmp_path / "other.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    assert "holds no arr_0" in refused("--images", str(tmp_path / "other.npz"))
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    assert "must be uint8 N x H x W x 3" in refused("--images", str(tmp_path / "float.npz"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in refused("--images", str(tmp_path / "broken.npz"))
    np.savez(tmp_path / "cut.npz", arr_0=np.zeros((40, 8, 8, 3), np.uint8))
    whole = (tmp_path / "cut.npz").read_bytes()  # cut inside arr_0's data: the zip directory at the end is gone
    (tmp_path / "cut.npz").write_bytes(whole[:len(whole) // 2])
    assert "not a readable .npz" in refused("--images", str(tmp_path / "cut.npz"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "a.png")
    Image.new("RGB", (9, 8)).save(mixed / "b.png")
    assert "different sizes" in refused("--images", str(mixed))
    assert "--samples must be more than 3" in refused("--samples", "2")
    assert "give --data too" in refused("--split", "held_out")
    np.savez(tmp_path / "UPPER.NPZ", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    assert "--steps would change nothing" in refused("--images", str(tmp_path / "UPPER.NPZ"), "--steps", "4")
    assert "--data nowhere: no such folder" in refused("--data", "nowhere")
    no_encoder = save_checkpoint(tmp_path / "no-encoder", Checkpoint(tiny_model, tiny_bank))
    assert main(["evaluate", "--checkpoint", str(no_encoder), "--samples", "8"]) == 1
    assert "has no snippet encoder" in capsys.readouterr().err
    bare = MemoryBank(tiny_bank.rows, tiny_bank.freq)  # no thumbnails
    encoder = ConvEncoder(dim=16, image_size=8, widths=(8,), head_channels=8).eval()
    no_thumbs = save_checkpoint(tmp_path / "no-thumbs", Checkpoint(tiny_model, bare, {"type": "pixels"}, encoder))
    assert main(["evaluate", "--checkpoint", str(no_thumbs), "--samples", "8", "--steps", "1"]) == 1
    assert "give --data" in capsys.readouterr().err


def test_images_with_samples_or_an_interval_are_refused_and_the_report_keeps_the_measures_seed(tiny_with_encoder,
                                                                                                tmp_path, capsys):
    """--samples with --images was silently ignored (all images measured) while --steps and the like were refused;
    the help said 'ignored' for --batch-size, which was refused. And with --images, report.json did not record the
    --seed its draws (fd_copies, fd_split, fd_floor) came from."""
    np.savez(tmp_path / "s.npz", arr_0=np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    for extra, named in ((["--samples", "4"], "--samples"), (["--guidance-interval", "0", "0.5"], "--guidance-interval")):
        assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--images", str(tmp_path / "s.npz"),
                     *extra]) == 1
        assert f"so {named} would change nothing" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--images", str(tmp_path / "s.npz"), "--seed", "7",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["seed"] == 7


def test_evaluate_samples_with_the_guidance_interval_it_is_given(tiny_with_encoder, tmp_path, monkeypatch):
    """sample-fid takes --guidance-interval; evaluating the same recipe needs it too, and the report says so."""
    from gmem_explore import GMemPipeline

    seen = []
    generate = GMemPipeline.generate
    monkeypatch.setattr(GMemPipeline, "generate", lambda self, *a, **k: seen.append(k) or generate(self, *a, **k))
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--samples", "6", "--guidance", "2",
                 "--guidance-interval", "0", "0.5", "--out", str(tmp_path / "eval")]) == 0
    assert seen[0]["guidance_interval"] == (0.0, 0.5) and seen[0]["guidance"] == 2.0
    generated = json.loads((tmp_path / "eval" / "report.json").read_text())["generated"]
    assert generated["guidance_interval"] == [0.0, 0.5] and generated["seeds"] == [0, 5]
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--guidance-interval", "0.9", "0.1"]) == 1


def test_too_few_images_are_refused_before_anything_is_encoded(tiny_with_encoder, tmp_path, monkeypatch, capsys):
    """One image in --images was refused only after every reference had been encoded (with gmem-v1-xl and ImageNet
    references, DINOv2 on 50,000 images first); too few references likewise before the samples' encoding."""
    from gmem_explore.cli import evaluate as command

    def never(*args, **kwargs):
        pytest.fail("images were encoded before the count was checked")

    monkeypatch.setattr(command, "encode", never)
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "one" / "a.png")
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--images", str(tmp_path / "one")]) == 1
    assert "one: 1 image, too few to compare; give at least 4" in capsys.readouterr().err
    (tmp_path / "refs").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (0, 80 * i, 0)).save(tmp_path / "refs" / f"{i}.png")
    assert main(["evaluate", "--checkpoint", str(tiny_with_encoder), "--samples", "6", "--steps", "1",
                 "--data", str(tmp_path / "refs")]) == 1
    assert "the reference images: 3 images, too few to compare" in capsys.readouterr().err


def test_evaluate_picks_rows_by_the_checkpoints_rule_unless_told(tiny_model, tiny_bank, tmp_path, monkeypatch, capsys):
    """evaluate sampled every checkpoint's rows by the noise rule; a v2 checkpoint draws them uniformly."""
    import argparse

    from gmem_explore import GMemPipeline
    from gmem_explore.cli import evaluate

    torch.manual_seed(0)
    encoder = ConvEncoder(dim=16, image_size=8, widths=(8,), head_channels=8).eval()
    v2_like = save_checkpoint(tmp_path / "uniform", Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, encoder,
                                                               {"method": "euler", "steps": 1}, choose="uniform"))
    seen = []
    generate = GMemPipeline.generate
    monkeypatch.setattr(GMemPipeline, "generate", lambda self, *a, **k: seen.append(k) or generate(self, *a, **k))
    for extra, rule in (([], "uniform"), (["--choose", "frequency"], "frequency")):
        out = tmp_path / f"eval-{rule}"
        assert main(["evaluate", "--checkpoint", str(v2_like), "--samples", "6", "--out", str(out), *extra]) == 0
        assert json.loads((out / "report.json").read_text())["generated"]["choose"] == rule
    assert seen[0]["choose"] is None and seen[1]["choose"] == "frequency"  # None: the pipeline takes the checkpoint's
    np.savez(tmp_path / "s.npz", arr_0=np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    assert main(["evaluate", "--checkpoint", str(v2_like), "--images", str(tmp_path / "s.npz"), "--choose",
                 "uniform"]) == 1
    assert "so --choose would change nothing" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    said = " ".join(parser.format_help().split())
    assert parser.parse_args([]).choose is None and "(default: the checkpoint's rule, noise" in said
