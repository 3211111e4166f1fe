"""Load, small: 8 concurrent sessions against the app on a tiny model (loopback, bounded), each sees only its own
edited bank and every request is answered or politely refused; a generation that fails inside the model does
not break the next request. The 40-client figures come from benchmarks/load.py (results/load.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(ROOT / "benchmarks")]

import load  # noqa: E402  (benchmarks/load.py)
from conftest import free_port  # noqa: E402


@pytest.fixture(scope="module")
def served():
    from gmem_explore.app.server import launch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    demo = load.build_tiny_app()
    launch(demo, host="127.0.0.1", port=free_port(), max_queue=64, prevent_thread_lock=True, quiet=True)
    yield demo.local_url, demo
    demo.close()
    torch.set_num_threads(before)


def test_eight_sessions_at_once_are_all_answered_and_isolated(served):
    url, _ = served
    summary = load.run_load(url, clients=8, budget_s=120)
    assert not summary["failed"], summary["failed"]
    assert summary["leaked"] == 0 and summary["isolated"] == summary["checked"] == 8
    assert summary["answered"] + summary["refused"] == 8 * 3 and summary["answered"] >= 8


def test_a_failing_generation_does_not_break_the_next_request(served, monkeypatch):
    from gradio_client import Client

    from gmem_explore.app.generate_tab import SOURCES

    url, demo = served
    model = demo.gmem_context.store.get().model
    calls = {"n": 0}
    real_forward = type(model).forward

    def fail_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated failure inside the model (e.g. out of memory)")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", fail_once)
    client = Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 60})
    args = (SOURCES[0], 0, "red", None, 1, 3, False, 2, "euler", 1.0)
    with pytest.raises(Exception) as failure:
        client.predict(*args, api_name="/generate")
    assert "simulated failure" in str(failure.value) or "error" in str(failure.value).lower()
    gallery, seed, details = client.predict(*args, api_name="/generate")
    assert len(gallery) == 1 and seed == 3 and calls["n"] > 1
