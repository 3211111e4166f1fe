"""The Bank tab's interactive map: every mapped row drawn in the browser with WebGL (scatter.js, raw WebGL, no
library and nothing fetched from a network), fed with packed binary coordinates.

    colours = group_colours(labels, names)               # or value_colours(freq) / cluster_colours(ids)
    view = MapView.build(coords, colours, rows=idx)      # quantised: 5 bytes a point (x, y uint16, colour uint8)
                                                         # (+ 4 for its row where idx is not every row once)
    token = store.put(key, Entry(view, picture, len(bank)))   # the browser fetches view.payload by token
    inside = rows_in_polygon(coords, [[x0, y0], [x1, y0], [x1, y1]])   # a lasso (any polygon) or a box

Python keeps the float coordinates (a region the browser sends is tested against them, not against the quantised
ones) and answers the browser's two requests: the packed points of a map (`map_data`) and one row's picture for
the hover tooltip (`row_picture`). The component itself is `map_component`; bank_tab wires its events."""
from __future__ import annotations

import base64
import io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

LEVELS = 65535  # uint16 quantisation: a point moves at most span / 131070 per axis (0.0008 % of the map's width)
MAX_LEGEND = 20  # legend entries; more groups share the 20 colours (ImageNet's 1,000 classes)
VALUE_LEVELS = 256  # colour steps of a value scale (frequency)
ADDED = 255  # the palette slot of label -1 (a row added in this session)
FALLBACK_CLUSTERS = 12  # regions of the map coloured when no cluster ids are given
# the browser's side, run as one js_on_load: drawing (scatter.js), then data and interaction (scatter_ui.js)
JS_FILES = (Path(__file__).with_name("scatter.js"), Path(__file__).with_name("scatter_ui.js"))


# ---- colours -----------------------------------------------------------------------------------------------------
@dataclass
class Colouring:
    """A uint8 palette index per point, the palette (CSS colours by index) and what the legend shows: named
    swatches (`legend`) or a colour scale (`scale`: min, max, log, name, stops)."""

    index: np.ndarray
    palette: dict[int, str]
    legend: list[dict] = field(default_factory=list)
    scale: dict | None = None
    note: str = ""


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in rgb[:3])


def _categorical(ids: np.ndarray, names: Callable[[int], str], what: str) -> Colouring:
    import matplotlib

    ids = np.asarray(ids).astype(np.int64).reshape(-1)
    found, counts = np.unique(ids, return_counts=True)
    real = found[found >= 0]
    cmap = matplotlib.colormaps["tab10" if len(real) <= 10 and (not len(real) or real.max() < 10) else "tab20"]
    slot = np.where(ids < 0, ADDED, ids % cmap.N).astype(np.uint8)
    palette = {i: _hex(cmap(i)) for i in range(cmap.N)}
    palette[ADDED] = "#000000"
    order = found[np.argsort(-counts, kind="stable")] if len(found) > MAX_LEGEND else found
    legend = [{"name": names(int(g)) if g >= 0 else "added", "colour": palette[ADDED if g < 0 else int(g % cmap.N)]}
              for g in order[:MAX_LEGEND]]
    note = (f"{len(found):,} {what}s share {cmap.N} colours; the legend lists the {MAX_LEGEND} largest"
            if len(found) > MAX_LEGEND else "")
    return Colouring(slot, palette, legend, None, note)


def group_colours(labels, label_names=None) -> Colouring:
    """One colour per group (-1, a row added in this session, in black), the legend named from label_names."""
    names = list(label_names or [])
    return _categorical(labels, lambda g: names[g] if g < len(names) else str(g), "group")


def cluster_colours(cluster_ids) -> Colouring:
    return _categorical(cluster_ids, lambda c: f"cluster {c}", "cluster")


