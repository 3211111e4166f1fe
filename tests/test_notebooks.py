"""The notebooks: helper widgets exercised by calling their callbacks, every notebook executed in fast mode,
outputs stripped in git, and JupyterLab serving /lab."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from gmem_explore.notebook import bank_figures
from gmem_explore.notebook import helpers as nbh
from gmem_explore.notebook import remix
from gmem_explore.bank.build import bank_from_images
from gmem_explore.notebook import finetune as nbt

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


class FakeEncoder:
    """A deterministic 16-d snippet encoder for the tiny pipeline: the image's mean colour, tiled."""

    dim = 16

    def encode(self, images):
        x = torch.as_tensor(np.asarray(images)).float().reshape(len(images), -1, 3).mean(1) / 255
        return torch.cat([x, 1 - x, x * x, torch.ones(len(x), 7)], dim=1)


@pytest.fixture
def pipe(tiny_pipeline):
    tiny_pipeline.encoder = FakeEncoder()
    return tiny_pipeline


# ---- helpers, called the way the widgets call them ------------------------------------------------------------
def test_fast_mode_reads_the_environment(monkeypatch):
    for value, expected in [("1", True), ("yes", True), ("0", False), ("", False), ("false", False)]:
        monkeypatch.setenv("GMEM_FAST", value)
        assert nbh.fast_mode() is expected
    monkeypatch.delenv("GMEM_FAST")
    assert nbh.fast_mode() is False


def test_bank_explorer_callbacks(pipe):
    coords = torch.stack([torch.arange(20.0), torch.arange(20.0) % 5], dim=1)
    ex = nbh.BankExplorer(pipe, coords, steps=2, k=3)
    assert ex.generate() is None and "select rows first" in ex.status.value
    assert ex.select_region((2.0, 6.0), (0.0, 4.0)) == [2, 3, 4, 5, 6]
    assert len(ex.neighbours[0]) == 3 and 2 not in ex.neighbours[0].tolist()
    statuses = []
    ex.status.observe(lambda change: statuses.append(change["new"]), names="value")
    gen = ex.generate()
    assert gen.indices == [2, 3, 4, 5, 6] and gen.seeds == [0] * 5 and gen.images.shape == (5, 8, 8, 3)
    # the slow step says how far it got, and the grid's shared seed (its captions are the rows) stays said
    assert statuses[:2] == ["5 rows in the region; showing 5 of 5 · generating 5 images from seed 0, 2 steps: "
                            f"step {k}/2, {5 * k // 2}/5 images" for k in (1, 2)]
    assert ex.status.value == "5 rows in the region; showing 5 of 5 · generated 5 images from seed 0, 2 steps"
    ex.seed.value = 7
    ex.status.value = "5 rows in the region; showing 5 of 5 · generating 5 images from seed 0, 2 steps: step 1/2"
    ex.generate()  # after an interrupted run too, the note replaces the last one
    assert ex.status.value == "5 rows in the region; showing 5 of 5 · generated 5 images from seed 7, 2 steps"
    assert ex.select_rows("7, 9 11") == [7, 9, 11]
    assert ex.select_rows("7, x") == [7, 9, 11] and "integers" in ex.status.value
    assert ex.select_rows([3, 99]) == [7, 9, 11] and "outside the bank" in ex.status.value
    ex.generate()  # after a refused entry the status names the selection still held, not the refusal
    assert ex.status.value == "3 rows typed; showing 3 of 3 · generated 3 images from seed 7, 2 steps"
    assert ex.select_group("b") == [i for i in range(20) if i % 3 == 1]
    assert ex.captions([0, 1], group_named=True) == ["0", "1"]  # the status names the group
    assert ex.captions([0, 1]) == ["0 a", "1 b"]
    assert nbh.short_label("Food & Drink") == "Food" and nbh.short_label("Smileys & Emotion") == "Smileys"
    ex.color_by.value = "frequency"  # redraws the map through the observer
    fig = ex.map_figure()
    assert len(fig.axes) == 2  # the scatter and its frequency colour bar
    alphas = [a for c in fig.axes[0].collections for a in (c.get_alpha(),) if a is not None]
    assert min(alphas) < 0.5  # rows outside the selection are faded, not the selection ringed
    # the widgets drive the same callbacks
    ex.rows_text.value = "0 1"
    assert ex.selection == [0, 1]
    ex.generate_button.click()
    assert ex.generation.indices == [0, 1]


