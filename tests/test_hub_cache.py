"""Loading gmem-v1-xl as a researcher with a network would, simulated with a pre-filled Hugging Face cache (its exact
layout: blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<branch>) and HF_HUB_OFFLINE=1:
revisions honoured and recorded, the conversion reused, a damaged cache file or conversion named with a way out,
a full disk refused before writing, and the reachability probe bounded and aimed where the traffic really goes."""
from __future__ import annotations

import errno
import json
import socket
import threading
from pathlib import Path

import pytest
import torch

from conftest import TINY
from gmem_explore import offline  # noqa: E402
from gmem_explore import load_checkpoint
from gmem_explore.checkpoints.hub import HUB, CheckpointUnavailable, download, resolve_checkpoint
from gmem_explore.checkpoints.official import convert_official, file_sha256
from test_official import released_dict

FILE = HUB["gmem-v1-xl"]["filename"]
OLD, NEW = "1" * 40, "2" * 40  # two commits of the Hub repository


def cache_with(root: Path, commits: dict[str, dict], main: str) -> Path:
    """A Hugging Face cache holding one file per commit; refs/main names `main`. Returns the repo folder."""
    repo = root / "models--Tangentone--GMem"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for commit, raw in commits.items():
        incoming = repo / "blobs" / "incoming"
        torch.save(raw, incoming)
        sha = file_sha256(incoming)
        incoming.rename(repo / "blobs" / sha)
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / FILE).symlink_to(Path("..") / ".." / "blobs" / sha)
    (repo / "refs" / "main").write_text(main)
    return repo


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    raws = {OLD: released_dict(seed=1), NEW: released_dict(seed=2)}
    return cache_with(tmp_path / "hf" / "hub", raws, main=NEW), raws


def test_each_revision_loads_its_own_weights_and_records_its_commit(offline_cache):
    _, raws = offline_cache
    for revision, commit in ((None, NEW), ("main", NEW), (OLD, OLD)):
        folder = resolve_checkpoint("gmem-v1-xl", revision=revision, model_overrides=TINY, progress=False)
        source = json.loads((folder / "config.json").read_text())["source"]
        assert source["revision"] == commit, revision  # what "main" meant on that day: a record to reproduce it
        weights = load_checkpoint(folder).model.state_dict()
        assert torch.equal(weights["pos_embed"], raws[commit]["network"]["pos_embed"])
        assert torch.equal(weights["final_layer.linear.weight"], raws[commit]["network"]["final_layer.linear.weight"])


def test_a_damaged_conversion_is_converted_again_not_reported_as_a_bad_copy(offline_cache):
    first = resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)
    stamp = (first / "bank.safetensors").stat().st_mtime_ns
    assert resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False) == first  # reused ...
    assert (first / "bank.safetensors").stat().st_mtime_ns == stamp  # ... not rewritten
    # a truncated file (a disk cleaner, a partial rsync of the cache): the load said "copy or save it again"
    data = (first / "bank.safetensors").read_bytes()
    (first / "bank.safetensors").write_bytes(data[:len(data) // 2])
    again = resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)
    assert len(load_checkpoint(again).bank) == 24
    # a folder without its config.json: convert_official refused it as "exists and is not empty; choose a new
    # folder", a folder the user never chose
    (again / "config.json").unlink()
    assert load_checkpoint(resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)).bank.dim == 16


def test_a_corrupt_cached_download_names_the_blob_to_delete(offline_cache):
    repo, _ = offline_cache
    link = repo / "snapshots" / NEW / FILE
    blob = link.resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: its sha256") as err:
        resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)
    message = str(err.value)
    # deleting the link alone changes nothing: huggingface_hub links the same damaged blob again
    assert f"Delete the damaged download {blob}" in message and "only links to it" in message
    blob.unlink()  # the way out the message gives: now the cache no longer has it ...
    with pytest.raises(CheckpointUnavailable, match="not in the Hugging Face cache"):
        download("gmem-v1-xl")  # ... so, online, huggingface_hub downloads it afresh


def test_a_full_disk_is_refused_before_writing_with_the_space_needed(tmp_path, monkeypatch):
    import gmem_explore.checkpoints.official as official

    src = tmp_path / FILE
    torch.save(released_dict(), src)
    real = official.shutil.disk_usage
    monkeypatch.setattr(official.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OSError, match=r"needs 0\.00 GB free in .* which has 0\.00 GB") as err:
        convert_official(src, tmp_path / "out", model_overrides=TINY)
    assert err.value.errno == errno.ENOSPC and "gmem convert" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]  # nothing half-written


