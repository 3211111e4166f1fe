"""Helpers behind notebooks/02_remix.ipynb: swap a bank row for a new image, interpolate, compare mixing methods.

Everything generates with explicit seeds, so "before" and "after" differ only by the snippet, and every frame of
an interpolation shares one seed (the noise is the same, only the memory changes).

    before, after, edited = swap_and_compare(pipe, row=12, image="my.png", seeds=range(4))
    Interpolator(pipe, a=12, b=40)           # precomputes the frames on "Compute"; the slider only shows them
"""
from __future__ import annotations

import html
from typing import Sequence

import torch

from ..bank.memory import MIX_METHODS, mix
from ..images import load_rgb
from .helpers import guarded, labelled_grid, problem, seed_of, show, show_titled, with_bank, with_bar, with_status
from ..pipeline import Generation, GMemPipeline, check_seeds, resolve_snippet
from ..values import is_whole


def _snippet(pipe: GMemPipeline, x) -> torch.Tensor:
    """A bank row index (Python, NumPy or 0-d tensor integer) or a snippet vector -> one normalised snippet (1, D)."""
    return resolve_snippet(pipe, x)[1]


def _some(values, what: str) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty: give at least one")
    return values


# ---- swap a row ----------------------------------------------------------------------------------------------
def swap_row(pipe: GMemPipeline, row: int, image) -> tuple[GMemPipeline, torch.Tensor]:
    """A new pipeline whose bank has `row` replaced by the snippet of `image` (path, PIL, array); the original
    pipeline and bank are untouched (the bank is copied: for the released 640k bank that is 1 GB in fp16).
    Returns (edited pipeline, the new snippet (1, D))."""
    if pipe.encoder is None:
        raise RuntimeError("this checkpoint has no snippet encoder, so new images cannot become snippets; "
                           "use the default model or a checkpoint saved with its encoder")
    pipe.bank._check_index([row])
    # the snippet from the image at the model's size (as the notebook's nearest-rows cell encodes it), not from
    # the thumbnail (a 64 px thumbnail would feed a 256 px model's encoder a blurred picture); the image is read
    # before the bank is copied, so a bad file fails at once
    snippet = pipe.snippets_from_images(load_rgb(image, pipe.image_size)[None])
    thumbs = pipe.bank.column("thumbnails")  # read as stored: the bank and its copy share their thumbnails
    thumbnail = None if thumbs is None else load_rgb(image, thumbs.shape[1])
    bank = pipe.bank.copy()
    bank.replace(row, snippet[0], thumbnail=thumbnail)
    return with_bank(pipe, bank), snippet


def swap_and_compare(pipe: GMemPipeline, row: int, image, seeds: Sequence[int] = (0, 1, 2, 3), steps: int | None = None,
                     progress: bool = True):
    """Generations of `row` before and after the swap, with the same seeds: (before, after, edited pipeline).
    `progress`: a progress bar for each of the two runs. The swap comes first: a bad image or row fails before
    the "before" run (minutes on the released model) rather than after it."""
    seeds = check_seeds(_some(seeds, "seeds"), None)
    edited, _ = swap_row(pipe, row, image)
    before = with_bar(pipe.generate_iter(indices=[row] * len(seeds), seeds=seeds, steps=steps), f"row {row} before",
                      progress)
    after = with_bar(edited.generate_iter(indices=[row] * len(seeds), seeds=seeds, steps=steps), f"row {row} after",
                     progress)
    return before, after, edited


def swap_figure(pipe: GMemPipeline, edited: GMemPipeline, row: int, before: Generation, after: Generation):
    """Row thumbnail then its generations, before (top) and after (bottom); columns share a seed."""
    old, new = (bank.column("thumbnails") for bank in (pipe.bank, edited.bank))  # read as stored, never copied
    old = old[row] if old is not None else before.images[0]
    new = new[row] if new is not None else after.images[0]
    images = torch.stack([_fit(old, before.images[0]), *before.images, _fit(new, before.images[0]), *after.images])
    titles = ([f"row {row} before"] + [f"seed {s}" for s in before.seeds] +
              [f"row {row} after"] + [f"seed {s}" for s in after.seeds])
    return labelled_grid(images, titles, ncols=len(before) + 1)