def test_explorer_on_a_bare_bank_selects_but_does_not_generate(tiny_bank):
    ex = nbh.BankExplorer(tiny_bank, torch.randn(20, 2), steps=2)
    assert ex.select_rows([1, 2]) == [1, 2] and len(ex.neighbours[0]) == 8
    assert ex.generate() is None and "only a bank" in ex.status.value


def test_explorer_map_says_when_there_is_nothing_to_colour_by(tiny_bank):
    """Equal frequencies (emoji-32's are all 1) drew one colour under a colour bar from 0.9 to 1.1; a bank without
    the asked-for values was coloured by the other under the asked-for title. As in the app: one colour, and why."""
    MemoryBank = type(tiny_bank)
    equal = MemoryBank(tiny_bank.rows, torch.ones(20), tiny_bank.labels, tiny_bank.label_names)
    no_freq = MemoryBank(tiny_bank.rows, None, tiny_bank.labels, tiny_bank.label_names)
    for bank, why in ((equal, "all rows have frequency 1"), (no_freq, "this bank has no frequencies")):
        ex = nbh.BankExplorer(bank, torch.randn(20, 2))
        ex.color_by.value = "frequency"
        fig = ex.map_figure()
        assert len(fig.axes) == 1  # no colour bar
        assert fig.axes[0].get_title() == f"20 of 20 rows, {why}: nothing to colour by"
        assert not fig.axes[0].get_legend()  # nor group colours under the frequency choice
    ex = nbh.BankExplorer(MemoryBank(tiny_bank.rows), torch.randn(20, 2))  # no labels: "group" has nothing
    assert ex.map_figure().axes[0].get_title() == "20 of 20 rows, no groups in this bank: nothing to colour by"


def test_explorer_on_a_subsampled_map_only_selects_mapped_rows(pipe):
    rows = torch.tensor([1, 5, 9])
    ex = nbh.BankExplorer(pipe, torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), rows=rows, steps=2)
    assert ex.select_region((0.5, 2.5), (0.5, 2.5)) == [5, 9]
    with pytest.raises(ValueError, match="3 map points but 2 row indices"):
        nbh.BankExplorer(pipe, torch.zeros(3, 2), rows=[1, 2])


def test_bank_figures_and_neighbour_agreement(pipe, tiny_bank):
    fig = bank_figures.frequency_figure(tiny_bank)
    assert len(fig.axes) == 2 and nbh.figure_png(fig).startswith(b"\x89PNG")
    agreement = bank_figures.neighbour_agreement(tiny_bank, k=3)
    assert set(agreement) == {"a", "b", "c"}
    for score, chance, count in agreement.values():
        assert 0 <= score <= 1 and 0 < chance < 1 and count in (6, 7)
    # rows that are copies of their group's centre agree perfectly
    centres = torch.eye(16)[:3]
    clustered = type(tiny_bank)(centres[torch.arange(12) % 3] + 0.01 * torch.randn(12, 16), labels=torch.arange(12) % 3,
                                label_names=["x", "y", "z"])
    assert all(score == 1.0 for score, _, _ in bank_figures.neighbour_agreement(clustered, k=3).values())
    assert bank_figures.group_similarity_figure(clustered).axes
    with pytest.raises(ValueError, match="labels"):
        bank_figures.neighbour_agreement(type(tiny_bank)(torch.randn(4, 16)))


def test_swap_changes_only_the_edited_copy(pipe):
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    original = pipe.bank.rows[4].clone()
    before, after, edited = remix.swap_and_compare(pipe, 4, red, seeds=[1, 2], steps=3)
    assert torch.equal(pipe.bank.rows[4], original)  # the original bank is untouched
    assert torch.allclose(edited.bank.snippets([4]), pipe.snippets_from_images(red[None]), atol=1e-6)
    assert edited.bank.thumbnails[4, 0, 0].tolist() == [255, 0, 0]
    assert before.seeds == after.seeds == [1, 2] and not torch.equal(before.images, after.images)
    assert remix.swap_figure(pipe, edited, 4, before, after).size[0] > 3 * 64
    pipe.encoder = None
    with pytest.raises(RuntimeError, match="no snippet encoder"):
        remix.swap_row(pipe, 4, red)


