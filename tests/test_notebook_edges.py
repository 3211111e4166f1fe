"""The notebook widgets driven the way a user clicks and types, mistakes included: every refusal or failure says what
to do in the widget's status (an exception in a widget callback is only logged by ipywidgets: the user sees
nothing), no earlier result is left looking like the current settings', and typed input means what it says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gmem_explore.events import Progress
from gmem_explore.notebook import helpers as nbh
from gmem_explore.notebook import remix
from gmem_explore.bank.build import bank_from_images
from gmem_explore.notebook import finetune as nbt


class MeanColourEncoder:
    """A 16-d snippet encoder: the image's mean colour, tiled; records the image sizes it was given."""

    dim = 16

    def __init__(self):
        self.sizes = []

    def encode(self, images):
        x = torch.as_tensor(np.asarray(images))
        self.sizes.append(tuple(x.shape[1:3]))
        x = x.float().reshape(len(x), -1, 3).mean(1) / 255
        return torch.cat([x, 1 - x, x * x, torch.ones(len(x), 7)], dim=1)


@pytest.fixture
def pipe(tiny_pipeline):
    tiny_pipeline.encoder = MeanColourEncoder()
    return tiny_pipeline


@pytest.fixture
def ex(pipe):
    coords = torch.stack([torch.arange(20.0), torch.arange(20.0) % 5], dim=1)  # row i at (i, i % 5)
    return nbh.BankExplorer(pipe, coords, steps=2, k=3)


# ---- the bank explorer ----------------------------------------------------------------------------------------------
def test_an_empty_region_says_so_and_drops_the_previous_neighbours(ex):
    ex.select_region((2.0, 6.0), (0.0, 4.0))
    assert ex.neighbours is not None
    assert ex.select_region((2.2, 2.8), (0.0, 4.0)) == []
    assert ex.status.value == "no mapped rows in this region: widen the map x / map y sliders"
    assert ex.neighbours is None  # the neighbours of a row no longer selected are not kept under an empty selection


def test_typed_rows_take_ranges_drop_repeats_and_refuse_in_plain_words(ex):
    assert ex.select_rows("1-5") == [1, 2, 3, 4, 5]
    assert ex.select_rows("8, 3-4 ,2") == [8, 3, 4, 2]
    assert ex.select_rows("7-5") == [5, 6, 7]  # the same rows as 5-7
    assert ex.select_rows("1, 2, 2, 1") == [1, 2] and ex.status.value == "2 rows typed (2 repeated dropped); showing 2 of 2"
    assert ex.select_rows("4") == [4] and ex.status.value.startswith("1 row typed;")
    # a refusal keeps the selection and says so; a huge range is refused before it is expanded
    for text, said in [("0-99999999999", "row 0-99999999999 is outside the bank (rows 0..19)"),
                       ("-1", "row -1 is outside the bank (rows 0..19)"),
                       ("3.0", "rows must be integers or ranges separated by commas (e.g. 3, 17, 256 or 10-20); got '3.0'")]:
        assert ex.select_rows(text) == [4]
        assert ex.status.value == f"<span style='color:red'>{said}</span> · still selected: 1 row typed; showing 1 of 1"
    assert ex.select_rows("   ") == [4] and ex.status.value.startswith("type row numbers, e.g. 3, 17, 256 or 10-20")
    assert ex.select_rows([1.5]) == [4] and "got '1.5'" in ex.status.value  # was a ValueError from the bank
    assert ex.select_rows(np.array([2, 3])) == [2, 3]
    ex.select_rows("<b>x")  # typed text is shown as text, not as HTML
    assert "got '&lt;b&gt;x'" in ex.status.value and "<b>" not in ex.status.value


def test_a_group_without_mapped_rows_says_why(pipe):
    ex = nbh.BankExplorer(pipe, torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), rows=torch.tensor([0, 3, 6]), steps=2)
    assert ex.select_group("b") == []
    assert ex.status.value == "group b has no rows on the map (it shows 3 of 20 rows): pick another group, or map more rows"


