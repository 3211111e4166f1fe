"""Sampling at scale: sharded by seed (same images for any number of processes), resumable, and the .npz the
ADM evaluator reads. The 2-process run uses torch.distributed over gloo on the CPU, the code path of torchrun."""
from __future__ import annotations

import json

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gmem_explore import GMemPipeline
from gmem_explore.checkpoints.folder import Checkpoint, save_checkpoint
from gmem_explore.fingerprints import checkpoint_files as fingerprint
from gmem_explore.evaluation.fid_sampling import launch_local, png_info, png_path, run, shard, write_npz

SEEDS = list(range(10, 16))


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, tiny_bank):
    ckpt = Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, None, {"method": "sde", "steps": 3})
    return save_checkpoint(tmp_path / "tiny", ckpt)


def read_like_the_evaluator(path):
    """What evaluations/evaluator.py does: open arr_0.npy inside the zip, parse the npy header, read raw uint8."""
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["arr_0.npy"]
        with zf.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(f))
            assert not fortran
            return np.frombuffer(f.read(), dtype=dtype).reshape(shape)


def test_shards_cover_every_seed_once():
    parts = [shard(10, 100, r, 3) for r in range(3)]
    assert parts[0] == [100, 103, 106, 109] and sorted(sum(parts, [])) == list(range(100, 110))


def test_one_process_npz_layout_and_same_images_as_generate(tiny_folder, tmp_path):
    out = tmp_path / "one"
    npz = run(str(tiny_folder), out, num=6, base_seed=10, batch_size=4, device="cpu", progress=False)
    assert npz == tmp_path / "one.npz"
    arr = np.load(npz)["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (6, 8, 8, 3)
    assert np.array_equal(read_like_the_evaluator(npz), arr)
    # image i is seed 10 + i, made by the released rule (rows from the noise), exactly what generate() gives
    ref = GMemPipeline.from_pretrained(str(tiny_folder)).generate(seeds=SEEDS, choose="noise", batch_size=6)
    assert np.array_equal(arr, ref.images.numpy())
    info = png_info(png_path(out, 12))
    assert info["seed"] == 12 and info["row"] == ref.indices[2] and info["steps"] == 3 and info["method"] == "sde"


def test_resume_skips_finished_seeds_and_refuses_other_settings(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(str(tiny_folder), out, num=6, base_seed=10, batch_size=4, device="cpu", npz=None, progress=False)
    first = np.stack([np.asarray(Image.open(png_path(out, s))) for s in SEEDS])
    png_path(out, 11).unlink()
    png_path(out, 14).unlink()
    kept = {s: png_path(out, s).stat().st_mtime_ns for s in SEEDS if s not in (11, 14)}
    npz = run(str(tiny_folder), out, num=6, base_seed=10, batch_size=4, device="cpu", progress=False)
    assert {s: png_path(out, s).stat().st_mtime_ns for s in kept} == kept  # untouched
    assert np.array_equal(np.load(npz)["arr_0"], first)  # the redone images are the same images
    with pytest.raises(ValueError, match="other settings"):
        run(str(tiny_folder), out, num=6, base_seed=10, steps=2, device="cpu", progress=False)
    monkeypatch.chdir(tiny_folder.parent)  # the same checkpoint named by a relative path is the same run
    run(f"./{tiny_folder.name}", out, num=6, base_seed=10, batch_size=4, device="cpu", npz=None, progress=False)
    assert json.loads((out / "run.json").read_text())["checkpoint"] == str(tiny_folder.resolve())
    with pytest.raises(ValueError, match="other settings.*guidance"):
        run(str(tiny_folder), out, num=6, base_seed=10, guidance=2.0, guidance_interval=(0.5, 1.0), device="cpu",
            progress=False)
    with pytest.raises(ValueError, match="guidance_interval must satisfy"):
        run(str(tiny_folder), tmp_path / "bad", num=2, guidance=2.0, guidance_interval=(0.9, 0.1), device="cpu")
    with pytest.raises(ValueError, match="steps must be an integer in"):  # 0 is refused, not read as "default"
        run(str(tiny_folder), tmp_path / "zero", num=2, steps=0, device="cpu", progress=False)
    assert not (tmp_path / "zero").exists()
    png_path(out, 15).unlink()
    with pytest.raises(FileNotFoundError, match="1 of 6 images are missing"):
        write_npz(out, SEEDS, tmp_path / "x.npz")


def test_a_resume_on_changed_weights_is_refused_and_says_why(tiny_folder, tiny_model, tiny_bank, tmp_path):
    out = tmp_path / "run"
    run(str(tiny_folder), out, num=2, base_seed=10, device="cpu", npz=None, progress=False)
    assert json.loads((out / "run.json").read_text())["weights"] == fingerprint(tiny_folder)
    with torch.no_grad():  # "retrained": the same folder and name, other weights
        for p in tiny_model.parameters():
            p.add_(0.01)
    save_checkpoint(tiny_folder, Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, None, {"method": "sde", "steps": 3}))
    with pytest.raises(ValueError, match="other settings.*weights.*retrained weights"):
        run(str(tiny_folder), out, num=2, base_seed=10, device="cpu", npz=None, progress=False)
    # a run.json from before the field holds no fingerprint: its weights are trusted, as before
    record = json.loads((out / "run.json").read_text())
    del record["weights"]
    (out / "run.json").write_text(json.dumps(record))
    run(str(tiny_folder), out, num=2, base_seed=10, device="cpu", npz=None, progress=False)


def test_fingerprint_follows_the_files_not_the_folder(tiny_folder, tiny_model, tiny_bank, tmp_path):
    ckpt = Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, None, {"method": "sde", "steps": 3})
    first = fingerprint(tiny_folder)
    assert first.startswith("tensors-sha256:") and len(first) == len("tensors-sha256:") + 16
    assert fingerprint(save_checkpoint(tmp_path / "copy", ckpt)) == first  # same contents elsewhere: same
    assert fingerprint(save_checkpoint(tmp_path / "fp16", ckpt, bank_dtype=torch.float16)) != first  # --bank-dtype
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.mul_(1.01)
    assert fingerprint(save_checkpoint(tmp_path / "retrained", ckpt)) != first