def value_colours(values, name: str = "frequency") -> Colouring:
    """256 steps of viridis over the values; a log scale when they are all positive and span more than 100x (as
    scatter_figure's colour bar)."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) and not np.isfinite(v).all():
        raise ValueError(f"{name} values must be finite; {int((~np.isfinite(v)).sum())} are NaN or infinite")
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    log = bool(len(v) and lo > 0 and hi > 100 * lo)
    t = (np.log(v) - np.log(lo)) / max(np.log(hi) - np.log(lo), 1e-12) if log else (v - lo) / max(hi - lo, 1e-12)
    index = np.clip(np.round(t * (VALUE_LEVELS - 1)), 0, VALUE_LEVELS - 1).astype(np.uint8)
    cmap = matplotlib.colormaps["viridis"]
    palette = {i: _hex(cmap(i / (VALUE_LEVELS - 1))) for i in range(VALUE_LEVELS)}
    stops = [palette[int(round(s * (VALUE_LEVELS - 1)))] for s in (0, 0.25, 0.5, 0.75, 1)]
    return Colouring(index, palette, [], {"min": lo, "max": hi, "log": log, "name": name, "stops": stops})


def one_colour() -> Colouring:
    return Colouring(np.zeros(0, np.uint8), {0: "#1f77b4"})


def fallback_clusters(coords, k: int = FALLBACK_CLUSTERS) -> np.ndarray:
    """Regions of the 2-D map as stand-in cluster ids where none are given (no k-means: a fit on 1.28M points takes
    seconds): k seed points spread by farthest-point sampling, each point joined to its nearest seed."""
    xy = np.asarray(coords, dtype=np.float32)
    n = len(xy)
    if n == 0:
        return np.zeros(0, np.int64)
    k = min(k, n)
    seeds = [0]
    dist = ((xy - xy[0]) ** 2).sum(1)
    for _ in range(k - 1):
        seeds.append(int(dist.argmax()))
        dist = np.minimum(dist, ((xy - xy[seeds[-1]]) ** 2).sum(1))
    out = np.empty(n, np.int64)
    centres = xy[seeds]
    for start in range(0, n, 262_144):  # (chunk, k) distances at a time: 12 MB, not 1.28M x k at once
        part = xy[start:start + 262_144]
        out[start:start + len(part)] = ((part[:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
    return out


# ---- packing -----------------------------------------------------------------------------------------------------
def check_coords(coords) -> np.ndarray:
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"map coordinates must be (N, 2); got shape {xy.shape}")
    bad = ~np.isfinite(xy).all(1)
    if bad.any():
        raise ValueError(f"map coordinates must be finite; points {np.flatnonzero(bad)[:10].tolist()} "
                         f"({int(bad.sum())} in all) are NaN or infinite: refit the map")
    return xy


def quantise(coords) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint16 (N, 2), lo (2,), span (2,)): each axis mapped onto 0..65535 over its own range."""
    xy = check_coords(coords)
    lo = xy.min(0) if len(xy) else np.zeros(2)
    span = (xy.max(0) - lo) if len(xy) else np.ones(2)
    span = np.where(span > 0, span, 1.0)
    q = np.clip(np.round((xy - lo) / span * LEVELS), 0, LEVELS).astype(np.uint16)
    return q, lo, span


def dequantise(q, lo, span) -> np.ndarray:
    return np.asarray(lo) + np.asarray(q, dtype=np.float64) / LEVELS * np.asarray(span)


@dataclass
class MapView:
    """One map as the browser gets it: `header` (JSON: count, bounds, palette, legend, how points map to rows) and
    `payload` (base64 of x uint16[N] | y uint16[N] | colour uint8[N] | zero padding to 4 bytes | then the rows:
    nothing when the points are rows 0..N-1; top int32[k] (header "top": k) when they are every row once, in row
    order except k rows drawn last (an edited session's moved rows, on top of their island); rows int32[N]
    (header "rows": true) otherwise (a subsampled map)), plus the float coordinates and rows kept here for region
    selection."""

    header: dict
    payload: str
    coords: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, coords, colours: Colouring, rows=None, title: str = "") -> MapView:
        q, lo, span = quantise(coords)
        n = len(q)
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.shape != (n,):
            raise ValueError(f"rows must give one bank row per point ({n}); got {rows.shape[0]}")
        index = colours.index if len(colours.index) else np.zeros(n, np.uint8)
        if index.shape != (n,):
            raise ValueError(f"colours must give one colour per point ({n}); got {index.shape[0]}")
        top = drawn_last(rows)
        parts = [q[:, 0].tobytes(), q[:, 1].tobytes(), index.astype(np.uint8).tobytes(), bytes(-(5 * n) % 4)]
        parts.append((rows if top is None else top).astype("<i4").tobytes())
        header = {"count": n, "rows": top is None, "top": 0 if top is None else len(top),
                  "lo": lo.tolist(), "span": span.tolist(), "title": title,
                  "palette": {str(k): v for k, v in colours.palette.items()}, "legend": colours.legend,
                  "scale": colours.scale, "note": colours.note}
        # kept as float32 and int32 (what embed_2d gives; bank rows < 2**31): 12 bytes a point, 15 MB for 1.28M
        return cls(header, base64.b64encode(b"".join(parts)).decode("ascii"), np.asarray(coords, np.float32),
                   rows.astype(np.int32))