def test_mixing_grid_and_seed_sweep_share_seeds(pipe):
    weights = (0.0, 0.5, 1.0)
    gen = remix.mixing_grid(pipe, 0, 1, weights, seed=7, steps=2)
    assert len(gen) == 12 and set(gen.seeds) == {7}
    # weight 0 is row a for every method, so those four images are identical
    firsts = gen.images[::3]
    assert all(torch.equal(firsts[0], f) for f in firsts[1:])
    assert remix.mixing_figure(gen, weights).size[1] > 4 * 64  # four rows, one per method
    sweep = remix.seed_sweep(pipe, 0, pipe.bank.rows[1], seeds=[3, 4], frames=3, steps=2)
    assert sweep.seeds == [3, 3, 3, 4, 4, 4]
    assert remix.seed_sweep_figure(sweep, [3, 4], 3).size[1] > 2 * 64


class FakeBar:
    """Records what a tqdm bar is told."""

    made: list = []

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.n, self.steps, self.closed = total, desc, 0, [], False
        FakeBar.made.append(self)

    def set_postfix_str(self, text, refresh=True):
        self.steps.append(text)

    def refresh(self):
        pass

    def close(self):
        self.closed = True


def test_remix_cells_show_a_progress_bar(pipe, monkeypatch):
    """The generating cells of 02_remix sat silent (the seed sweep: 36 images of 50 steps, ~15 s on a CPU)."""
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    FakeBar.made = []
    remix.mixing_grid(pipe, 0, 1, (0.0, 1.0), steps=2)
    (bar,) = FakeBar.made
    assert (bar.desc, bar.total, bar.n, bar.steps, bar.closed) == ("mixing", 8, 8, ["step 1/2", "step 2/2"], True)
    FakeBar.made = []
    remix.seed_sweep(pipe, 0, 1, seeds=[3], frames=3, steps=2)
    remix.swap_and_compare(pipe, 4, np.zeros((20, 20, 3), np.uint8), seeds=[1, 2], steps=2)
    assert [(b.desc, b.total, b.n, b.closed) for b in FakeBar.made] == [
        ("seed sweep", 3, 3, True), ("row 4 before", 2, 2, True), ("row 4 after", 2, 2, True)]
    FakeBar.made = []
    remix.mixing_grid(pipe, 0, 1, (0.0, 1.0), steps=2, progress=False)
    assert FakeBar.made == []


def test_interpolator_precomputes_and_slider_only_shows(pipe, monkeypatch):
    ip = remix.Interpolator(pipe, a=0, b=5, frames=4, steps=2)
    assert ip.show_frame(0) is None and "Compute" in ip.status.value
    statuses = []
    ip.status.observe(lambda change: statuses.append(change["new"]), names="value")
    ip.compute_button.click()
    assert statuses[:2] == ["generating 4 frames: step 1/2, 2/4 images", "generating 4 frames: step 2/2, 4/4 images"]
    assert len(ip.generation) == 4 and ip.generation.seeds == [0] * 4 and ip.slider.max == 3
    calls = []
    monkeypatch.setattr(pipe, "generate", lambda *a, **k: calls.append(1))
    ip.slider.value = 3  # dragging the slider shows a stored frame and never generates
    assert calls == []
    assert torch.equal(ip.show_frame(3), ip.generation.images[3])
    assert torch.equal(ip.show_frame(99), ip.generation.images[3])



# ---- fine-tuning helpers ------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model, tiny_bank):
    """The tiny model with a real (small, untrained) ConvEncoder, saved as a checkpoint folder."""
    from gmem_explore import Checkpoint, save_checkpoint
    from gmem_explore.encoders.conv import ConvEncoder

    torch.manual_seed(0)
    encoder = ConvEncoder(dim=16, image_size=8, widths=(16, 16, 16), head_channels=8).eval()
    return save_checkpoint(tmp_path / "tiny", Checkpoint(tiny_model, tiny_bank, {"type": "pixels"}, encoder,
                                                         {"method": "euler", "steps": 2}))


