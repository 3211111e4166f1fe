"""Shared fixtures: tiny models and banks (a few thousand parameters, 8x8 pixels) so every test runs in seconds."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import hypothesis
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a network
# gradio's upload folder, private to this run: the app reads uploads only from there (ui_files.in_upload_folder),
# so the tests' pictures are written there too (upload_folder below). Set before gradio is imported.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gmem-tests-gradio-")
# our caches (maps, indexes, the gallery of generated row pictures, folder counts), private to this run: a test that
# counts generations must not find the last run's pictures, and tests never write into the user's cache
os.environ["GMEM_CACHE"] = tempfile.mkdtemp(prefix="gmem-tests-cache-")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# property tests draw the same examples on every run: a CI run must not fail on a draw the last one missed
hypothesis.settings.register_profile("gmem", derandomize=True, database=None)
hypothesis.settings.load_profile("gmem")

from gmem_explore import GMemPipeline, offline, MemoryBank, build_model  # noqa: E402
from gmem_explore.autoencoders import PixelSpace  # noqa: E402
from gmem_explore.evaluation.fid_sampling import free_port  # noqa: E402,F401  (tests import it from here)

TINY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, encoder_depth=1,
            projector_dim=32, repa_dim=16, snippet_dim=16)


def upload_folder(name: str) -> Path:
    """A fresh folder inside gradio's upload folder, where files stand for what a person uploaded."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=os.environ["GRADIO_TEMP_DIR"]))


def randomize(model, seed=0, std=0.05):
    """A fresh SiT predicts exactly zero (adaLN-Zero init); give every weight a value so outputs depend on input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(autouse=True)
def forget_failed_hub_probes():
    """hub_reachable remembers a failed probe for a minute (per address): each test starts without that memory,
    so a test that fakes a reachable Hub is not answered by an earlier test's failure."""
    offline._unreachable_since.clear()
    yield
    offline._unreachable_since.clear()


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return randomize(build_model(**TINY)).eval()


@pytest.fixture
def tiny_bank():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(20, 16, generator=g)
    freq = torch.arange(1, 21).double()
    thumbs = torch.randint(0, 256, (20, 8, 8, 3), generator=g, dtype=torch.uint8)
    labels = torch.arange(20) % 3
    return MemoryBank(rows, freq, labels, ["a", "b", "c"], thumbs)


@pytest.fixture
def tiny_pipeline(tiny_model, tiny_bank):
    return GMemPipeline(tiny_model, tiny_bank, PixelSpace(8), sampler={"method": "euler", "steps": 4})


@pytest.fixture
def tqdm_bars(monkeypatch):
    """tqdm.auto.tqdm replaced by a recorder: the list of bars made, each with its total, desc, n (the sum of its
    updates) and whether it was closed, so a test can check that a bar ends full and closes."""
    import tqdm.auto

    bars = []

    class RecordingBar:
        def __init__(self, total=None, desc=None, **kwargs):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return bars