def drawn_last(rows: np.ndarray) -> np.ndarray | None:
    """The rows drawn after the others when `rows` is every row 0..N-1 once, in row order but for those (the
    shortest such tail: none for rows 0..N-1); None when it is not (a subsample: its rows go as they are). At 1.28M
    rows the tail of an edited session's 100 moved rows is 400 bytes where every point's row was 5.1 MB."""
    n = len(rows)
    if n == 0:
        return rows[:0]
    if rows.min() < 0 or rows.max() >= n:
        return None
    seen = np.zeros(n, bool)
    seen[rows] = True
    if not seen.all():  # n rows inside 0..N-1 that miss one repeat another
        return None
    descents = np.flatnonzero(rows[1:] <= rows[:-1])
    # the head before the first descent is increasing, so it is the rows not in the tail, in row order
    return rows[descents[0] + 1:] if len(descents) else rows[:0]


def rows_of(count: int, top) -> np.ndarray:
    """The bank row of each point of a payload sent as row order plus `top` drawn last (drawn_last's inverse; what
    scatter_ui.js does)."""
    top = np.asarray(top, dtype=np.int64)
    rest = np.ones(count, bool)
    rest[top] = False
    return np.r_[np.flatnonzero(rest), top]


def decode_payload(payload: str, header: dict) -> dict:
    """The arrays a payload holds (what scatter.js reads), for tests and for checking a payload by hand."""
    raw, n = base64.b64decode(payload), header["count"]
    out = {"x": np.frombuffer(raw, "<u2", n, 0), "y": np.frombuffer(raw, "<u2", n, 2 * n),
           "colour": np.frombuffer(raw, np.uint8, n, 4 * n)}
    start = 5 * n + (-(5 * n) % 4)
    if header["rows"]:
        out["rows"] = np.frombuffer(raw, "<i4", n, start)
    else:
        out["top"] = np.frombuffer(raw, "<i4", header["top"], start)
        out["rows"] = rows_of(n, out["top"])
    if len(raw) != start + 4 * (n if header["rows"] else header["top"]):
        raise ValueError(f"a payload of {n} points is {len(raw)} bytes; its header says otherwise")
    return out


# ---- selection ---------------------------------------------------------------------------------------------------
def check_polygon(polygon) -> np.ndarray:
    try:
        poly = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("a selection must be a list of [x, y] corners") from None
    if poly.ndim != 2 or poly.shape[1] != 2:
        raise ValueError(f"a selection must be a list of [x, y] corners; got shape {poly.shape}")
    if len(poly) < 3:
        raise ValueError(f"a selection needs at least 3 corners (a box has 4); got {len(poly)}: drag a larger "
                         f"box or lasso")
    if not np.isfinite(poly).all():
        raise ValueError("a selection's corners must be finite numbers")
    return poly


