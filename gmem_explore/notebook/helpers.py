"""Helpers behind notebooks/*.ipynb: the fast-mode switch, figures, and the bank explorer widget.

The notebooks stay short: every figure and widget lives here, in code that the tests call directly.
Widget callbacks are plain methods (`select_region`, `select_rows`, `generate`, `compute`, `show_frame`, ...) that
store what they produced on the object (`selection`, `generation`, `frames`), so a test exercises exactly what a
click does, without a browser.

    from gmem_explore.notebook.helpers import fast_mode, BankExplorer
    FAST = fast_mode()            # GMEM_FAST=1: few images, few steps (what the test suite runs)
"""
from __future__ import annotations

import html
import os
import re

import torch

from ..bank.memory import MemoryBank
from ..bank.map2d import scatter_figure, uniform_frequency
from ..events import Finished
from ..pipeline import Generation, GMemPipeline
from .figures import STATIC_COLUMNS, figure_png, labelled_grid, short_label, show, show_titled  # noqa: F401 (re-exported)

MAX_SHOWN = 32  # thumbnails / generations per selection: more is unreadable in a notebook cell
THUMB_COLUMNS = 6  # beside the 600 px map: 6 x ~80 px keeps the explorer inside a notebook's width
WIDGET_CELL = 72  # px per image in the explorer's grids, which sit beside the map


def fast_mode() -> bool:
    """True when the environment variable GMEM_FAST is set to anything but 0/false/no (the tests set 1)."""
    return os.environ.get("GMEM_FAST", "").strip().lower() not in ("", "0", "false", "no")


def with_bank(pipe: GMemPipeline, bank: MemoryBank | str | os.PathLike) -> GMemPipeline:
    """The same model, autoencoder and encoder with another bank (the original pipeline is untouched): a MemoryBank
    or a bank file, such as the edited bank the app's Swap tab downloads:

        mine = with_bank(pipe, "emoji-32-bank-edited.safetensors")
        mine.generate(indices=[1697], seeds=[0, 1, 2, 3])      # the row added in the app

    A bank made for another model is refused, naming both snippet widths (GMemPipeline.with_bank)."""
    return pipe.with_bank(bank)


def with_status(events, status, text: str) -> Generation:
    """Run a pipeline's event stream (generate_iter / interpolate_iter) to its end, writing "text: step k/N, i/n
    images" into an ipywidgets HTML status after every sampler step: a widget's slow button (32 images of 50 steps:
    ~20 s on a CPU, minutes on the released model) says how far it got instead of one unchanging line. An interrupt
    (Kernel > Interrupt) closes the stream, which stops the sampler after the step under way."""
    try:
        for event in events:
            if isinstance(event, Finished):
                return event.generation
            status.value = (f"{text}: step {event.step}/{event.total}, "
                            f"{int(event.images_done)}/{event.images_total} images")
    finally:
        events.close()
    raise RuntimeError("the generation ended without its images")


