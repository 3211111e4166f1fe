"""Loading files a researcher has on disk: .pth files that are not the released dict (a bare state_dict, a REPA /
GMem training checkpoint, a class-conditional network, a GMem network of another size) are named with what to do;
our own folders from a newer version, or holding integer weights, say so; `gmem info` describes a converted release
without its SD-VAE and shows its licence."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import TINY
from gmem_explore import build_model, load_checkpoint
from gmem_explore.checkpoints.folder import Checkpoint, save_checkpoint
from gmem_explore.checkpoints.official import convert_official, load_official
from gmem_explore.checkpoints.official_layouts import describe_network, how_to_convert, network_sizes
from gmem_explore.safefiles import load_tensors, save_tensors
from test_official import released_dict


def test_a_bare_state_dict_is_named_in_a_short_message(tmp_path):
    path = tmp_path / "DiT-XL-2-256x256.pt"
    with torch.device("meta"):
        keys = list(build_model("SiT-XL/2").state_dict())
    network = {k: torch.zeros(1) for k in keys}  # 260 keys (SiT-XL/2's): the message listed every one
    torch.save(network, path)
    with pytest.raises(ValueError, match="it holds a bare network state_dict") as err:
        load_official(path)
    assert len(str(err.value)) < 1000 and "no memory bank" in str(err.value)  # was over 9,000 characters


def test_a_training_checkpoint_names_its_ema_weights_and_the_missing_bank(tmp_path):
    raw = released_dict()
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw["network"], "ema": raw["network"], "opt": {}, "args": {"model": "SiT-XL/2"},
                "steps": 400000}, path)
    with pytest.raises(ValueError, match="it is a training checkpoint") as err:
        load_official(path)
    assert "ckpt['ema']" in str(err.value) and "memory bank is a separate file" in str(err.value)
    # a REPA (class-conditional) run has the same layout, but its network is not GMem at all
    repa = {k: v for k, v in raw["network"].items() if not k.startswith("condition_projection.")}
    repa["y_embedder.embedding_table.weight"] = torch.zeros(1001, TINY["hidden_size"])
    torch.save({"model": repa, "ema": repa, "opt": {}, "args": {}}, path)
    with pytest.raises(ValueError, match="class-conditional DiT / SiT / REPA network .*1001 rows.*not a GMem") as err:
        load_official(path)
    assert "ckpt['ema']" not in str(err.value)


def test_a_network_of_another_size_is_named_and_the_suggested_options_convert_it(tmp_path):
    deeper = dict(TINY, depth=3)
    path = tmp_path / "gmem-deeper.pth"
    torch.save(released_dict() | {"network": build_model(**deeper).state_dict()}, path)
    with pytest.raises(ValueError, match=r"holds a GMem network of a custom size \(depth 3, width 32") as err:
        convert_official(path, tmp_path / "out", model_overrides=TINY)
    suggested = json.loads(re.search(r"--model-config '(.*?)'", str(err.value)).group(1))
    out = convert_official(path, tmp_path / "out", model_overrides=suggested)  # the advice works as given
    assert load_checkpoint(out).model.config.depth == 3


def test_sit_b_is_named_with_the_model_to_pass():
    with torch.device("meta"):
        network = build_model("SiT-B/2").state_dict()
    assert describe_network(network).startswith("a GMem SiT-B/2 network (depth 12, width 768, patch 2, 32x32x4")
    assert how_to_convert(network) == "convert it with `gmem convert FILE OUT --model SiT-B/2`"
    assert network_sizes(network)["num_heads"] == 12
    with torch.device("meta"):
        network = build_model("SiT-XL/4", input_size=64).state_dict()  # 512 px latents
    assert how_to_convert(network) == "convert it with `gmem convert FILE OUT --model SiT-XL/4 --model-config " \
                                      "'{\"input_size\": 64}'`"


@pytest.fixture
def saved(tmp_path):
    from gmem_explore import MemoryBank

    model = build_model(**TINY)
    return save_checkpoint(tmp_path / "ckpt", Checkpoint(model, MemoryBank(torch.randn(6, 16), torch.ones(6))))


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_folder_from_a_newer_version_says_upgrade_not_damaged(saved):
    edit_config(saved, lambda c: c["model"].__setitem__("qk_norm", True))
    with pytest.raises(ValueError, match="written by a newer gmem-explore: upgrade") as err:
        load_checkpoint(saved)
    assert "qk_norm" in str(err.value) and not str(err.value).startswith(f"{saved / 'config.json'} is damaged")
    edit_config(saved, lambda c: (c["model"].pop("qk_norm"), c.__setitem__("format", "gmem-explore-2")))
    with pytest.raises(ValueError, match="another version of gmem-explore; upgrade"):
        load_checkpoint(saved)


def test_integer_weights_are_refused_not_cast(saved):
    state, _ = load_tensors(saved / "model.safetensors", mmap=False)
    save_tensors(saved / "model.safetensors", {k: (v * 100).to(torch.int32) for k, v in state.items()})
    with pytest.raises(ValueError, match=r"model.safetensors is damaged: tensors .* hold torch.int32 values"):
        load_checkpoint(saved)


def test_info_describes_a_converted_release_without_its_sd_vae_and_shows_the_licence(tmp_path, monkeypatch, capsys):
    from gmem_explore.cli.main import main

    monkeypatch.setenv("GMEM_SD_VAE", str(tmp_path / "no-vae-here"))  # the SD-VAE cannot load: info must not try
    latent = dict(TINY, in_channels=4)
    src = tmp_path / "gmem.pth"
    torch.save(released_dict() | {"network": build_model(**latent).state_dict()}, src)
    out = convert_official(src, tmp_path / "conv", model_overrides=latent)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "autoencoder  sd-vae" in text and "64 px images" in text
    assert "licence      MIT (GMem weights, Tangentone/GMem)" in text and "revision None" not in text
    old = tmp_path / "old"  # converted by an earlier version, which spelled it "license"
    shutil.copytree(out, old)
    edit_config(old, lambda c: c.__setitem__("license", c.pop("licence")))
    assert main(["info", str(old), "--json"]) == 0 and main(["info", str(old)]) == 0
    assert "licence      MIT" in capsys.readouterr().out


@pytest.mark.parametrize("header, problem", [
    ([1, 2], "its header is a JSON list"),
    ({"a": {"dtype": "F32", "shape": [1]}}, "lacks dtype, shape or data_offsets"),
    ({"a": 5}, "lacks dtype, shape or data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, r"data_offsets \[-4, 0\] are not"),
    ({"a": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}, "shape x is not a list of sizes"),
    ({"__metadata__": [1]}, "its __metadata__ is not an object"),
])
def test_a_damaged_safetensors_header_is_a_clear_error(tmp_path, header, problem):
    """Each was a bare TypeError / KeyError / AttributeError, and offset -4 read the header's own bytes as weights."""
    import struct

    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(ValueError, match=f"is not a valid safetensors file .*{problem}.*copy or save it again"):
        load_tensors(path)


