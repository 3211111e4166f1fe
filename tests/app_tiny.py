"""A tiny pipeline with a toy snippet encoder, for the app's tests (8x8 images, 16-d snippets, 40 bank rows).

The toy encoder is a fixed random projection of the image shrunk to 8x8: deterministic, and different images
give different snippets, which is all the app's tests need from an encoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import TINY, randomize
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
    from gmem_explore.ui import build_app
    from gmem_explore.ui_common import Limits

    return build_app(tiny_factory, "tiny", limits=Limits(preview_seconds=0.0, **limits), use_spaces_gpu=False)
