"""Errors of the core library (not only the CLI, which checks some of these itself): each names the problem and
what to do, has the type a caller catches, and comes before anything is loaded or written."""
from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from conftest import TINY, randomize
from gmem_explore import build_model
from gmem_explore.bank.memory import MemoryBank
from gmem_explore.checkpoints.folder import Checkpoint, load_checkpoint, read_config, save_checkpoint


def hashes(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, tiny_bank):
    ckpt = Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, None, {"method": "sde", "steps": 2})
    return save_checkpoint(tmp_path / "tiny", ckpt)


# ---- 1. checkpoint config.json ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, named", [
    ("[1, 2]", r"it holds \[1, 2\] \(a JSON list\)"),  # was an AttributeError ('list' object has no attribute 'get')
    ('"just text"', r"it holds \"just text\" \(a JSON str\)"),
    ('{"format": "gmem-explore-1", "model": {"input_size": "x"}}', r'"model"\.input_size is "x", not a positive integer'),
    ('{"format": "gmem-explore-1", "model": {"mlp_ratio": "x"}}', r'"model"\.mlp_ratio is "x", not a number'),
    ('{"format": "gmem-explore-1", "model": {"depth": 2.5}}', r'"model"\.depth is 2\.5, not a positive integer'),
    ('{"format": "gmem-explore-1", "model": [3]}', r'its "model" entry is \[3\], not an object'),
    ('{"format": "gmem-explore-1"}', r'it has no "model" entry'),
    ('{"format": "gmem-explore-1", "model": {}, "sampler": [250]}', r'its "sampler" entry is \[250\], not an object'),
    ('{"format": "gmem-explore-1", "model": {}, "training": {"config": "snippet"}}', r'"training"\.config is "snippet"'),
])
def test_a_damaged_config_json_is_a_value_error_naming_the_file_and_key(tiny_folder, text, named):
    (tiny_folder / "config.json").write_text(text)
    before = hashes(tiny_folder)
    for read in (read_config, load_checkpoint):
        with pytest.raises(ValueError, match=named) as info:
            read(tiny_folder)
        message = str(info.value)
        assert f"{tiny_folder / 'config.json'} is damaged" in message
        assert "Copy the checkpoint folder again, or save it again" in message
    assert hashes(tiny_folder) == before


def test_model_config_errors_from_config_json_keep_their_text_and_name_the_file(tiny_folder):
    config = json.loads((tiny_folder / "config.json").read_text())
    config["model"]["input_size"] = 9
    (tiny_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json is damaged: .*Invalid model config: input_size 9 is not a "
                                         r"multiple of patch_size 2") as info:
        load_checkpoint(tiny_folder)
    assert isinstance(info.value.__cause__, ValueError)  # ModelConfig's own error, chained


# ---- 2. fid_sampling.run ----------------------------------------------------------------------------------------
class Stop(Exception):
    pass


def no_load(monkeypatch):
    """Make any checkpoint resolution or load fail loudly: the argument checks must come before them."""
    import gmem_explore.checkpoints.hub as hub
    import gmem_explore.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was resolved or loaded before the arguments were checked")

    monkeypatch.setattr(hub, "resolve_checkpoint", refuse)
    monkeypatch.setattr(pipeline.GMemPipeline, "from_pretrained", refuse)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), r"steps must be an integer in \[1, "),
    (dict(steps=2.5), r"steps must be an integer in \[1, "),
    (dict(method="rk4"), r"Unknown sampler 'rk4'"),
    (dict(base_seed=-1), r"base_seed must be an integer >= 0"),
    (dict(base_seed=2**63 - 2), r"base_seed must be an integer >= 0 with base_seed \+ num - 1 <= 2\^63 - 1"),
    (dict(batch_size="8"), r"batch_size must be a positive number"),
    (dict(choose="best"), r"Unknown choice 'best'"),
    (dict(precision="fp4"), r"precision must be one of"),
    (dict(device="gpu"), r"device 'gpu' is not a device torch knows"),
])
def test_sharded_run_checks_every_argument_before_loading_or_writing(tmp_path, monkeypatch, kwargs, message):
    from gmem_explore.evaluation import fid_sampling as sharded

    no_load(monkeypatch)
    out = tmp_path / "samples"
    with pytest.raises(ValueError, match=message):
        sharded.run("emoji-32", out, **{"num": 4, "device": "cpu", "progress": False, **kwargs})
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no folder, no run.json, no .npz