def test_convert_checks_the_model_and_the_source_before_hashing(tmp_path, monkeypatch):
    """`gmem convert` checks its options before slow work: a mistyped --model was found after hashing 4.7 GB."""
    import gmem_explore.checkpoints.official as official

    src = tmp_path / "gmem.pth"
    torch.save(released_dict(), src)

    def never(*args, **kwargs):
        raise AssertionError("hashed before the options were checked")

    monkeypatch.setattr(official, "file_sha256", never)
    with pytest.raises(ValueError, match="Unknown model name 'SiT-Q/2'"):
        convert_official(src, tmp_path / "out", model="SiT-Q/2", sha256="0" * 64)
    with pytest.raises(ValueError, match=r"Unknown model config keys \['wings'\]"):
        convert_official(src, tmp_path / "out", model_overrides={"wings": 2}, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="No such checkpoint file"):  # was open()'s bare errno message
        convert_official(tmp_path / "missing.pth", tmp_path / "out", sha256="0" * 64)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_lost_its_encoder_file_says_so(tmp_path):
    from gmem_explore.checkpoints.hub import EMBEDDED

    folder = shutil.copytree(EMBEDDED["emoji-32"], tmp_path / "emoji-copy")
    (folder / "encoder.safetensors").unlink()  # a partial copy: was AttributeError 'NoneType' has no 'items'
    with pytest.raises(FileNotFoundError, match=r"emoji-copy is missing encoder.safetensors: .*'conv' snippet encoder"):
        load_checkpoint(folder)


