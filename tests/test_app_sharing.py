"""One server, many visitors: a model load does not freeze other requests, cancelled requests cannot run models
beside each other, and the files handed to browsers do not pile up."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from app_tiny import tiny_pipeline
from gmem_explore.app import files as ui_files
from gmem_explore.events import Finished, Progress
from gmem_explore.app.common import AppContext, Limits, PipelineStore
from gmem_explore.app.runs import live
from gmem_explore.app.files import scratch_path


def test_a_slow_load_blocks_only_requests_for_that_model():
    release, loads = threading.Event(), []
    default = tiny_pipeline()

    def factory(name):
        loads.append(name)
        if name == "slow":  # stands in for the 4.7 GB download of gmem-v1-xl
            assert release.wait(30)
        return default

    store = PipelineStore(factory, "tiny")
    store.get()
    waiting = [threading.Thread(target=store.get, args=("slow",)) for _ in range(2)]
    for t in waiting:
        t.start()
    time.sleep(0.2)
    start = time.monotonic()
    assert store.get("tiny") is default and time.monotonic() - start < 1  # not behind the slow load
    release.set()
    for t in waiting:
        t.join(10)
    assert loads == ["tiny", "slow"]  # the second request for "slow" waited and reused the first one's load


def test_model_calls_never_overlap_even_when_their_requests_were_cancelled():
    ctx = AppContext(PipelineStore(lambda name: None, "tiny"), Limits(concurrency=1))
    running, most = [0], [0]
    lock = threading.Lock()

    def run(_=None):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return "done"

    held = ctx.model_call(run)
    assert held.__name__ == "run"  # handlers stay findable by name
    threads = [threading.Thread(target=held) for _ in range(4)]  # gradio's threads after submit-and-cancel
    for t in threads:
        t.start()
    # a live run holds a slot from its first step until it is closed (gradio closes it when the browser leaves):
    # the runs waiting above start only then
    pipe = tiny_pipeline()
    session = ctx.new_session()
    first = live(ctx, session, "generate", pipe.generate_iter(1, seeds=0, steps=3))
    assert isinstance(next(first), Progress)
    with lock:
        running[0] += 1  # counted as a model call while it holds its slot
        most[0] = max(most[0], running[0])
    time.sleep(0.1)
    with lock:
        running[0] -= 1
    first.close()
    assert isinstance(list(live(ctx, session, "generate", pipe.generate_iter(1, seeds=0, steps=2)))[-1], Finished)
    for t in threads:
        t.join(10)
    assert most[0] == 1


def test_scratch_files_older_than_an_hour_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(ui_files, "SCRATCH", tmp_path / "scratch")
    first = scratch_path("bank.safetensors")
    first.write_bytes(b"x")
    hour_ago = time.time() - ui_files.SCRATCH_TTL_S - 5
    os.utime(first.parent, (hour_ago, hour_ago))
    fresh = scratch_path("interpolation.gif")
    fresh.write_bytes(b"y")
    second = scratch_path("bank.safetensors")
    assert not first.parent.exists() and fresh.exists()
    assert second.parent.parent == first.parent.parent and second.name == "bank.safetensors"


@pytest.mark.parametrize("writer", ["download", "gif"])
def test_downloads_and_gifs_are_written_to_the_scratch_folder(writer, tmp_path, monkeypatch):
    from gmem_explore.app import interpolate_tab as ui_interpolate, swap_tab as ui_swap

    monkeypatch.setattr(ui_files, "SCRATCH", tmp_path / "scratch")
    if writer == "gif":
        path = ui_interpolate.write_gif(torch.zeros(3, 8, 8, 3, dtype=torch.uint8))
    else:
        ctx = AppContext(PipelineStore(lambda name: tiny_pipeline(), "tiny"))
        path = ui_swap.download(ctx, ctx.new_session())
    assert os.path.dirname(os.path.dirname(path)) == str(tmp_path / "scratch") and os.path.getsize(path) > 0


def test_edited_banks_together_stay_within_their_memory_limit():
    import gc

    from gmem_explore.app.common import UserError, copy_bytes

    one = copy_bytes(tiny_pipeline().bank)  # a session's copy: its row map and edits, not a second bank
    ctx = AppContext(PipelineStore(lambda name: tiny_pipeline(), "tiny"), Limits(max_edited_bank_bytes=one * 3 // 2))
    first, second = ctx.new_session(), ctx.new_session()
    mine = ctx.private_bank(first)
    assert mine is not ctx.store.get().bank and ctx.private_bank(first) is mine  # one copy per session
    with pytest.raises(UserError, match="already holds 1 sessions' edited banks"):
        ctx.private_bank(second)
    assert second.bank is None
    first.bank = mine = None  # the first session reset (or expired): its copy is freed
    gc.collect()
    assert ctx.private_bank(second) is second.bank