def test_a_disk_that_fills_while_converting_leaves_nothing_and_says_so(tmp_path, monkeypatch):
    import gmem_explore.checkpoints.official as official

    src = tmp_path / FILE
    torch.save(released_dict(), src)
    real_write = official.write_streaming

    def fills_up(path, tensors, **kwargs):
        if Path(path).name == "bank.safetensors":  # the network is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, tensors, **kwargs)

    monkeypatch.setattr(official, "write_streaming", fills_up)
    with pytest.raises(OSError, match="ran out of space while writing: it needs .* GB free") as err:
        convert_official(src, tmp_path / "out", model_overrides=TINY)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server.getsockname()[1]
    server.close()


def test_the_probe_goes_to_a_mirror_on_its_own_port_and_through_a_proxy(listener, monkeypatch):
    from huggingface_hub import constants

    from gmem_explore.checkpoints import hub

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # HF_ENDPOINT=http://mirror:8080: the probe dialled port 443 and called a working mirror unreachable
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener}")
    assert offline.hub_address() == ("127.0.0.1", listener) and offline.hub_reachable(timeout=2)
    # behind a proxy the Hub itself is not dialled directly (a firewall drops it), the proxy is
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listener}")
    assert offline.hub_address() == ("127.0.0.1", listener) and offline.hub_reachable(timeout=2)
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    assert offline.hub_address() == ("hub.invalid", 443)


def test_a_failed_probe_is_remembered_for_a_minute_per_address(monkeypatch):
    """Behind a firewall that drops packets each probe costs its full timeout, and loading a pipeline with the
    SD-VAE and DINOv2 probes up to three times: a failure is believed for UNREACHABLE_MEMORY_SECONDS at the same
    address, then asked again; a success is never remembered, and another address is probed afresh."""
    from gmem_explore.checkpoints import hub

    calls = []

    def refused(address, timeout=None):
        calls.append(address)
        raise OSError("connection refused")

    monkeypatch.setattr(offline.socket, "create_connection", refused)
    monkeypatch.setattr(offline, "hub_address", lambda: ("hub.invalid", 443))
    clock = [1000.0]
    monkeypatch.setattr(offline.time, "monotonic", lambda: clock[0])
    assert offline.hub_reachable(timeout=1) is False and offline.hub_reachable(timeout=1) is False
    assert len(calls) == 1  # the second answer came from memory
    clock[0] += offline.UNREACHABLE_MEMORY_SECONDS + 1
    assert offline.hub_reachable(timeout=1) is False and len(calls) == 2  # forgotten: asked again
    monkeypatch.setattr(offline, "hub_address", lambda: ("mirror.invalid", 8080))
    assert offline.hub_reachable(timeout=1) is False and len(calls) == 3  # another endpoint: its own probe
    monkeypatch.setattr(offline.socket, "create_connection", lambda address, timeout=None: type(
        "Socket", (), {"close": lambda self: None})())
    clock[0] += offline.UNREACHABLE_MEMORY_SECONDS + 1
    assert offline.hub_reachable(timeout=1) is True and offline.hub_reachable(timeout=1) is True
    assert ("mirror.invalid", 8080) not in offline._unreachable_since


def test_the_probe_gives_up_on_a_name_lookup_that_never_answers(monkeypatch):
    from gmem_explore.checkpoints import hub

    release, finished = threading.Event(), threading.Event()

    def stuck(address, timeout=None):  # getaddrinfo of a dead resolver: create_connection's timeout never applies
        release.wait(30)
        finished.set()
        raise OSError("resolver timed out")

    monkeypatch.setattr(offline.socket, "create_connection", stuck)
    try:
        assert offline.hub_reachable(timeout=0.2) is False
        assert not finished.is_set()  # it answered while the look-up was still hanging
    finally:
        release.set()


