"""The Bank tab's map, without its layout: which coordinates (map_coords: whole_map's, every row of the bank with
its k-means cluster, with a session's edited rows placed beside their nearest row of the checkpoint's bank),
colours (map_colours), the packed view the browser draws (map_view, kept in ctx.maps by token) and the rows a box or lasso selects (bank_map for the API's box, region for the page's). The
packing and drawing are scatter.py's and scatter.js's; bank_tab.py wires the events."""
from __future__ import annotations

import math
import weakref

import torch

from ..bank.checks import CHUNK
from ..bank.map2d import embed_2d, uniform_frequency
from ..bank.overlay import Column
from ..bank.whole_map import whole_map
from . import scatter
from .common import AppContext, Session, UserError, as_float, row_caption, row_pictures, thumbnails

MAP_FIT_ROWS = 50_000  # rows a map is fitted on (whole_map's default): smaller banks are mapped whole, in seconds
ANCHORS = 16  # nearest rows asked for a session's moved row; the first of them that is on the map is its anchor
# a moved row's offset from its anchor (Gaussian, per axis): JITTER x the map's local length (map_spacing), at most 1%
# of the map's span. On the 1.28M-row map of 1,000 clusters (span 37) 1% of the span put 33% of 1,000 moved rows amid
# another cluster's island, 0.5% 3%, 0.25% none (benchmarks/bank_tab_scale.py); half the local length (0.0006 there)
# none either. On emoji-32's map (1,697 rows) it is 0.3% of the span.
JITTER = 0.5
SHOW_SELECTED = 48  # thumbnails shown for a selection (the most frequent rows first)
COLOR_BY = ("group", "frequency", "cluster")


def layout(bank, method: str, progress=None):
    """(coords, rows, clusters) of a bank's map: every usable row and its k-means cluster (whole_map, cached per
    bank: 116 s the first time for 1.28M rows on 2 cores, 0.07 s after), or where faiss is missing embed_2d's
    (a 50,000-row subsample of larger banks) without clusters."""
    try:
        m = whole_map(bank, method, progress_callback=progress)
    except ImportError:
        coords, idx = embed_2d(bank, method, return_indices=True)
        return coords, idx, None
    idx = torch.isfinite(m.coords).all(dim=1).nonzero().squeeze(1)  # rows holding NaN are placed nowhere
    return m.coords[idx], idx, m.cluster[idx]


def changed_rows(mine, theirs) -> torch.Tensor:
    """Rows of a session's copy that differ from the checkpoint's bank: read from the copy's row map where it
    shares the checkpoint's stored rows (an int32 vector: 5 MB at 1.28M rows, no row is read), else by comparing
    the rows chunk by chunk."""
    n = min(len(mine), len(theirs))
    if isinstance(mine, Column) and isinstance(theirs, Column) and mine.base is theirs.base and not theirs.edited:
        if mine.src is None:
            return torch.zeros(0, dtype=torch.long)
        return (mine.src[:n].long() != torch.arange(n)).nonzero().squeeze(1)
    found = []
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        found.append((mine[a:b].float() != theirs[a:b].float()).any(dim=1).nonzero().squeeze(1) + a)
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


