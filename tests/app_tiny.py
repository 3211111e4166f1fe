"""A tiny pipeline with a toy snippet encoder, for the app's tests (8x8 images, 16-d snippets, 40 bank rows), and
the fixtures those tests share: `demo` (the app on it), `ctx` (its AppContext), `pictures` (uploads) and `red`.
A test module takes the fixtures with `pytest_plugins = ["app_tiny"]` (one definition for test_app,
test_app_edges and test_ui_bank_panel; tests/conftest.py stays the tiny models' own). PYTEST_DONT_REWRITE: this
module has no asserts to rewrite, and the test modules import it before pytest loads it as a plugin, which
otherwise warns "Module already imported so cannot be rewritten".

The toy encoder is a fixed random projection of the image shrunk to 8x8: deterministic, and different images
give different snippets, which is all the app's tests need from an encoder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY, randomize, upload_folder
from gmem_explore import GMemPipeline, MemoryBank, build_model
from gmem_explore.autoencoders import PixelSpace

GROUPS = ["red", "green", "blue"]
ROWS = 40


class ToyEncoder:
    dim = TINY["snippet_dim"]

    def __init__(self, seed: int = 3):
        self.proj = torch.randn(8 * 8 * 3, self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, images) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            from gmem_explore.images import load_batch

            images = load_batch(images, 8)
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
        return x.reshape(x.shape[0], -1) @ self.proj

    def config_dict(self) -> dict:
        return {"type": "toy"}

    def state_dict(self) -> dict:
        return {"proj": self.proj}


def tiny_bank(rows: int = ROWS) -> MemoryBank:
    g = torch.Generator().manual_seed(1)
    thumbs = torch.zeros(rows, 8, 8, 3, dtype=torch.uint8)
    labels = torch.arange(rows) % 3
    for i in range(rows):  # each row's thumbnail is a block of its group's colour with a row-dependent shade
        thumbs[i, :, :, int(labels[i])] = 80 + (i * 4) % 170
    return MemoryBank(torch.randn(rows, TINY["snippet_dim"], generator=g), torch.arange(1, rows + 1).double(),
                      labels, GROUPS, thumbs)


def tiny_pipeline() -> GMemPipeline:
    torch.manual_seed(0)
    model = randomize(build_model(**TINY)).eval()
    return GMemPipeline(model, tiny_bank(), PixelSpace(8), encoder=ToyEncoder(),
                        sampler={"method": "euler", "steps": 4}, info={"name": "tiny"})


def tiny_factory(name: str) -> GMemPipeline:
    """"tiny" -> the tiny pipeline; anything else goes through from_pretrained (offline: fails fast)."""
    if name == "tiny":
        return tiny_pipeline()
    return GMemPipeline.from_pretrained(name)


def tiny_demo(**limits):
    """The app on the tiny pipeline, without the live preview's pause; `limits` override Limits' other defaults."""
    from gmem_explore.app.server import build_app
    from gmem_explore.app.common import Limits

    return build_app(tiny_factory, "tiny", limits=Limits(preview_seconds=0.0, **limits), use_spaces_gpu=False)


# ---- fixtures (pytest_plugins = ["app_tiny"]) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    """One app per test module: at most 8 images and 12 frames a request, so a limit is quick to reach."""
    return tiny_demo(max_images=8, max_frames=12)


@pytest.fixture
def ctx(demo):
    return demo.gmem_context


@pytest.fixture(scope="module")
def pictures() -> dict[str, str]:
    """Uploads by name: red and blue 24x20 images, a fully transparent PNG and a file that only starts like a PNG.
    They lie in gradio's upload folder, as uploads do: the app reads nothing outside it."""
    folder = upload_folder("pictures")
    paths = {}
    for name, colour in (("red", (230, 20, 20)), ("blue", (20, 20, 230))):
        paths[name] = str(folder / f"{name}.png")
        Image.new("RGB", (24, 20), colour).save(paths[name])
    paths["transparent"] = str(folder / "transparent.png")
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(paths["transparent"])
    paths["broken"] = str(folder / "broken.png")
    Path(paths["broken"]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return paths


@pytest.fixture(scope="module")
def red(pictures) -> str:
    return pictures["red"]


def follow_ups(demo, api_name: str) -> list:
    """The steps that run after an event, in order."""
    (fn,) = [f for f in demo.fns.values() if f.api_name == api_name]
    steps = []
    while True:
        nxt = [f for f in demo.fns.values() if f.trigger_after == fn._id]
        if not nxt:
            return steps
        (fn,) = nxt
        steps.append(fn)
