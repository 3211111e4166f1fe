"""What GMemPipeline.generate_iter yields: a Progress after every sampler step, then one Finished holding the
Generation (the images and what made them). The one shape progress takes from the sampler to a progress bar, a
notebook widget or the app's gallery.

    for event in pipe.generate_iter(8, seeds=0, steps=50):
        if isinstance(event, Progress):
            print(f"step {event.step}/{event.total}, {event.fraction:.0%}")   # event.preview(): images so far
        else:
            out = event.generation

Stop iterating (break, or .close() the generator) and the sampler stops after the step under way; nothing keeps
running in the background.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .viz import image_grid, to_pil


@dataclass
class Generation:
    """Images (uint8, N x H x W x 3) and what made them: bank rows (None for explicit snippets), seeds, snippets."""

    images: torch.Tensor
    seeds: list[int]
    indices: list[int | None]
    snippets: torch.Tensor
    settings: dict = field(default_factory=dict)

    def pil(self, scale: int = 1):
        return to_pil(self.images, scale)

    def grid(self, nrow: int | None = None, scale: int = 1):
        return image_grid(self.images, nrow=nrow, scale=scale)

    def __len__(self):
        return len(self.seeds)


@dataclass(frozen=True)
class Progress:
    """One sampler step of one batch: images [start, stop) of the call, at step `step` of `total` (time t)."""

    step: int  # steps this batch has done, 1..total
    total: int
    t: float  # the time the step reached (1 = noise, 0 = data)
    start: int  # the batch's first image in the call
    stop: int  # one past its last
    images_total: int  # images the whole call makes
    x: torch.Tensor = field(repr=False, compare=False)  # the batch's sampler state (latents) after the step
    denoised: torch.Tensor = field(repr=False, compare=False)  # the step's estimate of the clean latents
    decode: Callable[[torch.Tensor], torch.Tensor] = field(repr=False, compare=False)  # latents -> uint8 images

    @property
    def images_done(self) -> float:
        """Images of the call done, counting this batch's share of its steps: what progress bars show."""
        return self.start + (self.stop - self.start) * self.step / self.total

    @property
    def fraction(self) -> float:
        """images_done / images_total, in [0, 1]."""
        return min(self.images_done / self.images_total, 1.0)

    def preview(self) -> torch.Tensor:
        """uint8 images (stop - start, H, W, 3) of the denoised estimate, decoded now: with the SD-VAE a decode
        costs about as much as a sampler step, so only a consumer that shows previews asks for them."""
        return self.decode(self.denoised.float())


@dataclass(frozen=True)
class Finished:
    """The last event: the finished Generation, equal to what generate() returns for the same arguments."""

    generation: Generation