def test_one_selection_at_a_time_so_the_same_choice_can_be_made_again(ex):
    ex.group.value = "b"
    assert ex.selection == [1, 4, 7, 10, 13, 16, 19]
    ex.x_range.value = (0.0, 3.0)
    assert ex.selection == [0, 1, 2, 3] and ex.group.value == "(any)"  # the dropdown no longer claims group b
    ex.group.value = "b"  # picking b again selects it (it used to be no change, so no event: a silent no-op)
    assert ex.selection == [1, 4, 7, 10, 13, 16, 19] and ex.x_range.value == (0.0, 19.0)
    ex.rows_text.value = "2 3"
    assert ex.selection == [2, 3] and ex.group.value == "(any)"
    ex.group.value = "a"
    assert ex.rows_text.value == ""
    ex.rows_text.value = "2 3"  # the same rows typed again
    assert ex.selection == [2, 3]


def test_a_group_chosen_from_code_shows_in_the_dropdown(ex):
    """explorer.select_group("b") (notebook 01 drives the panel from code) selected b while the dropdown said (any)."""
    ex.select_group("b")
    assert ex.group.value == "b" and ex.selection == [1, 4, 7, 10, 13, 16, 19]
    ex.select_rows([2, 3])
    assert ex.group.value == "(any)"
    ex.select_group("c")
    assert ex.group.value == "c" and ex.selection == [2, 5, 8, 11, 14, 17]


def test_the_explorer_keeps_its_pictures_as_readable_figures(ex):
    """What a rendered notebook shows of the panel: the map and, once there are, the selected rows, their
    generations and the neighbours, each image at 128 px (8 px here: 16x) instead of the panel's 72."""
    assert [title for title, _ in ex.figures()] == ["the map (the selection in full colour)"]
    ex.select_group("b")
    ex.generate()
    titles, figures = zip(*ex.figures())
    assert titles[1:] == ("selected rows: group b; showing 7 of 7", "generations, one per selected row, seed 0",
                          f"nearest neighbours of row 1")
    assert all(fig.width >= 7 * 128 and fig.height >= 128 for fig in figures[1:3])  # 7 images in one row
    assert figures[3].width >= 3 * 128  # k = 3 neighbours


@pytest.mark.parametrize("seed", [-1, 2 ** 63, 10 ** 30])
def test_a_bad_seed_is_said_in_the_status_not_raised_into_the_void(ex, seed):
    ex.select_rows("1 2")
    assert ex.generate() is not None
    ex.seed.value = seed
    ex.generate_button.click()  # ipywidgets would only log an exception raised here
    assert ex.status.value == (f"<span style='color:red'>Generate failed: the seed must be a whole number from 0 to "
                               f"2^63 - 1; got {seed}: change the seed box</span>")
    assert ex.generation is None  # the earlier seed's images are not kept as this press's result