def test_fingerprint_ignores_where_a_checkpoint_came_from(tiny_folder):
    """A conversion records its .pth's modification time in config.json ("source"): the same file downloaded again,
    or another node's HF cache, converts to the same tensors with another config.json, and must resume the run.
    Only the keys that shape images count."""
    first = fingerprint(tiny_folder)
    config = json.loads((tiny_folder / "config.json").read_text())
    config.update(source={"file": "x.pth", "mtime_ns": 123, "sha256": None}, name="again", description="re-converted",
                  training={"steps": 7})
    (tiny_folder / "config.json").write_text(json.dumps(config))
    assert fingerprint(tiny_folder) == first
    config["sampler"] = {"method": "sde", "steps": 4}  # shapes images: counts
    (tiny_folder / "config.json").write_text(json.dumps(config))
    assert fingerprint(tiny_folder) != first


def test_fingerprint_sees_one_edited_row_of_a_large_bank(tmp_path):
    """One bank row replaced (bank.replace_rows, the app's Swap) 100 KB into a 9.6 MB bank changes the
    fingerprint: every byte counts, or a resume would mix images of two banks."""
    from gmem_explore.bank.memory import MemoryBank

    rows = torch.randn(150_000, 16, generator=torch.Generator().manual_seed(0))  # 9.6 MB
    (tmp_path / "a").mkdir()
    MemoryBank(rows, torch.ones(len(rows))).save(tmp_path / "a" / "bank.safetensors")
    first = fingerprint(tmp_path / "a")
    rows[1600] = torch.randn(16)  # 100 KB into the data: past a first 64 KB block
    (tmp_path / "b").mkdir()
    MemoryBank(rows, torch.ones(len(rows))).save(tmp_path / "b" / "bank.safetensors")
    assert fingerprint(tmp_path / "b") != first


def write_safetensors_in_order(path, tensors: dict, order: str) -> None:
    """A safetensors file whose tensors lie in `order` (safetensors.torch.save picks its own order)."""
    header, offset, data = {}, 0, b""
    for key in order:
        raw = tensors[key].numpy().tobytes()
        header[key] = {"dtype": {torch.float32: "F32", torch.float16: "F16"}[tensors[key].dtype],
                       "shape": list(tensors[key].shape), "data_offsets": [offset, offset + len(raw)]}
        offset, data = offset + len(raw), data + raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_fingerprint_does_not_depend_on_the_files_layout(tmp_path):
    """The same tensors laid out in another order (a streamed conversion vs save_checkpoint) are the same contents."""
    from gmem_explore.safefiles import load_tensors

    tensors = {"a": torch.arange(6.0), "b": torch.ones(3, dtype=torch.float16), "c": torch.zeros(2, 2)}
    for name, order in (("x", "abc"), ("y", "cba")):
        (tmp_path / name).mkdir()
        write_safetensors_in_order(tmp_path / name / "model.safetensors", tensors, order)
        assert all(torch.equal(v, tensors[k]) for k, v in load_tensors(tmp_path / name / "model.safetensors")[0].items())
    assert fingerprint(tmp_path / "x") == fingerprint(tmp_path / "y")
    tensors["b"][1] = 2
    write_safetensors_in_order(tmp_path / "y" / "model.safetensors", tensors, "cba")
    assert fingerprint(tmp_path / "x") != fingerprint(tmp_path / "y")


def test_guided_run_records_its_guidance_and_makes_the_pipelines_images(tiny_folder, tmp_path):
    out = tmp_path / "guided"
    run(str(tiny_folder), out, num=2, base_seed=3, guidance=3.0, guidance_interval=(0.2, 0.8), device="cpu",
        npz=None, progress=False)
    record = json.loads((out / "run.json").read_text())
    assert record["guidance"] == 3.0 and record["guidance_interval"] == [0.2, 0.8]
    pipe = GMemPipeline.from_pretrained(str(tiny_folder))
    same = pipe.generate(seeds=[3, 4], guidance=3.0, guidance_interval=(0.2, 0.8))
    plain = pipe.generate(seeds=[3, 4])
    made = np.stack([np.asarray(Image.open(png_path(out, s))) for s in (3, 4)])
    assert np.array_equal(made, same.images.numpy()) and not np.array_equal(made, plain.images.numpy())


def test_two_processes_write_the_same_images_as_one(tiny_folder, tmp_path):
    run(str(tiny_folder), tmp_path / "one", num=6, base_seed=10, batch_size=4, device="cpu", progress=False)
    # fork: the children inherit the imported modules (spawn re-imports torch: ~10 s more on 2 busy cores)
    launch_local(2, start_method="fork", checkpoint=str(tiny_folder), out_dir=tmp_path / "two", num=6, base_seed=10, batch_size=2,
                 device="cpu", progress=False)
    one, two = np.load(tmp_path / "one.npz")["arr_0"], np.load(tmp_path / "two.npz")["arr_0"]
    assert one.shape == (6, 8, 8, 3) and np.array_equal(one, two)
    assert len(set(map(bytes, one))) == 6  # six different images, not one repeated