def rows_said(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def problem(text: str) -> str:
    """A refusal or failure in a widget's HTML status, red and escaped (typed text may hold '<'); guidance is plain."""
    return f"<span style='color:red'>{html.escape(text, quote=False)}</span>"


def seed_of(box) -> int:
    """The seed in an IntText (which takes any integer), checked as generate checks seeds, the box named."""
    if not 0 <= int(box.value) < 2 ** 63:
        raise ValueError(f"the seed must be a whole number from 0 to 2^63 - 1; got {box.value}: change the seed box")
    return int(box.value)


def guarded(status, button: str, fn, *args):
    """Run a button's work: an exception in a widget callback never reaches the cell (ipywidgets only logs it), so a
    refusal or failure becomes a red status line and None; an interrupt says where it stopped and is re-raised."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        last = html.unescape(re.sub("<[^>]*>", "", status.value))
        status.value = problem(f"stopped before it finished ({last}); nothing new is shown: press {button} to run "
                               f"it again")
        raise
    except Exception as e:  # noqa: BLE001 - shown to the user instead of lost in the browser console
        status.value = problem(f"{button} failed: {e}")
        return None


def parse_rows(text: str, n: int) -> list[int]:
    """Typed rows: numbers and inclusive ranges, separated by commas or spaces ("3, 17 256", "10-20"), each in
    0..n-1. ValueError in plain words."""
    rows = []
    for part in text.replace(",", " ").split():
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"rows must be integers or ranges separated by commas (e.g. 3, 17, 256 or 10-20); "
                             f"got {part!r}")
        ends = sorted({int(m[1]), int(m[2] or m[1])})  # "20-10" is the same rows as "10-20"
        if not (0 <= ends[0] and ends[-1] < n):  # checked before a range is expanded: "0-99999999999" stops here
            raise ValueError(f"row {part} is outside the bank (rows 0..{n - 1})")
        rows.extend(range(ends[0], ends[-1] + 1))
    return rows


def with_bar(events, desc: str, enabled: bool = True) -> Generation:
    """Run a pipeline's event stream to its end under a tqdm bar (a widget in Jupyter, text elsewhere) over the
    images of the call, with the sampler step: the notebooks' generating cells otherwise sat silent (the seed
    sweep's 36 images of 50 steps: ~15 s on a CPU, minutes on the released model). `enabled=False`: no bar."""
    bar = None
    try:
        for event in events:
            if isinstance(event, Finished):
                return event.generation
            if not enabled:
                continue
            if bar is None:
                from tqdm.auto import tqdm  # a display dependency, loaded when a bar is first shown

                bar = tqdm(total=event.images_total, desc=desc, unit="image")
            bar.n = int(event.images_done)
            bar.set_postfix_str(f"step {event.step}/{event.total}", refresh=False)
            bar.refresh()
    finally:
        events.close()
        if bar is not None:
            bar.close()
    raise RuntimeError("the generation ended without its images")


# ---- the explorer widget -----------------------------------------------------------------------------------
class BankExplorer:
    """Select bank rows on a 2-D map (a region, a list of rows or a group); see their thumbnails, generations and
    nearest neighbours. `coords[i]` is the map position of bank row `rows[i]`.

    The map is a static matplotlib figure, so selection is by region sliders, a row list or a group; every
    control has continuous_update=False, and generation waits for the Generate button.
    """

    def __init__(self, source: GMemPipeline | MemoryBank, coords, rows=None, steps: int = 50, seed: int = 0, k: int = 8):
        """`source`: a pipeline, or a bare MemoryBank (then everything but Generate works: no model is loaded)."""
        import ipywidgets as W

        self.pipe = None if isinstance(source, MemoryBank) else source
        self.bank = source if isinstance(source, MemoryBank) else source.bank
        self.coords = torch.as_tensor(coords).float()
        self.rows = torch.arange(len(self.coords)) if rows is None else torch.as_tensor(rows).long()
        if len(self.rows) != len(self.coords):
            raise ValueError(f"{len(self.coords)} map points but {len(self.rows)} row indices")
        self.steps, self.k = steps, k
        self.selection: list[int] = []
        self.selection_note = ""  # what the selection is ("group Food & Drink; showing 24 of 210"), for the status
        self.generation: Generation | None = None
        self.neighbours: tuple[torch.Tensor, torch.Tensor] | None = None
        lo, hi = self.coords.min(0).values.tolist(), self.coords.max(0).values.tolist()
        opts = dict(continuous_update=False, readout_format=".1f", layout=W.Layout(width="420px"))
        self.x_range = W.FloatRangeSlider(value=(lo[0], hi[0]), min=lo[0], max=hi[0], step=(hi[0] - lo[0]) / 200 or 0.01,
                                          description="map x", **opts)
        self.y_range = W.FloatRangeSlider(value=(lo[1], hi[1]), min=lo[1], max=hi[1], step=(hi[1] - lo[1]) / 200 or 0.01,
                                          description="map y", **opts)
        self.color_by = W.Dropdown(options=["group", "frequency"], value="group", description="colour by")
        self.rows_text = W.Text(placeholder="rows, e.g. 3, 17, 256 or 10-20", description="rows",
                                continuous_update=False)
        groups = ["(any)"] + (list(self.bank.label_names) if self.bank.label_names else [])
        self.group = W.Dropdown(options=groups, value="(any)", description="group")
        self.seed = W.IntText(value=seed, description="seed")
        self.generate_button = W.Button(description="Generate", button_style="primary")
        self.map_out, self.thumbs_out, self.gen_out, self.nn_out = (W.Output() for _ in range(4))
        self.status = W.HTML()
        self._syncing = False  # set while one selection resets the other controls: their observers stay quiet
        for w in (self.x_range, self.y_range):
            w.observe(lambda _: self._syncing or self.select_region(self.x_range.value, self.y_range.value),
                      names="value")
        self.color_by.observe(lambda _: self.draw_map(), names="value")
        self.rows_text.observe(lambda change: self._syncing or self.select_rows(change["new"]), names="value")
        self.group.observe(lambda change: self._syncing or self.select_group(change["new"]), names="value")
        self.generate_button.on_click(lambda _: self.generate())
        self.widget = W.VBox([
            W.HBox([self.color_by, self.group]), self.x_range, self.y_range,
            W.HBox([self.rows_text, self.seed, self.generate_button]), self.status,
            W.HBox([self.map_out, W.VBox([W.HTML("<b>selected rows</b>"), self.thumbs_out,
                                          W.HTML("<b>generations (one per selected row)</b>"), self.gen_out])]),
            W.HTML("<b>nearest neighbours of the first selected row</b>"), self.nn_out])
        self._box = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
        self.draw_map()

    # each callback below is what one control does; tests call them directly
    def map_figure(self):
        """The map coloured by the dropdown's choice, the selected rows in full colour and the rest faded (rings
        on hundreds of points merged into one red blob that hid the groups), the region as a dashed box."""
        from matplotlib.patches import Rectangle

        # as in the app's Bank tab: equal frequencies (emoji-32's are all 1) would draw one colour under a colour bar
        # from 0.9 to 1.1, and colouring by the other choice would put it under the asked-for title: one colour, and why
        colour, how = None, f"coloured by {self.color_by.value}"
        uniform = uniform_frequency(self.bank)
        if self.color_by.value == "frequency":
            if uniform is None:
                colour = self.bank.column("freq")[self.rows].float()  # the mapped rows only, as stored
            else:
                how = f"{uniform.split(':')[0]}: nothing to colour by"
        elif self.bank.column("labels") is not None:
            colour = self.bank.column("labels")[self.rows]
        else:
            how = "no groups in this bank: nothing to colour by"
        position = {r: i for i, r in enumerate(self.rows.tolist())}
        selected = [position[r] for r in self.selection if r in position]
        fig = scatter_figure(self.coords, colour, self.bank.label_names, selected=selected or None,
                             title=f"{len(self.coords):,} of {len(self.bank):,} rows, {how}")
        if self._box is not None:
            (x0, x1), (y0, y1) = self._box
            fig.axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", ls="--"))
        return fig

    def draw_map(self):
        self.map_out.clear_output(wait=True)
        show(self.map_figure(), self.map_out)

    def select_region(self, x: tuple[float, float], y: tuple[float, float]) -> list[int]:
        """Rows whose map position lies in the box x[0]..x[1] by y[0]..y[1]."""
        inside = ((self.coords[:, 0] >= x[0]) & (self.coords[:, 0] <= x[1]) &
                  (self.coords[:, 1] >= y[0]) & (self.coords[:, 1] <= y[1]))
        self._box = (tuple(x), tuple(y))
        self._reset_others("region")
        empty = "no mapped rows in this region: widen the map x / map y sliders"
        return self._select(self.rows[inside].tolist(), f"{rows_said(int(inside.sum()))} in the region", empty=empty)

    def select_rows(self, rows) -> list[int]:
        """A list of row indices, or text such as "3, 17 256" or "10-20"; bad input gives a message, not a crash,
        and keeps the selection (the status says so)."""
        rows = rows if isinstance(rows, str) else " ".join(map(str, rows.tolist() if hasattr(rows, "tolist") else rows))
        if not rows.strip():  # a list, array or tensor is read as if typed: the same checks apply
            return self._refuse("type row numbers, e.g. 3, 17, 256 or 10-20, then press Enter", plain=True)
        try:
            rows = parse_rows(rows, len(self.bank))
        except ValueError as e:
            return self._refuse(str(e))
        self._box = None
        self._reset_others("rows")
        unique = list(dict.fromkeys(rows))
        repeats = f" ({len(rows) - len(unique)} repeated dropped)" if len(unique) < len(rows) else ""
        return self._select(unique, f"{rows_said(len(unique))} typed{repeats}")

    def select_group(self, name: str) -> list[int]:
        """The mapped rows of one group."""
        if name == "(any)" or self.bank.column("labels") is None:
            return self.selection
        g = list(self.bank.label_names).index(name)
        self._box = None
        self._reset_others("group", group=name)  # a group chosen from code shows in the dropdown too
        empty = (f"group {name} has no rows on the map (it shows {len(self.rows):,} of {len(self.bank):,} rows): "
                 f"pick another group, or map more rows")
        members = self.rows[self.bank.column("labels")[self.rows] == g]
        return self._select(members.tolist(), f"group {name}", one_group=True, empty=empty)

    def _refuse(self, text: str, plain: bool = False) -> list[int]:
        held = f" · still selected: {self.selection_note}" if self.selection else ""
        self.status.value = (html.escape(text) if plain else problem(text)) + html.escape(held)
        return self.selection

    def _reset_others(self, keep: str, group: str = "(any)"):
        """The other selecting controls back to neutral, quietly (a group left shown could not be picked again);
        the group dropdown shows `group` when a group is the selection."""
        self._syncing = True
        try:
            self.group.value = group if keep == "group" else "(any)"
            self.rows_text.value = self.rows_text.value if keep == "rows" else ""
            for r in () if keep == "region" else (self.x_range, self.y_range):
                r.value = (r.min, r.max)
        finally:
            self._syncing = False

    def _select(self, rows: list[int], what: str, one_group: bool = False, empty: str = "") -> list[int]:
        self.selection, self.generation = rows, None
        shown = rows[:MAX_SHOWN]
        # kept apart from the status box, which also shows errors and generation progress: Generate starts from it
        self.selection_note = f"{what}; showing {len(shown)} of {len(rows)}"
        self.status.value = html.escape(self.selection_note if rows else empty or f"{what}: nothing selected")
        for out in (self.thumbs_out, self.gen_out, self.nn_out):
            out.clear_output(wait=bool(shown))
        self.neighbours = self.nearest(shown[0]) if shown else None  # never the previous selection's
        thumbs = self.bank.column("thumbnails")  # read as stored: a bank shared with a copy is never copied
        if shown and thumbs is not None:
            titles = self.captions(shown, group_named=one_group)
            show(labelled_grid(thumbs[shown], titles, ncols=THUMB_COLUMNS, cell=WIDGET_CELL), self.thumbs_out)
        self.draw_map()
        return rows

    def captions(self, rows: list[int], group_named: bool = False) -> list[str]:
        """Captions of the selected thumbnails: the row and its group's first word ("Food" of "Food & Drink":
        Twemoji's nine groups are told apart by it), or the row alone when the status names the one group shown.
        Short captions and 6 columns keep map + grids about 1,100 px wide (full group names made 1,600)."""
        return [f"{r}" if group_named else f"{r} {short_label(self.bank.label_of(r))}".rstrip() for r in rows]

    def nearest(self, row: int):
        """The k rows most similar (cosine) to `row`, itself excluded: (indices, similarities)."""
        idx, sim = self.bank.nearest([row], k=self.k)  # the row itself left out
        self.neighbours, self.neighbours_of = (idx[0], sim[0]), row
        self.nn_out.clear_output(wait=True)
        thumbs = self.bank.column("thumbnails")
        if thumbs is not None:
            titles = [f"{i} cos {s:.2f}" for i, s in zip(*(t.tolist() for t in self.neighbours))]
            show(labelled_grid(thumbs[self.neighbours[0]], titles, ncols=self.k, cell=WIDGET_CELL), self.nn_out)
        return self.neighbours

    def generate(self) -> Generation | None:
        """One image per selected row (at most MAX_SHOWN), all from the seed in the seed box."""
        shown = self.selection[:MAX_SHOWN]
        if not shown:
            self.status.value = "select rows first (a region, a group or a list), then Generate"
            return None
        if self.pipe is None:
            self.status.value = "only a bank is loaded: open the checkpoint with GMemPipeline to generate"
            return None
        self.generation = None  # the grid below is cleared too: no earlier seed's images under this run
        self.gen_out.clear_output()
        return guarded(self.status, "Generate", self._generate, shown)

    def figures(self) -> list[tuple[str, object]]:
        """The panel's pictures at a readable size, as (title, figure): the map, the selected rows' thumbnails,
        their generations and the nearest neighbours (those that exist)."""
        shown, thumbs = self.selection[:MAX_SHOWN], self.bank.column("thumbnails")
        out = [("the map (the selection in full colour)", self.map_figure())]
        grid = lambda images, titles: labelled_grid(images, titles, ncols=min(STATIC_COLUMNS, len(titles)))  # noqa: E731
        if shown and thumbs is not None:
            out.append((f"selected rows: {self.selection_note}", grid(thumbs[shown], self.captions(shown))))
        if self.generation is not None:
            out.append((f"generations, one per selected row, seed {self.generation.seeds[0]}",
                        grid(self.generation.images, [str(r) for r in self.generation.indices])))
        if self.neighbours is not None and thumbs is not None:
            idx, sim = (t.tolist() for t in self.neighbours)
            out.append((f"nearest neighbours of row {self.neighbours_of}",
                        grid(thumbs[idx], [f"{i} cos {v:.2f}" for i, v in zip(idx, sim)])))
        return out

    def show_figures(self) -> None:
        """The panel's pictures as ordinary cell outputs (show_titled), for a rendered notebook."""
        show_titled(self.figures())

    def _generate(self, shown: list[int]) -> Generation:
        before, seed = html.escape(self.selection_note), seed_of(self.seed)
        what = f"{len(shown)} images from seed {seed}, {self.steps} steps"
        self.generation = with_status(self.pipe.generate_iter(indices=shown, seeds=[seed] * len(shown), steps=self.steps),
                                      self.status, f"{before} · generating {what}")
        # the grid's captions are the rows; the seed they share is said here (the seed box may change later)
        self.status.value = f"{before} · generated {what}"
        show(labelled_grid(self.generation.images, [str(r) for r in shown], ncols=THUMB_COLUMNS, cell=WIDGET_CELL),
             self.gen_out)
        return self.generation
