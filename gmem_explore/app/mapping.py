"""The Bank tab's map, without its layout: which coordinates (map_coords: embed_2d's, with a session's edited rows
placed beside their nearest unedited row), colours (map_colours), the packed view the browser draws (map_view, kept
in ctx.maps by token) and the rows a box or lasso selects (bank_map for the API's box, region for the page's). The
packing and drawing are scatter.py's and scatter.js's; bank_tab.py wires the events."""
from __future__ import annotations

import math
import weakref

import torch

from ..bank.memory import normalize
from ..bank.map2d import embed_2d, is_cached, uniform_frequency
from . import scatter
from .common import AppContext, Session, UserError, as_float, row_caption, row_pictures, thumbnails

SHOW_SELECTED = 48  # thumbnails shown for a selection (the most frequent rows first)
COLOR_BY = ("group", "frequency", "cluster")


def map_coords(ctx: AppContext, session: Session, method: str):
    """(coords, rows, note). A session's edited bank reuses the checkpoint bank's UMAP map: refitting UMAP for
    one swapped row would take a minute, so edited and added rows are drawn beside their nearest unedited row."""
    if method not in ("umap", "pca"):
        raise UserError(f"Unknown map method {method!r}; choose umap or pca")
    bank = ctx.bank(session)
    if session.bank is None or method == "pca" or is_cached(bank, method):
        coords, idx = embed_2d(bank, method, return_indices=True)
        return coords, idx, ""
    base = ctx.store.get(session.checkpoint).bank
    coords, idx = embed_2d(base, method, return_indices=True)
    mine, theirs = bank.column("rows"), base.column("rows")  # read as stored: neither bank is copied
    changed = (mine[idx].float() != theirs[idx].float()).any(dim=1)
    moved = torch.cat([idx[changed], torch.arange(len(base), len(bank))])
    if not len(moved) or bool(changed.all()):
        return coords, idx, ""
    anchors = normalize(theirs[idx[~changed]])
    nearest = (normalize(mine[moved]) @ anchors.T).argmax(dim=1)
    placed = coords[~changed][nearest]
    span = (coords.max(0).values - coords.min(0).values).clamp_min(1e-6)
    placed = placed + 0.01 * span * torch.randn(placed.shape, generator=torch.Generator().manual_seed(0))
    coords = torch.cat([coords[~changed], placed])
    idx = torch.cat([idx[~changed], moved])
    note = (f"; {len(moved)} row(s) edited in this session are drawn beside their nearest unedited row "
            f"(the {method.upper()} map is not refitted for session edits)")
    return coords, idx, note


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
    if color_by == "group" and bank.labels is not None:
        return scatter.group_colours(bank.labels[idx].numpy(), bank.label_names), ""
    if uniform is None:
        return scatter.value_colours(bank.freq[idx].double().numpy()), ""
    # one colour for every point: a scale from 0.9 to 1.1 would say nothing
    return scatter.one_colour(), (f"; {uniform.split(':')[0]}, so there is nothing to colour by"
                                  if color_by == "frequency" else "")


def map_view(ctx: AppContext, session: Session, method: str, color_by: str, coords=None, rows=None, clusters=None):
    """(token, header, entry, note) of the session's map, packed once per bank, method and colouring (sessions on
    the checkpoint's bank share it). `coords`/`rows`/`clusters` give a map computed elsewhere (a whole-bank layout);
    by default map_coords' (embed_2d's, a subsample for banks over 50,000 rows)."""
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
        coords, idx, note = map_coords(ctx, session, method)
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
        selected = selected[bank.freq[selected].argsort(descending=True, stable=True)]
        order = "most frequent"
    else:  # equal frequencies order nothing: list the rows as the pages do
        selected = selected.sort().values
        order = "first (by row number)"
    shown = selected[:SHOW_SELECTED].tolist()
    summary = f"{len(selected):,} rows {where}" + (f"; the {len(shown)} {order} shown" if len(selected) > len(shown)
                                                    else "")
    return thumbnails(bank, shown), shown, summary


def bank_map(ctx: AppContext, session: Session, method: str, color_by: str, x0, x1, y0, y1, row=None):
    """(map props, selected thumbnails, selected rows, summary) for the map and the rows in a box given in percent
    of the map's extent (the API's way to select; in the page, box and lasso are drawn on the map)."""
    token, header, entry, note = map_view(ctx, session, method, color_by)
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
