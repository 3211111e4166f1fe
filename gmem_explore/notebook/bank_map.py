"""The whole bank as an interactive scatter in a notebook (jupyter-scatter, WebGL): pan, zoom, lasso, a tooltip with
the row's number, group and thumbnail; the selection synced to Python both ways.

    bank_map = bank_scatter(bank)                      # every row (whole_map, cached), coloured by group
    bank_map.on_select(lambda rows: print(rows))       # called with bank rows when the user lasso-selects
    bank_map.show()                                    # the widget (display it, or end a cell with it)
    bank_map.selected_rows                             # the selection as bank rows (a long tensor)
    bank_map.select([3, 17]); bank_map.highlight_neighbours(3, k=8)

A map point is not always a bank row (rows holding NaN are on no map; without faiss, banks larger than max_rows
are mapped through embed_2d's subsample): `rows[i]` is the bank row of point i. Every method here speaks bank rows; the widget's `selection` trait holds point
indices. The widget needs a live kernel; `figure()` draws the same map (selection in colour, highlights ringed) as
a static matplotlib figure, which a notebook rendered without its kernel still shows.
"""
from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import numpy as np
import torch

from ..bank.map2d import embed_2d, scatter_figure
from ..bank.whole_map import whole_map
from ..bank.memory import MemoryBank
from .figures import STATIC_COLUMNS, labelled_grid, short_label

INSTALL = 'pip install "gmem-explore[notebooks]"'
COLOR_BY = ("group", "frequency", "cluster")
PREVIEW_PX = 96  # tooltip thumbnails are upscaled (nearest) to this: a 32 px emoji blurs when the browser scales it
MAX_LEGEND = 20  # the static figure names at most this many clusters; more are drawn in one colour
MAX_SHOWN = 48
BLANK = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJ"
         "RU5ErkJggg==")  # a transparent 1x1 PNG: the preview of a row without a picture  # thumbnails in thumbnails_figure(): 6 rows of 8


def require_jscatter():
    """The jscatter module, or an ImportError that says how to install it."""
    try:
        with warnings.catch_warnings():
            # jupyter-scatter 1.0.1 calls set_index(inplace=True) at import, which pandas 3.1 deprecates: four
            # warnings about its code in the notebook, nothing a user can act on
            warnings.filterwarnings("ignore", message="The inplace keyword", module="jscatter")
            import jscatter
    except ImportError as e:
        raise ImportError(f"the interactive bank map needs jupyter-scatter and anywidget: {INSTALL} (the static map, "
                          f"bank.map2d.scatter_figure, needs only matplotlib)") from e
    return jscatter


def data_url(image) -> str | None:
    """A PNG data URL of one picture: a uint8 (H, W, 3) array or tensor, a PIL image; a str is taken as a URL."""
    from PIL import Image

    if image is None or isinstance(image, str):
        return image
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.ascontiguousarray(torch.as_tensor(image).numpy()))
    scale = max(1, PREVIEW_PX // max(image.size))
    image = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _as_rows(rows, n: int, what: str) -> torch.Tensor:
    """Bank row numbers as a 1-D long tensor, each in [0, n)."""
    try:
        t = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} must be bank row numbers (a list, array or tensor of ints); got {rows!r:.80}") from e
    whole = not t.is_floating_point() or not bool((t != t.round()).any())
    if t.dtype == torch.bool or t.is_complex() or not whole:
        raise ValueError(f"{what} must be whole row numbers; got {t.dtype} values")
    t = t.long()
    bad = t[(t < 0) | (t >= n)]
    if len(bad):
        raise ValueError(f"{what}: rows {bad[:10].tolist()} are out of range; the bank has {n} rows (0 to {n - 1})")
    return t


def _categorical_colours(names: list[str], palette) -> dict[str, object]:
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