def rows_in_polygon(coords, polygon) -> np.ndarray:
    """A bool mask of the points inside the polygon (even-odd rule; a box is a polygon of 4 corners). Vectorised
    over the points, one pass per edge, after a bounding-box cut: a 200-corner lasso over 1.28M points only tests
    the points in its bounding box."""
    xy = check_coords(coords)
    poly = check_polygon(polygon)
    lo, hi = poly.min(0), poly.max(0)
    candidates = np.flatnonzero((xy[:, 0] >= lo[0]) & (xy[:, 0] <= hi[0]) & (xy[:, 1] >= lo[1]) & (xy[:, 1] <= hi[1]))
    # an axis-aligned box is its own bounding box: every candidate is inside, edges included (a box dragged to a
    # point's position takes it)
    edges = poly - np.roll(poly, -1, axis=0)
    box = len(poly) == 4 and bool(((edges == 0).sum(1) == 1).all()) and len(np.unique(poly, axis=0)) == 4
    inside = np.ones(len(candidates), bool) if box else np.zeros(len(candidates), bool)
    x, y = xy[candidates, 0], xy[candidates, 1]
    for (x0, y0), (x1, y1) in ([] if box else zip(poly, np.roll(poly, -1, axis=0))):
        if y0 == y1:
            continue  # a horizontal edge crosses no ray
        crosses = (y0 > y) != (y1 > y)
        inside ^= crosses & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    mask = np.zeros(len(xy), bool)
    mask[candidates[inside]] = True
    return mask


def highlight(row, neighbours, rows: int) -> dict:
    """The rings the map draws: the row shown in the details and its nearest neighbours. The row comes from the row
    box (anything an API client sends: a row outside the bank rings nothing); the neighbours from our own search,
    so one outside the bank is a bug, said as such."""
    bad = [n for n in neighbours if not (isinstance(n, (int, np.integer)) and 0 <= n < rows)]
    if bad:
        raise ValueError(f"neighbour rows must be rows of the bank (0-{rows - 1}); got {bad[:5]}")
    return {"row": row if row is not None and 0 <= row < rows else None,
            "neighbours": [int(n) for n in neighbours if n != row]}


# ---- the browser's requests ---------------------------------------------------------------------------------------
@dataclass
class Entry:
    view: MapView
    picture: Callable[[int], tuple]  # row -> (PIL image, caption)
    rows: int  # rows in the bank (a picture request for another row is refused)
    note: str = ""  # what the summary under the map adds (edited rows placed by their neighbours, no clusters)
    bank: Callable = lambda: None  # a weakref to the bank mapped: a key's id() may name a newer bank once it is gone

    def of(self, bank) -> bool:
        return bank is not None and self.bank() is bank


class MapStore:
    """The maps the browsers were sent, by token, least recently used first out. A token is random (a session's
    edited rows are not another session's to see); the same key (bank, method, colouring) reuses its token, so
    sessions on the checkpoint's bank share one packed map."""

    def __init__(self, capacity: int = 6):
        self.capacity = capacity
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._tokens: dict = {}
        self._lock = threading.Lock()

    def find(self, key, bank) -> str | None:
        """The token of the map stored under `key`, when it is a map of `bank` (this very object)."""
        with self._lock:
            token = self._tokens.get(key)
            if token in self._entries and self._entries[token].of(bank):
                self._entries.move_to_end(token)
                return token
            return None

    def put(self, key, entry: Entry) -> str:
        with self._lock:
            token = secrets.token_hex(12)
            self._tokens[key] = token
            self._entries[token] = entry
            while len(self._entries) > self.capacity:
                old, _ = self._entries.popitem(last=False)
                self._tokens = {k: t for k, t in self._tokens.items() if t != old}
            return token

    def get(self, token) -> Entry:
        with self._lock:
            entry = self._entries.get(token) if isinstance(token, str) else None
            if entry is None:
                raise KeyError("this map is no longer on the server (it keeps the last few): redraw it by choosing "
                               "a map or colouring again")
            self._entries.move_to_end(token)
            return entry