def test_sharded_run_with_a_bad_seed_writes_no_run_json(tiny_folder, tmp_path):
    from gmem_explore.evaluation import fid_sampling as sharded

    out = tmp_path / "samples"
    with pytest.raises(ValueError, match=r"base_seed must be an integer >= 0 .*got -1"):
        sharded.run(str(tiny_folder), out, num=2, base_seed=-1, device="cpu", progress=False)
    assert not out.exists()  # was: run.json written, then "seeds must be integers" from generate


def test_sharded_run_refuses_a_file_as_its_output_folder(tmp_path, monkeypatch):
    from gmem_explore.evaluation import fid_sampling as sharded

    no_load(monkeypatch)
    (tmp_path / "samples").write_text("notes")
    with pytest.raises(NotADirectoryError, match="samples is a file; the images go into a folder"):
        sharded.run("emoji-32", tmp_path / "samples", num=2, device="cpu", progress=False)
    assert (tmp_path / "samples").read_text() == "notes"


@pytest.fixture
def two_gpus(monkeypatch):
    """torch sees two CUDA GPUs (none exist here): enough for device resolution, which calls nothing else."""
    chosen = []

    def set_device(device):
        chosen.append(torch.device(device))
        raise Stop  # the run would load the checkpoint next

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return chosen