def test_image_folder_round_trip_and_bank(tmp_path, tiny_checkpoint):
    from gmem_explore import GMemPipeline
    from gmem_explore.data import load_folder

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 8, 8, 3), generator=g, dtype=torch.uint8)
    folder = nbt.write_image_folder(images, [f"e{i}:x" for i in range(5)], [0, 1, 0, 1, 1], ["Smileys & Emotion", "b/c"],
                                    tmp_path / "imgs")
    data = load_folder(folder, size=8)
    assert len(data) == 5 and sorted(data.label_names) == ["Smileys & Emotion", "b-c"]
    assert sorted(map(tuple, data.images.reshape(5, -1)[:, :3].tolist())) == sorted(map(tuple, images.reshape(5, -1)[:, :3].tolist()))
    pipe = GMemPipeline.from_pretrained(str(tiny_checkpoint))
    bank = bank_from_images(pipe.encoder, data)
    assert len(bank) == 5 and bank.dim == 16 and torch.equal(bank.thumbnails, data.images)
    assert torch.allclose(bank.snippets([2]), pipe.snippets_from_images(data.images[2:3]), atol=1e-5)
    with pytest.raises(RuntimeError, match="encoder"):
        bank_from_images(None, data)


def test_training_monitor_records_through_trainer_callbacks(tiny_model, tiny_bank):
    from gmem_explore.train.trainer import TrainConfig, Trainer

    config = TrainConfig(steps=4, batch_size=4, eval_every=2, eval_images=3, eval_steps=2, progress=False, warmup=1)
    trainer = Trainer(tiny_model, tiny_bank.thumbnails, conditions=tiny_bank.rows, config=config, use_accelerate=False)
    monitor = nbt.TrainingMonitor(plot_every=2).attach(trainer)
    trainer.fit()
    assert monitor.steps == [1, 2, 3, 4] and all(np.isfinite(monitor.losses))
    assert [step for step, _ in monitor.samples] == [2, 4] and monitor.samples[0][1].shape == (3, 8, 8, 3)
    assert monitor.status.value.startswith("step 4/4: loss ")  # how far, of how many
    assert monitor.sample_title.value.startswith("samples at step 4 ")  # the grid says which step drew it
    assert len(monitor.loss_figure().axes[0].lines) == 2  # the loss and its running mean