def test_two_revisions_in_a_read_only_cache_keep_their_own_conversions(offline_cache, tmp_path, monkeypatch):
    """A cluster's shared HF cache is often read-only: conversions then go to $GMEM_CACHE/converted, where both
    revisions (same file name, same size) got one folder, and each load of the other deleted and redid it."""
    import gmem_explore.checkpoints.conversion_cache as conversion_cache

    repo, raws = offline_cache
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path / "gmem-cache"))
    real_access = conversion_cache.os.access
    monkeypatch.setattr(conversion_cache.os, "access", lambda p, mode: False if repo in Path(p).parents else real_access(p, mode))
    old = resolve_checkpoint("gmem-v1-xl", revision=OLD, model_overrides=TINY, progress=False)
    new = resolve_checkpoint("gmem-v1-xl", revision=NEW, model_overrides=TINY, progress=False)
    assert old != new and old.parent == new.parent == tmp_path / "gmem-cache" / "converted"
    stamp = (old / "model.safetensors").stat().st_mtime_ns
    assert resolve_checkpoint("gmem-v1-xl", revision=OLD, model_overrides=TINY, progress=False) == old
    assert (old / "model.safetensors").stat().st_mtime_ns == stamp  # still there, not converted again
    for folder, commit in ((old, OLD), (new, NEW)):
        assert torch.equal(load_checkpoint(folder).model.state_dict()["pos_embed"], raws[commit]["network"]["pos_embed"])


def test_an_interrupted_download_is_mentioned_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    blobs = tmp_path / "hub" / "models--Tangentone--GMem" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / ("a" * 64 + ".incomplete")).write_bytes(bytes(1_500_000))
    with pytest.raises(CheckpointUnavailable, match=r"an interrupted download is there: 0\.00 GB of 4\.7 GB .*resumes"):
        download("gmem-v1-xl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("gmem_explore.offline.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(CheckpointUnavailable, match="unreachable and the file is not cached .an interrupted download"):
        download("gmem-v1-xl")


def test_a_killed_conversion_is_cleaned_up_by_the_next_one(offline_cache):
    """SIGKILL (the OOM killer, a job's time limit) runs no `except`: its hidden .partial folder, 3.7 GB for
    gmem-v1-xl, stayed in the HF snapshot folder for good."""
    import os
    import time

    repo, _ = offline_cache
    snapshot = repo / "snapshots" / NEW
    killed = snapshot / f".{Path(FILE).stem}.gmem-explore-fp16.k1ll3d.partial"
    running = snapshot / f".{Path(FILE).stem}.gmem-explore-fp16.st1ll.partial"  # another process, still writing
    for folder in (killed, running):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(bytes(1000))
    hours_ago = time.time() - 2 * 3600
    for path in (killed / "model.safetensors", killed):
        os.utime(path, (hours_ago, hours_ago))
    resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)
    assert not killed.exists() and running.exists()


def test_a_download_that_fills_the_disk_says_so_not_to_download_elsewhere(tmp_path, monkeypatch):
    import huggingface_hub

    from gmem_explore.checkpoints import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(offline, "hub_reachable", lambda timeout=3.0: True)

    def fills_up(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("download interrupted") from e  # wrapped, as a library may

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fills_up)
    with pytest.raises(CheckpointUnavailable, match="filled up while downloading") as err:
        download("gmem-v1-xl")
    assert str(tmp_path / "cache") in str(err.value) and "HF_HUB_CACHE" in str(err.value)
    assert "where a network exists" not in str(err.value)  # the old advice: the network was never the problem


def test_gmem_info_takes_a_revision_and_shows_its_commit(offline_cache, capsys):
    from gmem_explore.cli.main import main

    for commit in (OLD, NEW):  # converted once with the tiny sizes; info reuses the conversions
        resolve_checkpoint("gmem-v1-xl", revision=commit, model_overrides=TINY, progress=False)
    capsys.readouterr()
    assert main(["info", "gmem-v1-xl", "--revision", OLD, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["source"]["revision"] == OLD
    assert main(["info", "gmem-v1-xl"]) == 0
    assert f"revision {NEW}" in capsys.readouterr().out


def test_a_cache_copied_without_its_times_keeps_its_conversion(offline_cache):
    """`cp -r` (no -p) or a download of a tarred cache gives every file a new mtime: the conversion, checked against
    the blob's sha256 when it was made, was thrown away and redone."""
    import os

    repo, _ = offline_cache
    folder = resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    blob = (repo / "snapshots" / NEW / FILE).resolve()
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 10**12))
    assert resolve_checkpoint("gmem-v1-xl", model_overrides=TINY, progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