@pytest.mark.parametrize("device, local_rank, expected", [
    ("cuda", "3", "cuda:1"), ("cuda", "0", "cuda:0"), ("auto", "1", "cuda:1"), ("cuda:0", "1", "cuda:0"),
])
def test_sharded_run_resolves_cuda_to_the_local_rank(two_gpus, tmp_path, monkeypatch, device, local_rank, expected):
    from gmem_explore.evaluation import fid_sampling as sharded

    no_load(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(Stop):
        sharded.run("emoji-32", tmp_path / "s", num=2, device=device, progress=False)
    # torch.cuda.set_device(torch.device("cuda")) (no index) fails on a real GPU machine: it must get the number
    assert two_gpus == [torch.device(expected)]
    assert not (tmp_path / "s").exists()


def test_sharded_device_errors(two_gpus, monkeypatch):
    from gmem_explore.evaluation.fid_sampling import resolve_device

    with pytest.raises(ValueError, match=r"device 'cuda:5' is not available here: there are only 2 CUDA GPUs here"):
        resolve_device("cuda:5", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda' is not available here: .*use device='cpu'"):
        resolve_device("cuda", 0)
    assert resolve_device("auto", 3) == torch.device("cpu") and two_gpus == []


# ---- 3. official.convert_official ---------------------------------------------------------------------------
@pytest.fixture
def released_pth(tmp_path):
    g = torch.Generator().manual_seed(1)
    raw = {"network": randomize(build_model(**TINY)).state_dict(),
           "memorybank": torch.randn(6, TINY["snippet_dim"], generator=g), "memoryfreq": torch.ones(6)}
    path = tmp_path / "released.pth"
    torch.save(raw, path)
    return path


def test_a_wrong_sha256_from_the_caller_says_it_was_the_callers(released_pth, tmp_path):
    from gmem_explore.checkpoints.official import convert_official, file_sha256

    actual = file_sha256(released_pth)
    wrong = "AB" * 32
    with pytest.raises(ValueError) as info:
        convert_official(released_pth, tmp_path / "out", model_overrides=TINY, sha256=wrong)
    message = str(info.value)
    assert "Hub" not in message  # was: "... but the Hub says ABAB..." for a hash the caller typed
    assert f"does not match the sha256 you gave: the file's sha256 is {actual}, you gave {wrong.lower()}" in message
    assert "Check the hash" in message and "download it again" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sha256", ["xyz", "0" * 63, 123])
def test_a_malformed_sha256_is_refused_before_hashing(released_pth, tmp_path, monkeypatch, sha256):
    from gmem_explore.checkpoints import official

    monkeypatch.setattr(official, "file_sha256", lambda *a, **k: pytest.fail("hashed before checking the sha256"))
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
        official.convert_official(released_pth, tmp_path / "out", model_overrides=TINY, sha256=sha256)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides", [[1], "depth=2", 3])
def test_model_overrides_that_are_not_a_dict_are_refused_by_name(released_pth, tmp_path, overrides):
    from gmem_explore.checkpoints.official import convert_official

    before = hashes(tmp_path)
    with pytest.raises(TypeError, match=r"model_overrides must be a dict of build_model keywords .* got "
                                        f"{type(overrides).__name__}"):
        convert_official(released_pth, tmp_path / "out", model_overrides=overrides)
    assert hashes(tmp_path) == before and not (tmp_path / "out").exists()


# ---- 4. bank.stats.statistics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", [1, 0, -4, True, 2.5])
def test_statistics_refuses_a_sample_too_small_for_a_similarity(tiny_bank, sample):
    from gmem_explore.bank.stats import statistics

    # -4 took all rows but the last four, 0 and 1 silently dropped the similarity figures
    with pytest.raises(ValueError, match=r"sample must be a whole number of rows >= 2 \(the similarity figures "
                                         r"compare pairs of rows"):
        statistics(tiny_bank, sample=sample)


def test_statistics_with_the_smallest_sample_and_a_one_row_bank(tiny_bank):
    from gmem_explore.bank.stats import statistics

    assert statistics(tiny_bank, sample=2)["sample_rows"] == 2
    one = statistics(MemoryBank(torch.ones(1, 4)), sample=2)
    assert one["rows"] == 1 and "mean_cosine" not in one


# ---- 5. safefiles.atomic_path -------------------------------------------------------------------------------------
def test_atomic_write_errors_name_the_target_not_the_temporary_file(tmp_path):
    from gmem_explore.safefiles import write_bytes_atomic

    target = tmp_path / "x.png"
    target.mkdir()  # a folder where the file goes: os.replace(tmp, target) fails
    with pytest.raises(IsADirectoryError) as info:
        write_bytes_atomic(target, b"png")
    # was "[Errno 21] Is a directory: '.../.x.png.lvg3y3bd.tmp' -> '.../x.png'"
    assert info.value.filename == str(target) and info.value.filename2 is None
    assert str(info.value).endswith(f": '{target}'") and ".tmp" not in str(info.value)
    assert isinstance(info.value.__cause__, IsADirectoryError) and ".tmp" in info.value.__cause__.filename
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"] and target.is_dir()  # no temporary file left


def test_atomic_path_renames_errors_of_the_writer(tmp_path):
    from gmem_explore.safefiles import atomic_path

    target = tmp_path / "bank.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.read_bytes()
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)
    with pytest.raises(ValueError, match=f"^cannot encode {re.escape(str(target))}$") as info:
        with atomic_path(target) as tmp:
            raise ValueError(f"cannot encode {tmp}")
    assert ".tmp" in str(info.value.__cause__)
    with pytest.raises(KeyError):  # an error that does not name the temporary file passes unchanged
        with atomic_path(target):
            raise KeyError("PNG")
    assert list(tmp_path.iterdir()) == []


# ---- 6. images and checkpoint names ------------------------------------------------------------------------------
def test_load_rgb_of_a_folder_says_it_is_a_folder(tmp_path):
    from gmem_explore.images import ImageError, load_rgb

    (tmp_path / "adir").mkdir()
    with pytest.raises(ImageError, match=r"adir is a folder, not an image file: give the path of one image inside "
                                         r"it .*load_folder\(folder\)"):
        load_rgb(tmp_path / "adir")
    with pytest.raises(ImageError, match="No image file at"):  # a missing path keeps its message
        load_rgb(tmp_path / "nope.png")


def test_a_known_name_with_a_trailing_slash_is_that_name(tmp_path, monkeypatch):
    from gmem_explore.checkpoints.hub import EMBEDDED, resolve_checkpoint
    from gmem_explore.evaluation.fid_sampling import checkpoint_identity

    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("emoji-32/") == EMBEDDED["emoji-32"]  # was: "neither a known checkpoint name ..."
    assert checkpoint_identity("emoji-32/") == "emoji-32"  # the same run as "emoji-32" when resumed
    with pytest.raises(ValueError, match="neither a known checkpoint name"):
        resolve_checkpoint("emoji-33/")


def test_a_local_folder_named_like_a_checkpoint_still_wins_with_a_slash(tmp_path, monkeypatch, tiny_folder):
    from gmem_explore.checkpoints.hub import EMBEDDED, resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    tiny_folder.rename(tmp_path / "emoji-32")
    assert resolve_checkpoint("emoji-32/").resolve() == (tmp_path / "emoji-32").resolve()
    assert resolve_checkpoint("emoji-32") == EMBEDDED["emoji-32"]  # the bare name is the built-in, as before