def test_stopping_a_generation_says_so_and_keeps_the_interrupt(ex, pipe, monkeypatch):
    ex.select_rows("1 2")

    closed = []

    def interrupted(*args, **kwargs):  # Kernel > Interrupt during the second step
        try:
            yield Progress(1, 2, 0.5, 0, 2, 2, x=None, denoised=None, decode=None)
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    monkeypatch.setattr(pipe, "generate_iter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.generate()
    assert ex.status.value == ("<span style='color:red'>stopped before it finished (2 rows typed; showing 2 of 2 · "
                               "generating 2 images from seed 0, 2 steps: step 1/2, 1/2 images); nothing new is "
                               "shown: press Generate to run it again</span>")
    assert ex.generation is None and closed == [True]


# ---- interpolation --------------------------------------------------------------------------------------------------
def test_interpolator_says_when_the_frames_shown_are_from_earlier_settings(pipe):
    ip = remix.Interpolator(pipe, a=0, b=5, frames=3, steps=2)
    ip.compute()
    assert ip.status.value == "3 frames from row 0 to row 5, slerp, seed 0"
    ip.seed.value = 4
    ip.method.value = "lerp"
    assert ip.status.value == ("showing 3 frames from row 0 to row 5, slerp, seed 0; press Compute frames for "
                               "3 frames from row 0 to row 5, lerp, seed 4")
    ip.slider.value = 2  # browsing the old frames keeps saying whose they are
    assert ip.status.value.startswith("showing 3 frames from row 0 to row 5, slerp, seed 0; press Compute")
    ip.seed.value, ip.method.value = 0, "slerp"  # back to what was computed
    assert ip.status.value == "3 frames from row 0 to row 5, slerp, seed 0"
    ip.seed.value = 1
    ip.compute_button.click()
    assert ip.status.value == "3 frames from row 0 to row 5, slerp, seed 1" and ip.generation.seeds == [1] * 3


def test_interpolator_refuses_one_row_for_both_ends_and_bad_seeds_in_the_status(pipe, monkeypatch):
    ip = remix.Interpolator(pipe, a=3, b=3, frames=3, steps=2)
    calls = []
    generate = pipe.generate
    monkeypatch.setattr(pipe, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    ip.compute_button.click()
    assert calls == [] and ip.generation is None
    assert ip.status.value == ("<span style='color:red'>row a and row b are both 3: every frame would be the same "
                               "image; pick two different rows</span>")
    ip.b.value = 4
    ip.compute()
    assert len(ip.generation) == 3 and not ip.slider.disabled
    ip.seed.value = -1
    ip.compute_button.click()
    assert "the seed must be a whole number from 0 to 2^63 - 1; got -1: change the seed box" in ip.status.value
    assert ip.generation is None and ip.slider.disabled  # the seed-0 frames are not left as this press's result
    assert ip.show_frame(1) is None and ip.status.value == "press Compute frames first"


def test_interpolator_slider_matches_the_frames_box(pipe):
    assert remix.Interpolator(pipe, frames=100, steps=2).slider.max == 63  # the box holds 64 at most


# ---- swapping and mixing ------------------------------------------------------------------------------------------------
def test_swap_reads_the_image_before_the_slow_before_run(pipe, tmp_path, monkeypatch):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    calls = []
    monkeypatch.setattr(pipe, "generate", lambda *a, **k: calls.append(1))
    with pytest.raises(Exception, match="not an image PIL can read"):
        remix.swap_and_compare(pipe, 4, bad, seeds=[0], steps=2, progress=False)
    with pytest.raises(IndexError, match="rows 0..19"):
        remix.swap_and_compare(pipe, 20, np.zeros((8, 8, 3), np.uint8), seeds=[0], steps=2, progress=False)
    assert calls == []  # no generation was spent before the refusal
    with pytest.raises(ValueError, match="seeds is empty"):  # was "indices is empty: give at least one bank row"
        remix.swap_and_compare(pipe, 4, np.zeros((8, 8, 3), np.uint8), seeds=[], steps=2, progress=False)


def test_swap_encodes_the_image_at_the_models_size_not_the_thumbnails(pipe):
    pipe.bank.thumbnails = pipe.bank.thumbnails[:, ::2, ::2].contiguous()  # 4 px thumbnails, an 8 px model
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    edited, snippet = remix.swap_row(pipe, 4, image)
    assert pipe.encoder.sizes == [(8, 8)] and edited.bank.thumbnails.shape[1:3] == (4, 4)
    from gmem_explore.images import load_rgb

    assert torch.allclose(snippet, pipe.snippets_from_images(load_rgb(image, 8)[None]))


def test_mixing_and_sweeps_refuse_empty_inputs_in_plain_words(pipe):
    assert len(remix.mixing_grid(pipe, np.int64(2), torch.tensor(3), (0.0,), steps=2, progress=False)) == 4
    with pytest.raises(ValueError, match="weights is empty"):
        remix.mixing_grid(pipe, 2, 3, (), steps=2, progress=False)
    with pytest.raises(ValueError, match="seeds is empty"):
        remix.seed_sweep(pipe, 2, 3, seeds=[], frames=3, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"frames must be a whole number of at least 2 \(row a, then row b\); got 1"):
        remix.seed_sweep(pipe, 2, 3, seeds=[0], frames=1, steps=2, progress=False)


# ---- training ----------------------------------------------------------------------------------------------------------
def make_trainer(tiny_model, tiny_bank, steps):
    from gmem_explore.train.trainer import TrainConfig, Trainer

    config = TrainConfig(steps=steps, batch_size=4, progress=False, warmup=0)
    return Trainer(tiny_model, tiny_bank.thumbnails, conditions=tiny_bank.rows, config=config, use_accelerate=False)


def test_loss_plot_shows_one_point_and_survives_non_finite_losses():
    monitor = nbt.TrainingMonitor()
    monitor.on_step(None, {"step": 1, "loss": 0.5, "lr": 1e-4})
    (line,) = monitor.loss_figure().axes[0].lines  # one point: no running "mean of 1" drawn over it
    assert line.get_marker() == "o"  # a line through one point draws nothing
    for step, loss in enumerate([float("nan"), 0.4, float("inf"), 0.3], start=2):
        monitor.on_step(None, {"step": step, "loss": loss, "lr": 1e-4})
    ax = monitor.loss_figure().axes[0]
    loss, mean = ax.lines
    assert loss.get_xdata().tolist() == [1, 3, 5] and np.isfinite(mean.get_ydata()).all()  # one NaN blanked the mean
    assert ax.get_title() == "training loss (2 not drawn: not finite or 0)"


def test_monitor_says_when_there_is_nothing_to_train(tiny_model, tiny_bank):
    trainer = make_trainer(tiny_model, tiny_bank, 0)
    monitor = nbt.TrainingMonitor().attach(trainer)
    assert monitor.status.value == "config.steps is 0: trainer.fit() trains nothing; set TrainConfig(steps=...)"
    assert trainer.fit() == []
    assert monitor.status.value == ("nothing to train: already at step 0 of 0 (config.steps); trainer.fit(steps=N) "
                                    "trains N more")


def test_monitor_draws_at_once_and_says_finished_stopped_or_failed(tiny_model, tiny_bank, monkeypatch):
    trainer = make_trainer(tiny_model, tiny_bank, 50)
    monitor = nbt.TrainingMonitor(plot_every=20).attach(trainer)
    assert monitor.status.value == "waiting for trainer.fit(): 0 of 50 steps done"
    drawn = []
    figure = monitor.loss_figure
    monkeypatch.setattr(monitor, "loss_figure", lambda: drawn.append(list(monitor.steps)) or figure())

    def stop_at_3(tr, event):
        if event["step"] == 3:
            raise KeyboardInterrupt

    trainer.on("on_step", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert drawn == [[1], [1, 2, 3]]  # at the first step (not 20 steps in), and at the stop
    assert monitor.status.value == ("stopped at step 3/50: the model keeps what it learned so far; trainer.fit() "
                                    "goes on from there")
    train_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda: train_step() if trainer.step < 4 else (_ for _ in ()).throw(
        FloatingPointError("the loss is nan at step 5: lower lr")))
    with pytest.raises(FloatingPointError):
        trainer.fit()
    assert monitor.status.value == ("<span style='color:red'>training stopped at step 4/50: the loss is nan at step 5: "
                                    "lower lr</span>")
    trainer.step = 49
    monkeypatch.setattr(trainer, "train_step", train_step)
    trainer.fit(steps=2)  # past config.steps: "step 51/50" was said
    assert monitor.status.value.startswith("step 51: loss ") and monitor.status.value.endswith(" · finished")


def test_monitor_updates_its_widgets_a_few_times_a_second():
    """Every status or plot update is a message the front end must process (a headless client too): at 100 steps a
    second the status was written 600 times and the plot drawn 30 times in 6 s, and a headless run of notebook 03
    once hung after its last step. Now at most 4 status lines and one plot every 2 s, the first and last steps
    always, and the status ends on the last step."""
    now = [0.0]
    monitor = nbt.TrainingMonitor(plot_every=20, clock=lambda: now[0])
    monitor.total = 600
    said, drawn = [], []
    monitor.status.observe(lambda change: said.append(change["new"]), names="value")
    monitor.draw_loss = lambda: drawn.append(monitor.steps[-1])
    for step in range(1, 601):
        now[0] += 0.01
        monitor.on_step(None, {"step": step, "loss": 1 / step, "lr": 1e-4})
    assert len(said) <= 6 / 0.25 + 2 and said[0].startswith("step 1/600:") and said[-1].startswith("step 600/600:")
    assert drawn[0] == 1 and drawn[-1] == 600 and len(drawn) <= 6 / 2 + 2
    assert len(monitor.steps) == 600  # every step is recorded for the plot, whether drawn at once or not


def test_monitor_keeps_the_loss_and_samples_as_figures(tiny_model, tiny_bank):
    from gmem_explore.train.trainer import TrainConfig, Trainer

    config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_images=3, eval_steps=2, progress=False, warmup=1)
    trainer = Trainer(tiny_model, tiny_bank.thumbnails, conditions=tiny_bank.rows, config=config, use_accelerate=False)
    monitor = nbt.TrainingMonitor().attach(trainer)
    assert monitor.figures() == []  # nothing before training
    trainer.fit()
    (loss_title, loss), (sample_title, samples) = monitor.figures()
    assert loss_title == "training loss" and sample_title == "samples at step 2 (EMA weights)"
    assert loss.get_size_inches()[0] * loss.dpi >= 600 and samples.width >= 3 * 128


def test_image_folder_keeps_every_image_inside_the_folder(tmp_path):
    images = torch.zeros(3, 4, 4, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="3 images, 2 names and 3 labels"):  # zip cut the third image silently
        nbt.write_image_folder(images, ["a", "b"], [0, 0, 0], ["g"], tmp_path / "x")
    folder = nbt.write_image_folder(images, ["same", "same", ".."], [0, 0, 1], ["g", ".."], tmp_path / "imgs")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written == ["imgs/_/_.png", "imgs/g/same-1.png", "imgs/g/same.png"]  # no overwrite, no escape
    from gmem_explore.data import load_folder

    assert len(load_folder(folder, size=4)) == 3


def test_building_a_bank_from_many_images_shows_progress(tqdm_bars):
    from gmem_explore.data import ImageSet

    bars = tqdm_bars
    images = torch.zeros(5, 4, 4, 3, dtype=torch.uint8)
    data = ImageSet(images, torch.zeros(5, dtype=torch.long), ["g"], [f"i{i}" for i in range(5)])
    assert len(bank_from_images(MeanColourEncoder(), data, batch_size=2, progress=True)) == 5
    assert [(b.desc, b.total, b.n, b.closed) for b in bars] == [("encoding images", 5, 5, True)]
    bank_from_images(MeanColourEncoder(), data, progress=True)  # one batch: no bar
    bank_from_images(MeanColourEncoder(), data, batch_size=2)  # no bar unless asked (the CLI and scripts)
    assert len(bars) == 1


def test_with_bank_takes_a_downloaded_bank_file(pipe, tmp_path):
    """The bank the app's Swap tab downloads is used in a notebook by its path: same model, that bank (and the
    checkpoint's rule for choosing rows, which with_bank used to drop); another model's bank is refused by width."""
    from gmem_explore import MemoryBank

    pipe.choose = "uniform"
    edited = pipe.bank.copy()
    (added,) = edited.add(-pipe.bank.column("rows")[2][None]).tolist()
    edited.save(tmp_path / "tiny-bank-edited.safetensors")
    mine = nbh.with_bank(pipe, tmp_path / "tiny-bank-edited.safetensors")
    assert len(mine.bank) == len(pipe.bank) + 1 and mine.model is pipe.model and mine.choose == "uniform"
    assert torch.equal(mine.bank.snippets([added]), -pipe.bank.snippets([2]))
    assert len(mine.generate(indices=[added], seeds=[0], steps=2)) == 1
    assert nbh.with_bank(pipe, str(tmp_path / "tiny-bank-edited.safetensors")).bank.dim == pipe.bank.dim
    MemoryBank(torch.randn(3, pipe.bank.dim + 1)).save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=rf"snippets have {pipe.bank.dim + 1} values, but .* takes {pipe.bank.dim}"):
        nbh.with_bank(pipe, tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no such bank file"):
        nbh.with_bank(pipe, tmp_path / "missing.safetensors")