def _fit(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Resize a thumbnail to the generated images' size so they share one grid."""
    if image.shape == like.shape:
        return image
    return load_rgb(image.numpy(), like.shape[0])


# ---- mixing ----------------------------------------------------------------------------------------------------
def mixing_grid(pipe: GMemPipeline, a, b, weights: Sequence[float] = (0, 0.25, 0.5, 0.75, 1), seed: int = 0,
                methods: Sequence[str] = MIX_METHODS, steps: int | None = None, progress: bool = True) -> Generation:
    """One image per (method, weight), row-major, all from `seed`: the four mixing methods side by side.
    `progress`: a progress bar over the images."""
    sa, sb = _snippet(pipe, a), _snippet(pipe, b)
    weights, methods = _some(weights, "weights"), _some(methods, "methods")
    snippets = torch.cat([mix(sa, sb, w, m, seed) for m in methods for w in weights])
    return with_bar(pipe.generate_iter(snippets=snippets, seeds=[seed] * len(snippets), steps=steps), "mixing",
                    progress)


def mixing_figure(gen: Generation, weights: Sequence[float], methods: Sequence[str] = MIX_METHODS):
    titles = [f"{m} w={w:g}" for m in methods for w in weights]
    return labelled_grid(gen.images, titles, ncols=len(weights))


def seed_sweep(pipe: GMemPipeline, a, b, seeds: Sequence[int] = (0, 1, 2), frames: int = 5, method: str = "slerp",
               steps: int | None = None, progress: bool = True) -> Generation:
    """Interpolations from a to b, one row per seed; within a row every frame has the same seed.
    `progress`: a progress bar over the images."""
    sa, sb = _snippet(pipe, a), _snippet(pipe, b)
    seeds = check_seeds(_some(seeds, "seeds"), None)
    if not is_whole(frames, 2):
        raise ValueError(f"frames must be a whole number of at least 2 (row a, then row b); got {frames!r}")
    frames = int(frames)
    weights = torch.linspace(0, 1, frames).tolist()
    snippets = torch.cat([mix(sa, sb, w, method, s) for s in seeds for w in weights])
    return with_bar(pipe.generate_iter(snippets=snippets, seeds=[s for s in seeds for _ in weights], steps=steps),
                    "seed sweep", progress)


def seed_sweep_figure(gen: Generation, seeds: Sequence[int], frames: int):
    weights = torch.linspace(0, 1, frames).tolist()
    titles = [f"seed {s} w={w:.2f}" for s in seeds for w in weights]
    return labelled_grid(gen.images, titles, ncols=frames)


# ---- the interpolation widget ------------------------------------------------------------------------------------
class Interpolator:
    """Two bank rows, a method, a seed and a frame count; "Compute" generates every frame once, and the slider only
    shows precomputed frames, so dragging never runs the sampler. Changing a setting after Compute keeps the frames
    but says they are from the earlier settings until Compute is pressed again."""

    def __init__(self, pipe: GMemPipeline, a: int = 0, b: int = 1, frames: int = 9, method: str = "slerp",
                 seed: int = 0, steps: int | None = None):
        import ipywidgets as W

        self.pipe, self.steps = pipe, steps
        self.generation: Generation | None = None
        self.computed = ""  # the settings the frames shown were made with ("4 frames from row 0 to row 5, ...")
        n = len(pipe.bank)
        self.a = W.BoundedIntText(value=a, min=0, max=n - 1, description="row a")
        self.b = W.BoundedIntText(value=b, min=0, max=n - 1, description="row b")
        self.method = W.Dropdown(options=list(MIX_METHODS), value=method, description="method")
        self.seed = W.IntText(value=seed, description="seed")
        self.frames = W.BoundedIntText(value=frames, min=2, max=64, description="frames")
        self.compute_button = W.Button(description="Compute frames", button_style="primary")
        self.slider = W.IntSlider(value=0, min=0, max=self.frames.value - 1, description="frame", disabled=True)
        self.frame_out, self.strip_out, self.status = W.Output(), W.Output(), W.HTML()
        self.compute_button.on_click(lambda _: self.compute())
        self.slider.observe(lambda change: self.show_frame(change["new"]), names="value")
        for w in (self.a, self.b, self.method, self.seed, self.frames):
            w.observe(lambda _: self.settings_changed(), names="value")
        self.widget = W.VBox([W.HBox([self.a, self.b, self.method]), W.HBox([self.seed, self.frames, self.compute_button]),
                              self.status, self.slider, W.HBox([self.frame_out, self.strip_out])])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def settings(self) -> str:
        return (f"{self.frames.value} frames from row {self.a.value} to row {self.b.value}, {self.method.value}, "
                f"seed {self.seed.value}")

    def settings_changed(self):
        """A control moved: the frames shown stay, named as the earlier settings', until Compute."""
        if self.generation is not None and self.settings() != self.computed:
            self.status.value = html.escape(f"showing {self.computed}; press Compute frames for {self.settings()}")
        elif self.generation is not None:
            self.status.value = html.escape(self.computed)

    def compute(self) -> Generation | None:
        """Generate all frames (one sampler run, one seed) and enable the slider; a refusal or failure is said in the
        status (the earlier frames are cleared first: none is left looking like this run's)."""
        if int(self.a.value) == int(self.b.value):
            held = f" · still showing {self.computed}" if self.generation is not None else ""
            self.status.value = problem(f"row a and row b are both {self.a.value}: every frame would be the same "
                                        f"image; pick two different rows") + html.escape(held)
            return None
        self.generation, self.computed, self.slider.disabled = None, "", True
        for out in (self.frame_out, self.strip_out):
            out.clear_output()
        return guarded(self.status, "Compute frames", self._compute)

    def _compute(self) -> Generation:
        k, settings = int(self.frames.value), self.settings()
        generation = with_status(self.pipe.interpolate_iter(int(self.a.value), int(self.b.value), k=k,
                                                            mix=self.method.value, seed=seed_of(self.seed),
                                                            steps=self.steps),
                                 self.status, f"generating {k} frames")
        self.generation, self.computed, self.weights = generation, settings, torch.linspace(0, 1, k).tolist()
        self.slider.max, self.slider.disabled = k - 1, False
        show(self.strip_figure(), self.strip_out)
        self.status.value = html.escape(settings)
        self.show_frame(min(self.slider.value, k - 1))
        return self.generation

    def strip_figure(self):
        """Every frame in a row, captioned with its weight (a 2x grid made 64 px frames)."""
        return labelled_grid(self.generation.images, [f"w={w:.2f}" for w in self.weights], ncols=len(self.generation))

    def show_figures(self) -> None:
        """The frames as an ordinary cell output (show_titled), for a rendered notebook; nothing before Compute."""
        if self.generation is not None:
            show_titled([(f"the frames: {self.computed}", self.strip_figure())])

    def show_frame(self, i: int):
        """Display precomputed frame i (no generation); returns it, or None before Compute."""
        if self.generation is None:
            self.status.value = "press Compute frames first"
            return None
        i = max(0, min(int(i), len(self.generation) - 1))
        frame = self.generation.images[i]
        self.frame_out.clear_output(wait=True)
        show(labelled_grid(frame[None], [f"frame {i}, weight {self.weights[i]:.2f}"], ncols=1, cell=160), self.frame_out)
        return frame