def test_misaligned_tensors_read_the_file_once(tmp_path, monkeypatch):
    """Another tool's safetensors may place a float tensor off a 4-byte boundary, where it cannot be mapped: each
    such tensor read the whole file again (a 2 GB bank of 1,000 such tensors: 2 TB read)."""
    import pathlib
    import struct

    values = [torch.arange(3, dtype=torch.float32) + i for i in range(4)]
    header = {"flag": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    data = b"\x07"
    for i, v in enumerate(values):  # each float tensor starts at an odd offset
        header[f"t{i}"] = {"dtype": "F32", "shape": [3], "data_offsets": [len(data), len(data) + 12]}
        data += v.numpy().tobytes()
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    reads = []
    real = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: reads.append(self) or real(self))
    tensors, _ = load_tensors(path, mmap=True)
    assert len(reads) == 1 and int(tensors["flag"][0]) == 7
    assert all(torch.equal(tensors[f"t{i}"], v) for i, v in enumerate(values))


def test_a_file_given_for_its_folder_or_an_upper_case_pth_is_understood(tmp_path, saved):
    from gmem_explore.checkpoints.hub import resolve_checkpoint

    with pytest.raises(ValueError, match=f"model.safetensors is one file of a checkpoint folder; give the folder "
                                         f"itself, {re.escape(str(saved))}"):
        resolve_checkpoint(str(saved / "model.safetensors"))
    src = tmp_path / "GMEM.PTH"
    torch.save(released_dict(), src)
    assert load_checkpoint(resolve_checkpoint(str(src), model_overrides=TINY, progress=False)).bank.dim == 16


def test_a_save_that_fills_the_disk_names_the_folder_and_the_space(tmp_path, monkeypatch, saved):
    """It named `.ckpt.saving-xxxx/model.safetensors`, a hidden folder the user never chose and that is gone."""
    import errno

    import gmem_explore.checkpoints.folder as checkpoint

    ckpt = load_checkpoint(saved)
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def fills_up(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save_tensors", fills_up)
    with pytest.raises(OSError, match=f"while saving {re.escape(str(saved))}: the checkpoint needs about 0.00 GB") as err:
        save_checkpoint(saved, ckpt)
    assert ".saving-" not in str(err.value) and err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]  # no staging folder left
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # the old checkpoint is untouched


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.__setitem__("memoryfreq", torch.zeros(24)), "'memoryfreq' is unusable: freq sums to zero"),
    (lambda raw: raw["memoryfreq"].__setitem__(0, -1.0), "'memoryfreq' is unusable: freq must be non-negative"),
    (lambda raw: raw.__setitem__("memorybank", raw["memorybank"] * 1e5),
     r"tensor 'rows' holds values up to .* do not fit torch.float16 .*--bank-dtype fp32"),
])
def test_a_bank_that_cannot_load_or_would_overflow_is_refused_before_it_is_written(tmp_path, edit, message):
    """Unusable counts converted fine and then failed every load; fp16 turned bank values above 65504 into inf."""
    raw = released_dict()
    edit(raw)
    src = tmp_path / "gmem.pth"
    torch.save(raw, src)
    with pytest.raises(ValueError, match=message):
        convert_official(src, tmp_path / "out", model_overrides=TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gmem.pth"]


def test_a_damaged_file_under_a_linked_folder_is_not_called_a_cache_link(tmp_path):
    """/tmp -> /private/tmp (macOS), a home folder on a linked disk: the file itself is no link to a blob."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real)
    src = tmp_path / "linked" / "gmem.pth"
    torch.save(released_dict(), src)
    src.write_bytes(src.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated or damaged: delete it and download") as err:
        load_official(src)
    assert "only links to it" not in str(err.value)
