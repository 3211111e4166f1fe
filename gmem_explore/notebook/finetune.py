"""Helpers behind notebooks/03_finetune.ipynb: images to a folder, a live view of training, many GPUs. The bank
of the images is built by gmem_explore.bank.build.bank_from_images.

    write_image_folder(images, names, labels, label_names, folder)   # the layout data.load_folder reads back
    monitor = TrainingMonitor().attach(trainer)              # live loss plot + sample grids through callbacks
    trainer.fit()
    launch_on_all_gpus(finetune_worker, folder, out, 500)     # Accelerate's notebook_launcher, skipped on 1 device
"""
from __future__ import annotations

import copy
import html
import time
from pathlib import Path

import torch

from ..bank.build import bank_from_images
from .helpers import STATIC_COLUMNS, labelled_grid, problem, show, show_titled
from ..data import load_folder
from ..pipeline import GMemPipeline
from ..train.trainer import TrainConfig, Trainer


def _file_part(text: str) -> str:
    """A name usable as one path part: no separators, and never '.' or '..' (which would leave the folder)."""
    text = text.replace(":", "_").replace("/", "-").replace("\\", "-")
    return "_" if text.strip(".") == "" and text else text


def write_image_folder(images, names, labels, label_names, folder) -> Path:
    """Write uint8 images as PNGs under folder/<group>/<name>.png (the layout data.load_folder reads back). One
    name and one label per image (a short list was cut silently); repeated names get -1, -2 ... (one image
    overwrote the other)."""
    from PIL import Image

    folder, images, names, labels = Path(folder), torch.as_tensor(images), list(names), torch.as_tensor(labels).tolist()
    if not len(images) == len(names) == len(labels):
        raise ValueError(f"{len(images)} images, {len(names)} names and {len(labels)} labels: give one name and one "
                         f"label per image")
    outside = sorted({label for label in labels if not 0 <= label < len(label_names)})
    if outside:  # -1 picked the last group without a word; a label past the end failed as a bare IndexError
        raise ValueError(f"labels {outside[:5]} name no group: label_names has {len(label_names)} "
                         f"(labels 0 to {len(label_names) - 1})")
    written = set()
    for img, name, label in zip(images, names, labels):
        group = _file_part(label_names[label])  # a folder per group; the name, spaces and all, is its label
        stem = _file_part(name) or "_"
        path, k = folder / group / f"{stem}.png", 0
        while path in written:
            k += 1
            path = folder / group / f"{stem}-{k}.png"
        written.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.numpy()).save(path)
    return folder