def map_spacing(coords: torch.Tensor, k: int = 10, sample: int = 256, pool: int = 50_000) -> float:
    """The map's local length: the median distance from `sample` of its points to their k-th nearest among `pool`
    of them, both taken at even strides through the rows (no random draw: a permutation of 1.28M rows alone takes
    0.1 s). About an island's radius: 0.0012 on the 1.28M-row UMAP map of 1,000 clusters, whose span is 37
    (0.07 s there); 0.18 on emoji-32's map of 1,697 rows, span 30-36."""
    points = coords[::-(-len(coords) // pool)].float() if len(coords) else coords.float()
    if len(points) < 2:
        return 0.0
    queries = points[::-(-len(points) // sample)]
    x, y = points[:, 0].contiguous(), points[:, 1].contiguous()
    found = []
    for a in range(0, len(queries), 64):  # (64, pool) squared distances at a time: 13 MB
        q = queries[a:a + 64]
        # by coordinate: torch.cdist takes 10x as long on 2-D points (140 ms for 128 x 50,000)
        d = (q[:, :1] - x).square_() + (q[:, 1:] - y).square_()
        found.append(d.topk(min(k + 1, len(points)), dim=1, largest=False).values[:, -1])  # +1: the point itself
    return float(torch.cat(found).median().sqrt())


def map_coords(ctx: AppContext, session: Session, method: str, progress=None):
    """(coords, rows, note, clusters). A session's edited bank reuses the checkpoint bank's map: refitting for one
    swapped row would take a minute (UMAP) to two (1.28M rows), so edited and added rows are drawn beside their
    nearest unedited row, in its cluster. Only a small edited bank's PCA map is its own (computed in a second): a
    cached map of the edited rows is not looked for, which would hash every row on each redraw after an edit (2.4 s
    at 1.28M rows) for a map that only a notebook could have made."""
    if method not in ("umap", "pca"):
        raise UserError(f"Unknown map method {method!r}; choose umap or pca")
    bank = ctx.bank(session)
    if session.bank is None or method == "pca" and len(bank) <= MAP_FIT_ROWS:
        coords, idx, clusters = layout(bank, method, progress)
        return coords, idx, "", clusters
    base = ctx.store.get(session.checkpoint).bank
    coords, idx, clusters = layout(base, method, progress)
    mine = bank.column("rows")  # read as stored: neither bank is copied
    changed = torch.zeros(len(base), dtype=torch.bool)
    changed[changed_rows(mine, base.column("rows"))] = True
    moved = torch.cat([changed.nonzero().squeeze(1), torch.arange(len(base), len(bank))])
    if not len(moved):
        return coords, idx, "", clusters
    # each moved row lands beside the mapped row of the checkpoint's bank nearest to its new content (the index
    # answers in milliseconds at 1.28M rows); a row's own old place counts, its old content having been there
    at = torch.full((len(base),), -1, dtype=torch.long)
    at[idx] = torch.arange(len(idx))
    found, _ = base.nearest(mine[moved].float(), min(ANCHORS, len(base)), exclude_self=False, progress=False)
    hits = at[found]  # (moved, ANCHORS) positions on the map, -1 where a row is not on it
    first = torch.where(hits >= 0, torch.arange(hits.shape[1], 0, -1), 0).argmax(dim=1)
    anchor = hits.gather(1, first[:, None]).squeeze(1)
    keep = ~changed[idx]
    if bool((anchor < 0).any()):  # none of its nearest rows is on the map (a subsampled map): the map's middle
        anchor[anchor < 0] = (coords - coords.mean(dim=0)).norm(dim=1).argmin()
    span = (coords.max(0).values - coords.min(0).values).clamp_min(1e-6)
    spacing = map_spacing(coords)
    jitter = torch.minimum(0.01 * span, torch.tensor(JITTER * spacing)) if spacing > 0 else 0.01 * span
    placed = coords[anchor] + jitter * torch.randn(len(moved), 2, generator=torch.Generator().manual_seed(0))
    note = (f"; {len(moved)} row(s) edited in this session are drawn beside their nearest unedited row "
            f"(the {method.upper()} map is not refitted for session edits)")
    out_clusters = None if clusters is None else torch.cat([clusters[keep], clusters[anchor]])
    return torch.cat([coords[keep], placed]), torch.cat([idx[keep], moved]), note, out_clusters


def ring_row(row, rows: int) -> int | None:
    """The row to ring on the map: the row box's value when it is a row of the bank, else None (the box may hold
    anything an API client sends; 2**64 made torch raise an OverflowError)."""
    try:
        number = float(row)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) and 0 <= number < rows else None


def box_mask(coords: torch.Tensor, box) -> torch.Tensor:
    """Points inside a box given in percent of the map's extent: (x from, x to, y from, y to)."""
    x0, x1, y0, y1 = [as_float(v, "box edge", 0.0, 100.0) / 100 for v in box]
    if x0 > x1 or y0 > y1:
        raise UserError("The box's 'from' edges must not exceed its 'to' edges.")
    lo, hi = coords.min(0).values, coords.max(0).values
    rel = (coords - lo) / (hi - lo).clamp_min(1e-12)
    return (rel[:, 0] >= x0) & (rel[:, 0] <= x1) & (rel[:, 1] >= y0) & (rel[:, 1] <= y1)


def map_colours(bank, idx: torch.Tensor, coords, color_by: str, clusters=None) -> tuple[scatter.Colouring, str]:
    """(colouring of the mapped rows, a note). `clusters`: a cluster id per mapped row where the map comes with
    them (bank/whole_map.py); else regions of the map stand in for clusters (scatter.fallback_clusters)."""
    uniform = uniform_frequency(bank)
    if color_by == "cluster":
        found = clusters is not None
        ids = torch.as_tensor(clusters).numpy() if found else scatter.fallback_clusters(torch.as_tensor(coords).numpy())
        return scatter.cluster_colours(ids), "" if found else "; clusters are regions of the map (no cluster ids given)"
    labels = bank.column("labels")  # read through an edited copy's row map: the column is never copied whole
    if color_by == "group" and labels is not None:
        return scatter.group_colours(labels[idx].numpy(), bank.label_names), ""
    if uniform is None:
        return scatter.value_colours(bank.column("freq")[idx].double().numpy()), ""
    # one colour for every point: a scale from 0.9 to 1.1 would say nothing
    return scatter.one_colour(), (f"; {uniform.split(':')[0]}, so there is nothing to colour by"
                                  if color_by == "frequency" else "")


def map_view(ctx: AppContext, session: Session, method: str, color_by: str, coords=None, rows=None, clusters=None,
             progress=None):
    """(token, header, entry, note) of the session's map, packed once per bank, method and colouring (sessions on
    the checkpoint's bank share it). `coords`/`rows`/`clusters` give a map computed elsewhere (a whole-bank layout);
    by default map_coords' (whole_map's: every row, k-means clusters). progress(done, total): rows placed while a
    map is computed for the first time."""
    bank = ctx.bank(session)
    if color_by not in COLOR_BY:
        raise UserError(f"Unknown colouring {color_by!r}; choose one of {', '.join(COLOR_BY)}")
    given = coords is not None
    key = (session.checkpoint, id(bank), len(bank), len(session.edits), method, color_by, given)
    token = None if given else ctx.maps.find(key, bank)
    if token is not None:
        entry = ctx.maps.get(token)
        return token, entry.view.header, entry, entry.note
    if given:
        note = ""
        idx = torch.arange(len(coords)) if rows is None else torch.as_tensor(rows)
    else:
        coords, idx, note, clusters = map_coords(ctx, session, method, progress)
    colours, colour_note = map_colours(bank, idx, coords, color_by, clusters)
    subsample = f" (a random {len(idx):,} of {len(bank):,} rows)" if len(idx) < len(bank) else ""
    try:
        view = scatter.MapView.build(torch.as_tensor(coords).double().numpy(), colours, idx.numpy(),
                                     f"{method.upper()} map of {len(idx):,} snippets{subsample}")
    except ValueError as e:
        raise UserError(str(e)) from e
    owner = Session(session.checkpoint, session.bank, list(session.edits))  # for pictures of this bank's rows

    def picture(row: int):
        return row_pictures(ctx, owner, [row], 64)[0], row_caption(bank, row)

    entry = scatter.Entry(view, picture, len(bank), note + colour_note, weakref.ref(bank))
    token = ctx.maps.put(key, entry)
    return token, view.header, entry, entry.note


def rings_of(row, neighbours, rows: int) -> dict:
    return scatter.highlight(ring_row(row, rows), [int(n) for n in neighbours or []], rows)


def listing(bank, selected: torch.Tensor, where: str) -> tuple[list, list[int], str]:
    """(thumbnails, rows, summary) of selected rows: the most frequent first (by row number when every row has the
    same frequency), SHOW_SELECTED of them."""
    if uniform_frequency(bank) is None and len(selected):
        selected = selected[bank.column("freq")[selected].argsort(descending=True, stable=True)]
        order = "most frequent"
    else:  # equal frequencies order nothing: list the rows as the pages do
        selected = selected.sort().values
        order = "first (by row number)"
    shown = selected[:SHOW_SELECTED].tolist()
    summary = f"{len(selected):,} rows {where}" + (f"; the {len(shown)} {order} shown" if len(selected) > len(shown)
                                                    else "")
    return thumbnails(bank, shown), shown, summary


def bank_map(ctx: AppContext, session: Session, method: str, color_by: str, x0, x1, y0, y1, row=None,
             progress=None):
    """(map props, selected thumbnails, selected rows, summary) for the map and the rows in a box given in percent
    of the map's extent (the API's way to select; in the page, box and lasso are drawn on the map)."""
    token, header, entry, note = map_view(ctx, session, method, color_by, progress=progress)
    inside = box_mask(torch.from_numpy(entry.view.coords), (x0, x1, y0, y1))
    where = "on the map" if bool(inside.all()) else "in the box"  # the page opens on the whole map: no box drawn
    items, shown, summary = listing(ctx.bank(session), torch.from_numpy(entry.view.rows)[inside], where)
    points = {**header, "token": token}
    return ({"title": header["title"], "points": points, "rings": rings_of(row, [], len(ctx.bank(session)))},
            items, shown, summary + note)


def region(ctx: AppContext, session: Session, token, polygon) -> tuple[list, list[int], str]:
    """(thumbnails, rows, summary) of the rows inside a polygon drawn on the map (data coordinates; None: the whole
    map), tested against the map's float coordinates."""
    try:
        entry = ctx.maps.get(token)
    except KeyError as e:
        raise UserError(str(e.args[0])) from e
    bank = ctx.bank(session)
    if not entry.of(bank):
        raise UserError("This map shows another bank than this session's (a model was loaded or the bank edited "
                        "since): choose the map or colouring again to redraw it")
    if polygon is None:
        inside, where = torch.ones(len(entry.view.rows), dtype=torch.bool), "on the map"
    else:
        try:
            inside = torch.from_numpy(scatter.rows_in_polygon(entry.view.coords, polygon))
        except ValueError as e:
            raise UserError(str(e)) from e
        where = "in the box" if len(polygon) == 4 else "in the lasso"
    items, shown, summary = listing(bank, torch.from_numpy(entry.view.rows)[inside], where)
    return items, shown, summary + entry.note