class BankScatter:
    """A jupyter-scatter widget of a bank's map that speaks bank rows. Build it with bank_scatter()."""

    def __init__(self, bank: MemoryBank, coords: torch.Tensor, rows: torch.Tensor, clusters: torch.Tensor | None,
                 pictures, color_by: str, height: int):
        import pandas as pd

        jscatter = require_jscatter()
        self.bank, self.coords, self.rows = bank, coords, rows
        n = len(bank)
        self._point_of = np.full(n, -1, dtype=np.int64)  # bank row -> point index, -1 where the row is not mapped
        self._point_of[rows.numpy()] = np.arange(len(rows))
        self._pictures = pictures
        self._callbacks: list[Callable] = []
        self._quiet = False  # set while select() writes the trait: on_select reports the user's selections only
        self.highlighted = torch.zeros(0, dtype=torch.long)
        m = len(rows)
        columns = {"x": coords[:, 0].numpy(), "y": coords[:, 1].numpy(), "row": rows.numpy()}
        self._colours: dict[str, dict] = {}
        labels = bank.column("labels")
        if labels is not None:
            ids = labels[rows].long()
            names = bank.label_names or []
            name = lambda g: "added" if g < 0 else (names[g] if g < len(names) else str(g))  # noqa: E731
            used = torch.unique(ids)  # sorted
            table = {g: name(g) for g in used.tolist()}
            if len(set(table.values())) < len(table):  # two groups of one name: categories must differ
                table = {g: f"{v} ({g})" for g, v in table.items()}
            # from codes: a list of 1.28M names took a second
            codes = torch.searchsorted(used, ids).numpy()
            columns["group"] = pd.Categorical.from_codes(codes, categories=list(table.values()))
            # the static figure's colours (tab10 / tab20 by group id, "added" black), so both maps agree
            import matplotlib

            cmap = matplotlib.colormaps["tab10" if not table or max(table) < 10 else "tab20"]
            self._colours["group"] = {v: ("black" if g < 0 else cmap(g % cmap.N)) for g, v in table.items()}
        freq = bank.column("freq")
        if freq is not None:
            columns["frequency"] = freq[rows].float().numpy()
        if clusters is not None:
            cl = clusters.numpy()
            columns["cluster"] = pd.Categorical(cl)
            used = np.unique(cl).tolist()
            # jscatter's own palettes stop at 256 colours and refuse more categories: cycle them
            self._colours["cluster"] = _categorical_colours(used, jscatter.glasbey_dark)
        self.has_previews = pictures is not None
        if self.has_previews:
            # filled on first hover (1.28M PNGs up front would take minutes and gigabytes); until then the
            # transparent pixel: the browser keeps the last preview on screen when it gets none
            columns["preview"] = pd.Series([BLANK] * m, dtype=object)
            self._have = np.zeros(m, dtype=bool)
        self.data = pd.DataFrame(columns)
        self.base_size = 2 if m > 100_000 else 3 if m > 10_000 else 6
        tooltip = [c for c in ("row", "group", "frequency", "cluster") if c in columns]
        options = dict(tooltip=True, tooltip_properties=tooltip, size=self.base_size, height=height)
        if self.has_previews:
            options.update(tooltip_preview="preview", tooltip_preview_type="image",
                           tooltip_preview_image_size="contain", tooltip_preview_image_height=PREVIEW_PX)
        self.scatter = jscatter.Scatter(data=self.data, x="x", y="y", **options)
        self.color_by = None
        self.color(color_by)
        self.widget = self.scatter.widget
        self.widget.observe(self._selection_changed, names="selection")
        # jupyter-scatter reads a tooltip's preview from the data frame when the browser asks for it: fill that
        # point's cell first (one PNG per hovered point), then let jupyter-scatter answer
        answer = self.widget._handle_tooltip

        def handle_tooltip(event):
            if self.has_previews:
                self._fill_preview(int(event["index"]))
            answer(event)

        self.widget._handle_tooltip = handle_tooltip

    # ---- colours ----------------------------------------------------------------------------------------------
    def available_colours(self) -> tuple[str, ...]:
        return tuple(c for c in COLOR_BY if c in self.data.columns)

    def color(self, by: str | None) -> "BankScatter":
        """Colour the points by "group", "frequency" or "cluster" (what the bank and the map have); None: one
        colour."""
        if by is None:
            self.scatter.color(by=None, default="#1f77b4")
        elif by not in COLOR_BY:
            raise ValueError(f"color_by must be one of {COLOR_BY}; got {by!r}")
        elif by not in self.data.columns:
            why = {"group": "this bank has no group labels", "frequency": "this bank has no frequencies",
                   "cluster": "no clusters were given (bank_scatter(..., clusters=...))"}[by]
            raise ValueError(f"cannot colour by {by}: {why}; choose one of {self.available_colours()}")
        elif by == "frequency":
            from matplotlib.colors import LogNorm, Normalize

            v = self.data["frequency"].to_numpy()
            lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
            # log scale when counts span more than 100x (as the static figure does), else linear
            norm = LogNorm(lo, hi) if lo > 0 and hi > 100 * lo else Normalize(lo, hi if hi > lo else lo + 1)
            self.scatter.color(by="frequency", map="viridis", norm=norm)
        else:
            self.scatter.color(by=by, map=self._colours[by])
        self.color_by = by
        return self

    # ---- selection --------------------------------------------------------------------------------------------
    def _points(self, rows, what: str) -> tuple[np.ndarray, torch.Tensor]:
        """(point indices, the bank rows they are) of the given rows that are on the map; warns about the rest."""
        if rows is None:
            return np.zeros(0, dtype=np.uint32), torch.zeros(0, dtype=torch.long)
        rows = _as_rows(rows, len(self.bank), what)
        r = rows.numpy()
        points = np.full(len(r), -1, dtype=np.int64)
        known = r < len(self._point_of)  # rows added to the bank after the map was drawn are not on it
        points[known] = self._point_of[r[known]]
        off = rows[torch.from_numpy(points < 0)]
        if len(off):
            warnings.warn(f"{what}: {len(off)} of {len(rows)} rows are not on the map (it shows {len(self.rows):,} "
                          f"of the bank's {len(self.bank):,} rows: a subsample, or rows added since), e.g. rows "
                          f"{off[:5].tolist()}; they are left out", stacklevel=3)
        points = points[points >= 0]
        return points.astype(np.uint32), self.rows[torch.from_numpy(points.astype(np.int64))]

    @property
    def selected_points(self) -> np.ndarray:
        sel = self.widget.selection
        return np.zeros(0, dtype=np.int64) if sel is None else np.asarray(sel, dtype=np.int64).reshape(-1)

    @property
    def selected_rows(self) -> torch.Tensor:
        """The selection (lassoed in the browser, or set by select()) as bank rows, in selection order."""
        return self.rows[torch.from_numpy(self.selected_points)]

    def select(self, rows) -> torch.Tensor:
        """Select these bank rows on the map (None or [] clears); returns the rows selected. Rows the map does not
        show (a subsampled map) are left out with a warning. on_select callbacks are not called for it."""
        points, chosen = self._points(rows, "select")
        self._quiet = True
        try:
            self.scatter.selection(points)
        finally:
            self._quiet = False
        return chosen

    def on_select(self, callback: Callable[[torch.Tensor], object]) -> None:
        """Call `callback(rows)` (a long tensor of bank rows) each time the user changes the selection in the
        browser (lasso, click, or clearing it: then rows is empty)."""
        if not callable(callback):
            raise TypeError(f"on_select needs a function of the selected rows; got {type(callback).__name__}")
        self._callbacks.append(callback)

    def _selection_changed(self, change) -> None:
        if self._quiet:
            return
        rows = self.selected_rows
        for callback in self._callbacks:
            callback(rows)

    # ---- highlights -------------------------------------------------------------------------------------------
    def highlight(self, rows, zoom: bool = False) -> torch.Tensor:
        """Draw these bank rows as large points (None or [] clears), zooming to them with `zoom`; returns the rows
        highlighted (those on the map)."""
        points, chosen = self._points(rows, "highlight")
        mark = np.zeros(len(self.rows), dtype=np.float32)
        mark[points.astype(np.int64)] = 1.0
        big = max(10, 4 * self.base_size)
        self.scatter.size(by=mark, map=[self.base_size, big], norm=(0, 1))
        if zoom and len(points):
            self.scatter.zoom(to=points, animation=500)
        self.highlighted = chosen
        return chosen

    def highlight_neighbours(self, row: int, k: int = 8, zoom: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Highlight row and its k nearest neighbours (cosine); returns the neighbours and their similarities."""
        row = int(_as_rows([row], len(self.bank), "highlight_neighbours")[0])
        idx, sim = self.bank.nearest([row], k=k)
        self.highlight(torch.cat([torch.tensor([row]), idx[0]]), zoom=zoom)
        return idx[0], sim[0]

    # ---- pictures ---------------------------------------------------------------------------------------------
    def picture(self, row: int):
        """Row's picture (uint8 (H, W, 3), PIL image or URL) from `pictures`, or None."""
        source = self._pictures
        if source is None:
            return None
        if callable(source):
            return source(row)
        if isinstance(source, Mapping):
            return source.get(row)
        return source[row]

    def _fill_preview(self, point: int) -> None:
        if 0 <= point < len(self.data) and not self._have[point]:
            # a row without a picture yet (a gallery that has not drawn it) keeps the blank: a later hover asks again
            url = data_url(self.picture(int(self.rows[point])))
            if url:
                self.data.at[point, "preview"], self._have[point] = url, True

    def thumbnails_figure(self, rows=None, limit: int = MAX_SHOWN):
        """A captioned grid of the pictures of `rows` (default: the selection), at most `limit`; None when the bank
        has no pictures for them."""
        rows = self.selected_rows if rows is None else _as_rows(rows, len(self.bank), "thumbnails_figure")
        rows = rows[:limit].tolist()
        if not rows or self._pictures is None:
            return None
        pictures = [self.picture(r) for r in rows]
        shown = [(r, p) for r, p in zip(rows, pictures) if p is not None and not isinstance(p, str)]
        if not shown:
            return None
        images = torch.stack([torch.as_tensor(np.asarray(p.convert("RGB")) if hasattr(p, "convert") else p)
                              for _, p in shown])
        titles = [f"{r} {short_label(self.bank.label_of(r))}".rstrip() for r, _ in shown]
        return labelled_grid(images, titles, ncols=max(3, min(STATIC_COLUMNS, len(shown))))

    # ---- display ----------------------------------------------------------------------------------------------
    def figure(self, title: str | None = None):
        """The same map as a static matplotlib figure: the selection (if any) in full colour and the rest faded,
        highlighted rows ringed, coloured as the widget is."""
        by = self.color_by
        values, names = None, self.bank.label_names
        if by == "group":
            values = torch.as_tensor(self.bank.column("labels")[self.rows]).long()
        elif by == "frequency":
            values = torch.from_numpy(self.data["frequency"].to_numpy()).double()
        elif by == "cluster" and len(self._colours["cluster"]) <= MAX_LEGEND:
            values = torch.from_numpy(np.asarray(self.data["cluster"].cat.codes, dtype=np.int64))
            names = [f"cluster {c}" for c in self.data["cluster"].cat.categories]
        selected = self.selected_points if len(self.selected_points) else None
        ring = self._point_of[self.highlighted.numpy()] if len(self.highlighted) else None
        return scatter_figure(self.coords, color_by=values, label_names=names,
                              highlight=ring, selected=selected, title=title)

    def show(self):
        """The widget, with jupyter-scatter's toolbar (pan/zoom, lasso, full screen, download, reset)."""
        return self.scatter.show()

    def _repr_mimebundle_(self, **kwargs):
        return self.show()._repr_mimebundle_(**kwargs)


def _whole_or_subsample(bank: MemoryBank, method: str, max_rows: int):
    """whole_map's map of every row; where faiss is missing, embed_2d's (a subsample beyond max_rows rows)."""
    try:
        return whole_map(bank, method, fit_rows=max_rows)
    except ImportError:
        coords, rows = embed_2d(bank, method, max_rows=max_rows, return_indices=True)
        return SimpleNamespace(coords=coords, rows=rows, cluster=None)


def bank_scatter(bank: MemoryBank, coords=None, rows=None, color_by: str | None = None, clusters=None,
                 pictures=None, method: str = "umap", max_rows: int = 50_000, height: int = 520) -> BankScatter:
    """An interactive map of `bank` (jupyter-scatter). Returns a BankScatter; display it or its .show().

    coords: None (whole_map(bank, method, fit_rows=max_rows): every row and its k-means cluster, cached; without
        faiss, embed_2d's subsample of banks over max_rows rows), an (M, 2) array, or a WholeMap (its `.cluster` used
        when `clusters` is None).
    rows: the bank row of each point when coords cover only some rows (embed_2d(..., return_indices=True)'s
        second value); None when coords has one point per bank row.
    color_by: "group", "frequency" or "cluster"; None picks group, else cluster, else frequency, as the bank has
        (one colour when it has none of them).
    clusters: a cluster id per bank row (N) or per point (M).
    pictures: the tooltip thumbnails. None: the bank's thumbnails, when it has them; False: none; a uint8
        (N, H, W, 3) tensor; a mapping or a function row -> picture (uint8 (H, W, 3), PIL image, URL or None),
        e.g. a gallery that draws rows on demand: it is asked on hover, once per row.
    """
    if not isinstance(bank, MemoryBank):
        raise TypeError(f"bank_scatter needs a MemoryBank (a pipeline's is pipe.bank); got {type(bank).__name__}")
    require_jscatter()  # before the map is fitted: a missing package is said in a second, not after a UMAP fit
    n = len(bank)
    if coords is None:
        if rows is not None:
            raise ValueError("rows goes with coords: pass both, or neither (the map is then fitted by whole_map)")
        coords = _whole_or_subsample(bank, method, max_rows)
    if hasattr(coords, "coords"):  # a WholeMap: every row, NaN where a row is unusable, and its k-means clusters
        found = getattr(coords, "cluster", getattr(coords, "clusters", None))
        clusters = found if clusters is None else clusters
        if rows is None and getattr(coords, "rows", None) is not None:
            rows = coords.rows
        coords = torch.as_tensor(coords.coords)
        if rows is None and not bool(torch.isfinite(coords).all()):
            rows = torch.isfinite(coords).all(dim=1).nonzero().squeeze(1)  # rows holding NaN are on no map
            coords = coords[rows]
            clusters = None if clusters is None else torch.as_tensor(clusters)[rows]
    coords = torch.as_tensor(np.asarray(coords) if not isinstance(coords, torch.Tensor) else coords).float()
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (points, 2); got shape {tuple(coords.shape)}")
    if not bool(torch.isfinite(coords).all()):
        raise ValueError("coords hold NaN or infinite values; refit the map (embed_2d) or drop those points")
    m = coords.shape[0]
    if rows is None:
        if m != n:
            raise ValueError(f"coords has {m} points but the bank has {n} rows: pass rows= (the bank row of each "
                             f"point, e.g. embed_2d(bank, return_indices=True)[1]), or one point per row")
        rows = torch.arange(n)
    else:
        rows = _as_rows(rows, n, "rows")
        if len(rows) != m:
            raise ValueError(f"coords has {m} points but rows names {len(rows)}: one bank row per point")
        if len(torch.unique(rows)) != m:
            raise ValueError("rows names a bank row twice: each point must be a different row")
    if clusters is not None:
        clusters = torch.as_tensor(np.asarray(clusters) if not isinstance(clusters, torch.Tensor) else clusters)
        if clusters.ndim != 1 or clusters.is_floating_point() or clusters.dtype == torch.bool:
            raise ValueError(f"clusters must be integer ids, one per bank row ({n}) or per point ({m}); got "
                             f"{tuple(clusters.shape)} {clusters.dtype}")
        if len(clusters) == n:
            clusters = clusters[rows]
        elif len(clusters) != m:
            raise ValueError(f"clusters has {len(clusters)} ids; give one per bank row ({n}) or per point ({m})")
        clusters = clusters.long()
    if pictures is None:
        pictures = bank.column("thumbnails")
    elif pictures is False:
        pictures = None
    elif not callable(pictures) and not isinstance(pictures, Mapping):
        pictures = torch.as_tensor(np.asarray(pictures) if not isinstance(pictures, torch.Tensor) else pictures)
        if pictures.ndim != 4 or pictures.shape[0] != n or pictures.shape[-1] != 3 or pictures.dtype != torch.uint8:
            raise ValueError(f"pictures must be uint8 (N={n}, H, W, 3), a mapping or a function of the row; got "
                             f"{tuple(pictures.shape)} {pictures.dtype}")
    if color_by is None:
        color_by = ("group" if bank.column("labels") is not None else "cluster" if clusters is not None
                    else "frequency" if bank.column("freq") is not None else None)
    return BankScatter(bank, coords.contiguous(), rows, clusters, pictures, color_by, height)