def data_url(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def picture_reply(store: MapStore, request) -> dict:
    """{"row", "caption", "src"} for the hover tooltip; request = {"token", "row"}."""
    if not isinstance(request, dict):
        raise ValueError("a picture request is {token, row}")
    entry = store.get(request.get("token"))
    row = request.get("row")
    if isinstance(row, bool) or not isinstance(row, (int, float)) or row != int(row) or not 0 <= row < entry.rows:
        raise ValueError(f"row must be a row of the bank (0-{entry.rows - 1}); got {row!r}")
    image, caption = entry.picture(int(row))
    return {"row": int(row), "caption": caption, "src": data_url(image)}


TEMPLATE = """<div class="gm-map" tabindex="0">
  <div class="gm-bar"><span class="gm-title"></span>
    <button type="button" class="gm-reset" title="Show the whole map">Reset view</button>
    <button type="button" class="gm-lasso" aria-pressed="false" title="Drag to draw a free shape">Lasso</button>
    <button type="button" class="gm-clear" title="Select the whole map again">Clear selection</button></div>
  <div class="gm-stage"><canvas class="gm-gl"></canvas><canvas class="gm-over"></canvas>
    <div class="gm-hint">drag: pan · wheel: zoom · click: pick a row · shift+drag: box · alt+drag or Lasso: free
      shape</div>
    <div class="gm-status"></div><div class="gm-tip" hidden><img alt=""><span></span></div></div>
  <div class="gm-legend"></div>
</div>"""

CSS = """
.gm-map { outline: none; }
.gm-bar { display: flex; gap: 6px; align-items: center; margin-bottom: 4px; font-size: 0.85em; }
.gm-title { flex: 1; font-weight: 600; }
.gm-bar button { padding: 2px 8px; border: 1px solid var(--border-color-primary); border-radius: 4px;
                 background: var(--background-fill-secondary); cursor: pointer; }
.gm-bar button[aria-pressed=true] { background: var(--color-accent-soft); border-color: var(--color-accent); }
.gm-stage { position: relative; height: 460px; border: 1px solid var(--border-color-primary); border-radius: 6px;
            overflow: hidden; background: #fff; touch-action: none; }
.gm-stage canvas { position: absolute; inset: 0; width: 100%; height: 100%; }
.gm-gl { cursor: grab; }
.gm-hint { position: absolute; left: 6px; bottom: 4px; font-size: 11px; color: #555; pointer-events: none;
           background: rgba(255,255,255,0.8); padding: 1px 4px; border-radius: 3px; }
.gm-status { position: absolute; right: 6px; top: 4px; font-size: 12px; color: #333; pointer-events: none; }
.gm-tip { position: absolute; pointer-events: none; background: #fff; border: 1px solid #999; border-radius: 4px;
          padding: 3px; font-size: 11px; display: flex; flex-direction: column; align-items: center; z-index: 5;
          box-shadow: 0 1px 4px rgba(0,0,0,0.2); max-width: 140px; }
.gm-tip[hidden] { display: none; }
.gm-tip img { width: 64px; height: 64px; image-rendering: pixelated; }
.gm-tip img:not([src]) { display: none; }
.gm-legend { display: flex; flex-wrap: wrap; gap: 2px 10px; font-size: 12px; margin-top: 4px; }
.gm-legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 3px; }
.gm-legend .gm-scale { width: 160px; height: 10px; display: inline-block; margin: 0 4px; vertical-align: middle; }
"""


def map_component(store: MapStore, elem_id: str = "bank-map", renderer: str = "auto", **kwargs):
    """The gr.HTML map. Python drives it through two props: `points` (a MapView header plus its token: the
    browser fetches the payload with server.map_data) and `rings` (highlight()); it fires `select` ({row}) on
    a click and `region` ({token, polygon} in data coordinates, polygon null for the whole map). renderer: "auto"
    (WebGL, except on a software WebGL, where a 2-D canvas is faster), "webgl" or "2d"."""
    if renderer not in ("auto", "webgl", "2d"):
        raise ValueError(f"renderer must be 'auto', 'webgl' or '2d'; got {renderer!r}")
    import gradio as gr

    def map_data(token):
        return store.get(token).view.payload

    def row_picture(request):
        return picture_reply(store, request)

    return gr.HTML("", html_template=TEMPLATE, css_template=CSS, js_on_load="\n".join(p.read_text() for p in JS_FILES),
                   apply_default_css=False, elem_id=elem_id, points=None, rings=None, renderer=renderer,
                   server_functions=[map_data, row_picture], **kwargs)