def test_multi_gpu_cell_skips_on_one_device_and_launches_on_several(monkeypatch, capsys):
    import accelerate

    calls = []
    monkeypatch.setattr(accelerate, "notebook_launcher", lambda fn, args, num_processes: calls.append((fn, args, num_processes)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert nbt.launch_on_all_gpus(print, "x") is False and "skipped: 1 CUDA device here" in capsys.readouterr().out
    assert calls == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert nbt.launch_on_all_gpus(print, "x", 3) is True
    assert calls == [(print, ("x", 3), 4)]


def test_finetune_worker_trains_and_exports_a_loadable_checkpoint(tmp_path, tiny_checkpoint):
    """What each GPU process runs, here as the single CPU process of an Accelerator."""
    from gmem_explore import GMemPipeline

    images = torch.randint(0, 256, (6, 8, 8, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    folder = nbt.write_image_folder(images, [f"i{i}" for i in range(6)], [0] * 6, ["g"], tmp_path / "imgs")
    nbt.finetune_worker(str(tiny_checkpoint), folder, tmp_path / "out", steps=2, batch_size=2)
    tuned = GMemPipeline.from_pretrained(str(tmp_path / "out"))
    assert len(tuned.bank) == 6 and tuned.info["training"]["steps"] == 2
    assert tuned.generate(indices=[0, 5], seeds=[1, 2], steps=2).images.shape == (2, 8, 8, 3)


# ---- the notebooks themselves -----------------------------------------------------------------------------------
def test_there_are_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_bank_explorer.ipynb", "02_remix.ipynb", "03_finetune.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_outputs_are_stripped(path):
    book = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(book["cells"]) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; run `python scripts/strip_notebooks.py`"
    # the fast-mode switch is read in the first code cell, which is tagged as papermill's parameters cell
    first = next(c for c in book["cells"] if c["cell_type"] == "code")
    assert "fast_mode()" in "".join(first["source"]) and "parameters" in first["metadata"].get("tags", [])


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    """One cache folder for every notebook run: Twemoji is decoded once, maps are fitted fresh."""
    return tmp_path_factory.mktemp("gmem-cache")


def run_notebook(path, kernel_cache, monkeypatch, tmp_path, settings: dict | None = None,
                 messages: dict | None = None):
    """Execute a notebook in fast mode on the embedded default; `settings` NAME -> value are typed over the
    notebook's `NAME = ...` lines, as a user edits them. Returns the executed notebook, after checking no cell
    failed. `messages`, a dict, receives {cell index: [(message type, the widget value it sets or "")]} of the
    kernel messages the client processed for each cell."""
    import nbformat
    from nbclient import NotebookClient

    class Client(NotebookClient):
        def process_message(self, msg, cell, cell_index):
            if messages is not None:
                value = msg["content"].get("data", {}).get("state", {}).get("value") if msg["msg_type"] == "comm_msg" \
                    else None
                messages.setdefault(cell_index, []).append((msg["msg_type"], value if isinstance(value, str) else ""))
            return super().process_message(msg, cell, cell_index)

    # the kernel inherits this environment: fast mode, the package importable from the checkout, a private cache,
    # and the embedded default (a GMEM_CHECKPOINT left in the environment would point the notebooks elsewhere)
    monkeypatch.delenv("GMEM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GMEM_FAST", "1")
    monkeypatch.setenv("GMEM_CACHE", str(kernel_cache))
    monkeypatch.setenv("GMEM_OUTPUT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        for name, value in (settings or {}).items():
            cell.source = re.sub(rf"^{name} = \S+", f"{name} = {value}", cell.source, flags=re.M)
    client = Client(book, timeout=240, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    return book


def printed_by(book) -> str:
    return "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


# A notebook rendered without its kernel (GitHub, nbviewer, an HTML export) shows cell outputs, not widgets: the cells
# that hold widgets also keep their pictures as PNG outputs, this many in the cell whose source holds the key.
STATIC_FIGURES = {
    # the map, thumbnails, generations, neighbours; the interactive map's selection and its static twin
    "01_bank_explorer": {"explorer.show_figures()": 4, "bank_map.thumbnails_figure()": 1, "bank_map.figure(": 1},
    "02_remix": {"swap_figure(": 1, "interp.show_figures()": 1, "mixing_figure(": 1, "seed_sweep_figure(": 1},
    "03_finetune": {"monitor.show_figures()": 2, "labelled_grid(torch.cat": 1},  # loss + samples; the comparison
}
# Every PNG a notebook keeps is at least this size (px), in fast mode too: 128 px per 32 px image in a grid of three
# (notebook 02's figures were 232 x 168 px in fast mode, 380 x 160 px in full, with 10 px captions)
READABLE = (384, 150)


def png_sizes(outputs) -> list[tuple[int, int]]:
    """(width, height) of each image/png output, read from the PNG's IHDR chunk."""
    import base64

    sizes = []
    for o in outputs:
        if "image/png" in o.get("data", {}):
            head = base64.b64decode(o["data"]["image/png"])[:24]
            sizes.append((int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")))
    return sizes


def check_static_figures(book, name: str, wanted: dict[str, int]) -> None:
    code = [c for c in book.cells if c.cell_type == "code"]
    every = [size for c in code for size in png_sizes(c.outputs)]
    assert every, f"{name} displayed no picture"
    small = [size for size in every if size[0] < READABLE[0] or size[1] < READABLE[1]]
    assert not small, f"{name}: pictures of {small} px, smaller than {READABLE}"
    for key, count in wanted.items():
        (cell,) = [c for c in code if key in c.source]
        assert len(png_sizes(cell.outputs)) >= count, f"{name}: the cell with {key} keeps fewer than {count} PNGs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, kernel_cache, monkeypatch, tmp_path):
    book = run_notebook(path, kernel_cache, monkeypatch, tmp_path)
    check_static_figures(book, path.name, STATIC_FIGURES[path.stem])
    printed = printed_by(book)
    if path.stem == "01_bank_explorer":  # the interactive map is displayed headless too, and synced to Python
        (cell,) = [c for c in book.cells if c.cell_type == "code" and "bank_scatter(bank" in c.source]
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs)
        assert re.search(r"\d+ rows selected on the map: \[\d+", printed)
        assert re.search(r"nearest neighbours of row \d+: \[[\d, ]+\] \(cosine", printed)
    if path.stem == "02_remix":  # the mixing figure's images share one seed, said under it
        assert re.search(r"every image: seed \d+, \d+ \w+ steps", printed)
    if path.stem == "03_finetune":  # the measuring cell prints one line per model
        assert re.search(r"default +FD +[\d.]+ +near copies", printed) and re.search(r"fine-tuned +FD +[\d.]+", printed)


@pytest.mark.slow
def test_finetune_notebook_ends_headless_with_few_widget_messages(kernel_cache, monkeypatch, tmp_path):
    """Notebook 03 once hung headless after its last training step (600/600, the kernel idle, the client waiting 28
    minutes). Here 40 steps under a per-cell timeout (so a hang fails the test instead of stalling it): the run
    ends, and the monitor's widget messages are a few per second of training, not several per step: its status at
    most 4 a second, its loss plot (clear + display) at most one per 2 s besides the first, the last and the sample
    grids. Fast mode draws the plot at every step it may (plot_every 1): 80 plot messages in 40 steps before."""
    messages = {}
    book = run_notebook(ROOT / "notebooks" / "03_finetune.ipynb", kernel_cache, monkeypatch, tmp_path,
                        {"TRAIN_STEPS": "40", "EVAL_EVERY": "20"}, messages)
    assert "40 steps, last loss" in printed_by(book)
    index, fit = next((i, c) for i, c in enumerate(book.cells) if "trainer.fit()" in c.source)
    timing = fit.metadata["execution"]
    seconds = (np.datetime64(timing["shell.execute_reply"][:26]) -
               np.datetime64(timing["iopub.execute_input"][:26])) / np.timedelta64(1, "s")
    said = [value for kind, value in messages[index] if kind == "comm_msg" and value.startswith("step ")]
    plots = [kind for kind, _ in messages[index] if kind in ("clear_output", "display_data")]
    assert said[-1].startswith("step 40/40:") and len(said) <= 4 * seconds + 3, (len(said), seconds)
    # 2 messages a plot: one per 2 s, + first, last step, end of fit, 2 sample grids; + show_figures, tqdm's bar
    assert len(plots) <= seconds + 2 * 5 + 3, (len(plots), seconds)


def test_bank_explorer_notebook_runs_on_a_bank_alone(kernel_cache, monkeypatch, tmp_path):
    """BANK_ONLY = True (the released bank on a laptop: no model loaded): every cell runs, the explorer selects and
    shows neighbours, and Generate says a model is needed instead of failing."""
    book = run_notebook(ROOT / "notebooks" / "01_bank_explorer.ipynb", kernel_cache, monkeypatch, tmp_path,
                        {"BANK_ONLY": "True"})
    printed = printed_by(book)
    assert "rows selected; nearest neighbours of row" in printed and "generated rows" not in printed
    check_static_figures(book, "01_bank_explorer", {"explorer.show_figures()": 3})  # no generations


def test_strip_script_removes_outputs(tmp_path):
    import nbformat

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import strip_notebooks
    finally:
        sys.path.pop(0)
    book = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in book.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", text="hello")]
    cell.execution_count = 3
    cell.metadata["execution"] = {"iopub.status.busy": "2026-11-27T11:00:00Z"}
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(book, dirty)
    assert strip_notebooks.main(["--check", str(dirty)]) == 1
    assert strip_notebooks.main([str(dirty)]) == 0
    cleaned = nbformat.read(dirty, as_version=4)
    first = next(c for c in cleaned.cells if c.cell_type == "code")
    assert first.outputs == [] and first.execution_count is None and first.metadata == {"tags": ["parameters"]}
    assert strip_notebooks.main(["--check", str(dirty)]) == 0


def test_make_notebooks_serves_lab_as_documented(tmp_path):
    """`make notebooks`, the documented command, starts JupyterLab on notebooks/ and answers GET /lab with 200, run
    as root too (containers, CI: `jupyter lab notebooks/` refused to start there without --allow-root), then stops.
    `-o .venv/.installed`: the installed environment is taken as it is (this test must not reinstall it)."""
    import signal

    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    options = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token= --ServerApp.port_retries=0"
    cmd = ["make", "-s", "-o", ".venv/.installed", "notebooks", f"PY={sys.executable}", f"NOTEBOOK_ARGS={options}"]
    # a session of its own: make and the JupyterLab it starts are stopped together
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline, status, body = time.monotonic() + 60, None, b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=5) as response:
                    status, body = response.status, response.read()
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
        assert status == 200 and b"JupyterLab" in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5) as response:
            names = {item["name"] for item in json.load(response)["content"]}
        assert {p.name for p in NOTEBOOKS} <= names  # it serves notebooks/
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