class TrainingMonitor:
    """A live loss curve (redrawn every `plot_every` steps) and the trainer's evaluation grids, in two
    ipywidgets Outputs. The Trainer's own tqdm bar shows progress; attach() registers the callbacks.

    Widget updates are throttled: the status line at most every `status_interval` seconds and the loss plot at most
    every `plot_interval` seconds (the first and last step always). Every update is a message the front end (a
    headless client too) must process, and a plot is a PNG: one of each per step is thousands of messages in a run
    of 10 steps a second (a headless run of notebook 03 once hung after its last step with them). `clock` measures
    the intervals."""

    def __init__(self, plot_every: int = 20, status_interval: float = 0.25, plot_interval: float = 2.0,
                 clock=time.monotonic):
        import ipywidgets as W

        self.plot_every = max(1, int(plot_every))
        self.status_interval, self.plot_interval, self.clock = float(status_interval), float(plot_interval), clock
        self.total: int | None = None
        self._said = self._drawn = float("-inf")  # when the status was last written and the plot last drawn
        self._text = ""  # the latest step's status line, written or not
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.samples: list[tuple[int, torch.Tensor]] = []
        self.loss_out, self.sample_out, self.status, self.sample_title = W.Output(), W.Output(), W.HTML(), W.HTML()
        self.widget = W.HBox([self.loss_out, W.VBox([self.status, self.sample_title, self.sample_out])])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def attach(self, trainer) -> "TrainingMonitor":
        """Register the callbacks; on_end says how the run ended: finished, stopped (Kernel > Interrupt) or failed (a
        non-finite loss), with the loss plot drawn up to the last step."""
        self.total = trainer.config.steps
        self.status.value = (f"waiting for trainer.fit(): {trainer.step} of {self.total} steps done" if self.total else
                             "config.steps is 0: trainer.fit() trains nothing; set TrainConfig(steps=...)")
        trainer.on("on_step", self.on_step)
        trainer.on("on_eval", self.on_eval)
        trainer.on("on_end", lambda tr, event: self.finish(tr, event["error"], event["steps"]))
        return self

    def _of(self, step: int) -> str:
        return f"/{self.total}" if self.total and step <= self.total else ""

    def on_step(self, trainer, event: dict) -> None:
        step, now = int(event["step"]), self.clock()
        self.steps.append(step)
        self.losses.append(float(event["loss"]))
        self._text = (f"step {step}{self._of(step)}: loss {event['loss']:.4f}, lr {event['lr']:.2e}, "
                      f"{event.get('images_per_s', 0):.0f} images/s")
        edge = len(self.steps) == 1 or step == self.total  # the first step too: the cell was empty for ~20 s
        if edge or now - self._said >= self.status_interval:
            self.status.value, self._said = self._text, now
        if edge or (step % self.plot_every == 0 and now - self._drawn >= self.plot_interval):
            self.draw_loss()
            self._drawn = now

    def draw_loss(self) -> None:
        self.loss_out.clear_output(wait=True)
        show(self.loss_figure(), self.loss_out)

    def finish(self, trainer, error: BaseException | None, steps_done: int = 0) -> None:
        """What the end of a fit call says in the status (the trainer's on_end event); the plot is redrawn with every
        step recorded."""
        step = trainer.step
        if self.steps:
            self.draw_loss()
        if isinstance(error, KeyboardInterrupt):
            self.status.value = html.escape(f"stopped at step {step}{self._of(step)}: the model keeps what it "
                                            f"learned so far; trainer.fit() goes on from there")
        elif error is not None:
            self.status.value = problem(f"training stopped at step {step}{self._of(step)}: {error}")
        elif not steps_done:
            self.status.value = html.escape(f"nothing to train: already at step {step} of {self.total} "
                                            f"(config.steps); trainer.fit(steps=N) trains N more")
        else:
            self.status.value = f"{self._text} · finished"

    def on_eval(self, trainer, event: dict) -> None:
        images = event["images"]
        self.samples.append((int(event["step"]), images))
        # the grid stays up while training goes on (600 steps, a grid every 100): it says which step drew it
        seeds = event["seeds"]
        self.sample_title.value = (f"samples at step {event['step']} (EMA weights; seeds {seeds[0]}–{seeds[-1]} and "
                                   f"the same conditions at every evaluation)")
        self.sample_out.clear_output(wait=True)
        titles = self.sample_titles = [f"seed {s}" for s in event["seeds"]]
        show(labelled_grid(images, titles, ncols=min(8, len(images)), cell=64), self.sample_out)

    def figures(self) -> list[tuple[str, object]]:
        """The loss curve and the latest sample grid at a readable size, as (title, figure)."""
        out = [("training loss", self.loss_figure())] if self.steps else []
        if self.samples:
            step, images = self.samples[-1]
            out.append((f"samples at step {step} (EMA weights)",
                        labelled_grid(images, self.sample_titles, ncols=min(STATIC_COLUMNS, len(images)))))
        return out

    def show_figures(self) -> None:
        """The loss curve and the latest samples as ordinary cell outputs (show_titled), for a rendered notebook."""
        show_titled(self.figures())

    def loss_figure(self):
        """Loss per step and its running mean (window 20), log scale."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 3.5), dpi=100)
        ax = fig.subplots()
        loss, steps = torch.tensor(self.losses, dtype=torch.float64), torch.tensor(self.steps)
        ok = torch.isfinite(loss) & (loss > 0)  # a log axis shows neither NaN, inf nor 0, and one NaN blanked the mean
        loss, steps, title = loss[ok], steps[ok], "training loss"
        if len(loss):
            # one step is one point: a line through it is invisible without a marker
            ax.plot(steps.numpy(), loss.numpy(), lw=0.6, alpha=0.5, label="loss", marker="o" if len(loss) < 3 else None)
            window = min(20, len(loss))
            if window > 1:
                smooth = torch.nn.functional.avg_pool1d(loss[None, None], window, 1)[0, 0]
                ax.plot(steps[window - 1:].numpy(), smooth.numpy(), lw=1.5, label=f"mean of {window}")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        if not ok.all():
            title += f" ({int((~ok).sum())} not drawn: not finite or 0)"
        ax.set(xlabel="step", ylabel="velocity MSE", title=title)
        fig.tight_layout()
        return fig


def finetune_worker(pipe_name, folder, out_dir, steps: int, batch_size: int = 64, lr: float = 2e-4) -> None:
    """One process of a multi-GPU fine-tune (what notebook_launcher runs on every GPU): load the checkpoint, read
    the image folder, build its bank, train with Accelerate (batches split across processes), export on the main
    process. Module-level so the launcher can start it in each process."""

    pipe = GMemPipeline.from_pretrained(pipe_name)
    data = load_folder(folder, size=pipe.model.config.input_size)
    bank = bank_from_images(pipe.encoder, data, progress=False)  # one bar per process would be noise
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(50, steps), progress=False)
    trainer = Trainer(copy.deepcopy(pipe.model), data.images, conditions=bank.column("rows")[:], config=config,
                      use_accelerate=True)
    trainer.fit()
    trainer.export(out_dir, bank, pipe.encoder, sampler=pipe.sampler, info={"name": "finetuned", "images": str(folder)})


def launch_on_all_gpus(fn, *args, num_processes: int | None = None) -> bool:
    """Run fn(*args) on every CUDA device through Accelerate's notebook_launcher; with fewer than two devices,
    say so and return False (one device trains fine in the cells above)."""
    n = torch.cuda.device_count() if num_processes is None else int(num_processes)
    if n < 2:
        print(f"skipped: {n} CUDA device{'s' if n != 1 else ''} here. With several GPUs this cell runs the same "
              f"fine-tune on all of them (restart the kernel first: CUDA must not be initialised before forking).")
        return False
    from accelerate import notebook_launcher

    notebook_launcher(fn, args=args, num_processes=n)
    return True
