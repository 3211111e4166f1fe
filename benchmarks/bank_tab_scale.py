"""The app's Bank tab, server side, on a bank of ImageNet's size (1.28M x 768 fp16), end to end without a browser:
the calls the page's events make (app/mapping.py, app/bank_tab.py) on a real AppContext, timed with the process's
memory after each, against the same steps as they were before the whole-bank map (embed_2d's 50,000-row
subsample, and edited rows found by comparing the mapped rows) in the same run.

    python benchmarks/bank_tab_scale.py --work /tmp/banktab                  # 1,280,000 rows: about 6-8 minutes
    python benchmarks/bank_tab_scale.py --work /tmp/banktab --rows 120000    # a quicker run

The bank: benchmarks/bank_scale.py's synthetic clustered rows (1,000 Gaussian clusters, fp16), its cluster as the
row's group (label), frequencies drawn from 1..99; written once to WORK/bank-<rows>.safetensors, streamed (made slice
by slice as the file is written: never held whole) and reused by later runs; opened memory-mapped (MemoryBank.load),
as the app opens a checkpoint's bank. Caches (GMEM_CACHE: the map, the search index, row pictures) live under
WORK/cache and are emptied at the start, so that first calls compute what a first visitor's would.

The app's pipeline pairs the bank with a tiny random SiT of snippet width 768 (8x8 pixels): the map's calls never
run the model; a row's details show its picture, which for a bank without thumbnails is the row's generation from
seed 0, made here by the tiny model (about as fast as reading a thumbnail: a real checkpoint takes seconds more).
Session edits are made as the Swap tab makes them (ctx.private_bank, then replace / add with the "your upload"
group), with snippets drawn from the bank's clusters in place of an encoded upload.

Per stage: seconds, and from /proc/self/status VmRSS (resident, the mapped bank's pages read included), RssAnon (the
process's own memory: a copy of the rows would show here) and the peak (VmHWM, reset before each stage).
Writes benchmarks/results/bank_tab_scale.json and .md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import gzip
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, encoder_depth=1,
             projector_dim=32, repa_dim=16, snippet_dim=768)  # tests' TINY at the bank's width


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the bank file and the caches")
    parser.add_argument("--rows", type=int, default=1_280_000, help="bank rows (default 1,280,000, ImageNet's)")
    parser.add_argument("--edits", type=int, default=100, help="session edits, half replaced rows, half added")
    parser.add_argument("--row", type=int, default=123_456, help="the row whose details are shown")
    return parser.parse_args()


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:  # before the package reads it: every cache of this run under WORK/cache
    os.environ["GMEM_CACHE"] = str((ARGS.work / "cache").resolve())

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bank_scale import CENTRES, DIM, clustered, memory_kb, reset_peak  # noqa: E402
from gmem_explore import GMemPipeline, MemoryBank, build_model  # noqa: E402
from gmem_explore.app import mapping  # noqa: E402
from gmem_explore.app.bank_tab import row_details  # noqa: E402
from gmem_explore.app.common import AppContext, PipelineStore, Session  # noqa: E402
from gmem_explore.app.swap_tab import upload_label  # noqa: E402
from gmem_explore.autoencoders import PixelSpace  # noqa: E402
from gmem_explore.bank import map2d, normalize  # noqa: E402
from gmem_explore.bank import index as bank_index  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic, write_streaming  # noqa: E402


# ---- the bank ------------------------------------------------------------------------------------------------------
class StreamedRows:
    """The bank's rows made slice by slice as write_streaming asks for them (clustered, seeded by the slice's first
    row), each slice's clusters written into `labels` on the way: write_streaming writes the rows before the
    labels, so the labels are complete when their turn comes (checked after loading)."""

    def __init__(self, n: int, centres: torch.Tensor, labels: torch.Tensor):
        self.shape, self.dtype, self.centres, self.labels = torch.Size((n, DIM)), torch.float16, centres, labels

    def __getitem__(self, key: slice) -> torch.Tensor:
        start, stop = key.start, min(key.stop, self.shape[0])
        rows, labels = clustered(stop - start, 1 + start, self.centres, with_labels=True)
        self.labels[start:stop] = labels
        return rows


def make_bank(path: Path, n: int) -> float:
    t = time.perf_counter()
    centres = normalize(torch.randn(CENTRES, DIM, generator=torch.Generator().manual_seed(0)))
    labels = torch.full((n,), -1, dtype=torch.long)
    freq = torch.randint(1, 100, (n,), generator=torch.Generator().manual_seed(3)).double()
    meta = {"format": "gmem-explore-bank-1", "label_names": [f"group {i:03d}" for i in range(CENTRES)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_streaming(path, {"rows": StreamedRows(n, centres, labels), "freq": freq, "labels": labels}, None, meta)
    return time.perf_counter() - t


def open_bank(path: Path, n: int) -> MemoryBank:
    bank = MemoryBank.load(path)  # memory-mapped, as the app opens a checkpoint's bank
    labels = bank.column("labels")[:]
    if len(bank) != n or bank.dim != DIM or int(labels.min()) < 0 or int(labels.max()) >= CENTRES:
        raise SystemExit(f"{path} is not this benchmark's bank of {n} rows: delete it and run again")
    return bank


# ---- measuring -----------------------------------------------------------------------------------------------------
class Stages:
    """Seconds and memory (MB) per stage: resident, anonymous and peak after it, and what each added."""

    def __init__(self):
        self.out: dict[str, dict] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        gc.collect()
        reset_peak()
        start = memory_kb()
        record: dict = {}
        t = time.perf_counter()
        yield record
        seconds = time.perf_counter() - t
        end = memory_kb()
        mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
        record.update(s=round(seconds, 4), rss_mb=mb(end["VmRSS"]), anon_mb=mb(end["RssAnon"]),
                      rss_added_mb=mb(end["VmRSS"] - start["VmRSS"]), anon_added_mb=mb(end["RssAnon"] - start["RssAnon"]),
                      peak_added_mb=mb(end["VmHWM"] - start["VmRSS"]), load_1min=round(os.getloadavg()[0], 2))
        self.out[name] = record
        print(f"{name}: {record}", flush=True)


def lasso(coords: np.ndarray, share: float, corners: int = 100) -> list[list[float]]:
    """A round lasso of `corners` corners around the map's median point holding about `share` of the points."""
    centre = np.median(coords, axis=0)
    radius = float(np.quantile(np.linalg.norm(coords - centre, axis=1), share))
    angles = np.linspace(0, 2 * np.pi, corners, endpoint=False)
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1).tolist()


def old_map_coords(base: MemoryBank, bank: MemoryBank, cache_dir: Path):
    """map_coords for an edited session as it was (before whole_map): embed_2d's 50,000-row subsample of the
    checkpoint's bank, edited rows found by comparing the mapped rows in float32, each moved row placed beside the
    most similar unedited mapped row (a product with all 50,000 of them)."""
    coords, idx = map2d.embed_2d(base, "umap", cache_dir=cache_dir, return_indices=True)
    mine, theirs = bank.column("rows"), base.column("rows")
    changed = (mine[idx].float() != theirs[idx].float()).any(dim=1)
    moved = torch.cat([idx[changed], torch.arange(len(base), len(bank))])
    anchors = normalize(theirs[idx[~changed]])
    nearest = (normalize(mine[moved]) @ anchors.T).argmax(dim=1)
    placed = coords[~changed][nearest]
    span = (coords.max(0).values - coords.min(0).values).clamp_min(1e-6)
    placed = placed + 0.01 * span * torch.randn(placed.shape, generator=torch.Generator().manual_seed(0))
    return torch.cat([coords[~changed], placed]), torch.cat([idx[~changed], moved])


def payload_figures(entry) -> dict:
    """What the browser fetches for the points (scatter.py map_data's reply: the base64 payload) and its gzip size
    (for a server or proxy that compresses; gradio's own replies are not compressed)."""
    raw = entry.view.payload.encode("ascii")
    return {"points": int(entry.view.header["count"]), "payload_mb": round(len(raw) / 2**20, 2),
            "payload_gzip_mb": round(len(gzip.compress(raw, 6)) / 2**20, 2),
            "header_kb": round(len(json.dumps(entry.view.header)) / 1024, 1), "rows_sent": entry.view.header["rows"],
            "drawn_last": entry.view.header["top"]}


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU used, torch threads "
            f"{torch.get_num_threads()}, {datetime.date.today()}")


def factory_for(path: Path, n: int):
    def factory(name: str) -> GMemPipeline:
        torch.manual_seed(0)
        return GMemPipeline(build_model(**MODEL).eval(), open_bank(path, n), PixelSpace(MODEL["input_size"]),
                            sampler={"method": "euler", "steps": 4}, info={"name": name})
    return factory


def count_of(summary: str) -> int:
    """The row count a listing's summary starts with ('128,013 rows in the lasso; ...')."""
    return int(summary.split(" rows")[0].replace(",", ""))


# ---- the run -------------------------------------------------------------------------------------------------------
def edit_session(ctx: AppContext, session: Session, edits: int, rows: int) -> dict:
    """`edits` edits as the Swap tab makes them: half replace distinct random rows, half add rows; each snippet is
    a fresh draw from one of the bank's clusters (an upload's snippet). Returns {row: (snippet, cluster)}."""
    centres = normalize(torch.randn(CENTRES, DIM, generator=torch.Generator().manual_seed(0)))
    snippets, clusters = clustered(edits, 999, centres, with_labels=True)
    targets = torch.randperm(rows, generator=torch.Generator().manual_seed(5))[:edits - edits // 2].tolist()
    made = {}
    for i in range(edits):
        bank = ctx.private_bank(session)  # copy-on-first-edit, within the server's limit
        snippet = snippets[i:i + 1].to(bank.dtype)
        if i % 2 == 0:
            r = targets[i // 2]
            bank.replace(r, snippet[0], label=upload_label(bank))
            session.edits.append(f"replaced row {r} with the uploaded image")
        else:
            (r,) = bank.add(snippet, labels=[upload_label(bank)]).tolist()
            session.edits.append(f"added row {r} from the uploaded image")
        made[r] = (snippets[i], int(clusters[i]))
    return made


def check_placement(base: MemoryBank, entry, made: dict, rows: int) -> dict:
    """Where the session's moved rows landed: beside the checkpoint row nearest to their new content (exact search)
    and among their own cluster's rows (the true cluster of the map's 10 nearest unmoved points)."""
    import faiss

    from gmem_explore.bank.whole_map import whole_map

    view = entry.view
    moved = np.array(sorted(made))
    tail = view.rows[-len(moved):]
    assert sorted(tail.tolist()) == moved.tolist(), "the moved rows are not the map's last points"
    assert len(np.unique(view.rows)) == len(view.rows), "a row is on the map twice"
    placed = view.coords[-len(moved):]
    snippets = torch.stack([made[int(r)][0] for r in tail]).float()
    truth = np.array([made[int(r)][1] for r in tail])
    whole = whole_map(base, "umap", progress=False).coords.numpy()  # the checkpoint's map, read from the cache
    span = whole.max(0) - whole.min(0)
    nearest, _ = base.nearest(snippets, 1, exclude_self=False, exact=True)
    miss = np.linalg.norm((placed - whole[nearest[:, 0].numpy()]) / span, axis=1)
    labels = base.column("labels")[:].numpy()
    index = faiss.IndexFlatL2(2)
    index.add(np.ascontiguousarray(view.coords[:-len(moved)]))
    _, ids = index.search(np.ascontiguousarray(placed), 10)
    votes = labels[view.rows[:-len(moved)][ids]]
    majority = np.array([np.bincount(v).argmax() for v in votes])
    return {"moved_rows": len(moved), "within_5pct_of_exact_nearest_row": round(float((miss < 0.05).mean()), 3),
            "median_distance_to_exact_nearest_row_pct_of_span": round(float(100 * np.median(miss)), 3),
            "own_cluster_among_10_nearest_points": round(float((majority == truth).mean()), 3)}


def new_steps(st: Stages, ctx: AppContext, args, out: dict) -> None:
    rows = args.rows
    session = ctx.new_session()
    base = ctx.bank(session)
    placed, computed = [], []
    real = mapping.whole_map
    mapping.whole_map = lambda *a, **k: computed.append(real(*a, **k)) or computed[-1]  # its stages' seconds
    with st.stage("map_view, first: whole_map computed (fingerprint, UMAP fit, k-means, placement), packed") as r:
        token, header, entry, note = mapping.map_view(ctx, session, "umap", "group",
                                                      progress=lambda done, total: placed.append(done))
        r["progress_calls"] = len(placed)
    mapping.whole_map = real
    out["whole_map_stages_s"] = computed[0].seconds
    assert header["count"] == rows, f"the map holds {header['count']} points, not {rows}"
    with st.stage("map_view, again (same colouring: its packed map by token)"):
        again = mapping.map_view(ctx, session, "umap", "group")[0]
    assert again == token
    for colour in ("frequency", "cluster"):
        with st.stage(f"map_view, colour by {colour} (whole_map read from its cache, packed)"):
            mapping.map_view(ctx, session, "umap", colour)
    out["payload"] = payload_figures(entry)
    polygon = lasso(entry.view.coords, 0.10)
    with st.stage("region: lasso of 100 corners, about 10% of the points") as r:
        summary = mapping.region(ctx, session, token, polygon)[2]
        r["selected"] = count_of(summary)
    with st.stage("region: whole map (Clear selection)") as r:
        r["selected"] = count_of(mapping.region(ctx, session, token, None)[2])
    for name, box in (("whole map (the page's first draw)", (0, 100, 0, 100)), ("box 40-60 % x 40-60 %", (40, 60, 40, 60))):
        with st.stage(f"bank_map: the API's box, {name}") as r:
            r["selected"] = count_of(mapping.bank_map(ctx, session, "umap", "group", *box, row=args.row)[3])
    with st.stage("row_details, first (builds the search index: once per bank, cached on disk)") as r:
        details = row_details(ctx, session, args.row)
        r["neighbours"] = len(details[3])
    with st.stage("row_details, another row (index built)") as r:
        r["neighbours"] = len(row_details(ctx, session, args.row + 1)[3])

    edited = Session(session.checkpoint)
    with st.stage(f"session copy + {args.edits} edits (Swap tab's replace / add)") as r:
        made = edit_session(ctx, edited, args.edits, rows)
        r["own_mb"] = round(edited.bank.own_bytes() / 2**20, 2)
    with st.stage("map_view, edited session (map_coords: changed_rows + nearest anchors), packed") as r:
        token2, header2, entry2, _ = mapping.map_view(ctx, edited, "umap", "group")
        r["points"] = header2["count"]
    record = st.out["map_view, edited session (map_coords: changed_rows + nearest anchors), packed"]
    adds = args.edits // 2
    assert header2["count"] == rows + adds, f"{header2['count']} points, not {rows} + {adds}"
    assert record["anon_added_mb"] < 1024 and record["peak_added_mb"] < 1024, f"a copy of the rows? {record}"
    out["edited_payload"] = payload_figures(entry2)
    out["placement"] = check_placement(base, entry2, made, rows)
    assert out["placement"]["within_5pct_of_exact_nearest_row"] >= 0.9, out["placement"]
    assert out["placement"]["own_cluster_among_10_nearest_points"] >= 0.9, out["placement"]
    with st.stage("region on the edited session's map: lasso, about 10%") as r:
        r["selected"] = count_of(mapping.region(ctx, edited, token2, lasso(entry2.view.coords, 0.10))[2])
    # where an edited session's map spends its time, each part alone (none of them keeps state)
    mine, theirs = edited.bank.column("rows"), base.column("rows")
    with st.stage("- changed_rows (the copy's row map)") as r:
        r["changed"] = len(mapping.changed_rows(mine, theirs))
    moved = torch.tensor(sorted(made))
    with st.stage(f"- nearest anchors: the index's {mapping.ANCHORS} nearest rows of {len(moved)} moved rows"):
        base.nearest(mine[moved].float(), mapping.ANCHORS, exclude_self=False, progress=False)
    with st.stage("- map_spacing (the moved rows' offset)"):
        mapping.map_spacing(torch.from_numpy(entry.view.coords))
    with st.stage("(not done since this branch: the hash of the edited rows, to look for their own cached map)"):
        bank_index.fingerprint(mine)
    out["edited_session"] = edited  # kept for the baseline's edited map


def before_steps(st: Stages, ctx: AppContext, args, out: dict) -> None:
    """The same steps with the map as it was: embed_2d's 50,000-row subsample (its own cache folder, so that its
    fit is not read from the new map's), packed by today's map_view (coords given)."""
    folder = ctx_cache() / "before"
    session = ctx.new_session()
    base = ctx.bank(session)
    with st.stage("before: first map (embed_2d: UMAP on a 50,000-row subsample), packed") as r:
        coords, idx = map2d.embed_2d(base, "umap", cache_dir=folder, return_indices=True)
        token, header, entry, _ = mapping.map_view(ctx, session, "umap", "group", coords=coords, rows=idx)
        r["points"] = header["count"]
    with st.stage("before: another colouring (embed_2d read from its cache), packed"):
        coords, idx = map2d.embed_2d(base, "umap", cache_dir=folder, return_indices=True)
        mapping.map_view(ctx, session, "umap", "frequency", coords=coords, rows=idx)
    out["before_payload"] = payload_figures(entry)
    with st.stage("before: region, lasso of 100 corners, about 10%") as r:
        r["selected"] = count_of(mapping.region(ctx, session, token, lasso(entry.view.coords, 0.10))[2])
    with st.stage("before: bank_map's box, whole map") as r:
        inside = mapping.box_mask(torch.from_numpy(entry.view.coords), (0, 100, 0, 100))
        r["selected"] = count_of(mapping.listing(base, torch.from_numpy(entry.view.rows)[inside], "on the map")[2])
    edited = out.pop("edited_session")
    with st.stage("before: edited session's map (mapped rows compared, 50,000 anchors), packed") as r:
        coords, idx = old_map_coords(base, edited.bank, folder)
        r["points"] = mapping.map_view(ctx, edited, "umap", "group", coords=coords, rows=idx)[1]["count"]


def ctx_cache() -> Path:
    return Path(os.environ["GMEM_CACHE"])


def main(args) -> None:
    work = args.work.resolve()
    shutil.rmtree(ctx_cache(), ignore_errors=True)  # first calls compute what a first visitor's would
    path = work / f"bank-{args.rows}.safetensors"
    out = {"rows": args.rows, "dim": DIM, "groups": CENTRES, "edits": args.edits, "machine": machine(),
           "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    if not path.is_file():
        out["make_bank_s"] = round(make_bank(path, args.rows), 1)
    out["bank_file_mb"] = round(path.stat().st_size / 2**20, 1)
    st = Stages()
    with st.stage("open: bank memory-mapped, tiny 768-wide pipeline, AppContext"):
        ctx = AppContext(PipelineStore(factory_for(path, args.rows), "scale"))
        base = ctx.store.get().bank
    with st.stage("numba compilation of UMAP (once per process; in neither first map)"):
        map2d.embed_2d(base.column("rows")[:4500], "umap", cache_dir=False, max_rows=4500)
    new_steps(st, ctx, args, out)
    before_steps(st, ctx, args, out)
    out["stages"] = st.out
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "bank_tab_scale.json", (json.dumps(out, indent=1) + "\n").encode())
    text = markdown(out)
    notes = RESULTS / "bank_tab_scale_notes.md"  # what the runs found, written by hand
    write_bytes_atomic(RESULTS / "bank_tab_scale.md", (text + ("\n" + notes.read_text() if notes.is_file() else "")).encode())
    print(text)


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def markdown(r: dict) -> str:
    p, e, b = r["payload"], r["edited_payload"], r["before_payload"]
    lines = [f"# The Bank tab's server side on a {r['rows']:,} x {r['dim']} fp16 bank ({r['bank_file_mb']:,} MB, "
             f"memory-mapped), without a browser", "",
             f"Machine: {r['machine']}. Load average (1, 5, 15 min) {r['load_average_start']} at the start, "
             f"{r['load_average_end']} at the end (other jobs share the 2 cores). "
             + (f"Bank file written (streamed) in {r['make_bank_s']} s; " if "make_bank_s" in r else
                "Bank file reused from an earlier run; ")
             + f"{r['groups']:,} groups (the rows' clusters), frequencies 1-99. Caches emptied at the start.", "",
             "MB columns from /proc/self/status: RSS counts the memory-mapped bank's pages read (a whole-bank pass "
             "reads the whole file); anonymous memory is the process's own (a copy of the rows would show there); "
             "peak is VmHWM reset before each stage, less RSS at its start.", "",
             "| stage | time | RSS MB | anon MB | RSS added | anon added | peak added | rows / points | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in r["stages"].items():
        count = s.get("selected", s.get("points", s.get("changed", s.get("neighbours", ""))))
        lines.append(f"| {name} | {duration(s['s'])} | {s['rss_mb']:,} | {s['anon_mb']:,} | {s['rss_added_mb']} | "
                     f"{s['anon_added_mb']} | {s['peak_added_mb']} | {count if count == '' else f'{count:,}'} | "
                     f"{s['load_1min']} |")
    pl, w = r["placement"], r["whole_map_stages_s"]
    lines += ["", f"The first map's whole_map: row norms + fingerprint {w.get('fingerprint')} s, UMAP fit on 50,000 rows "
              f"{w.get('fit')} s, PCA + k-means {w.get('cluster_fit')} s, placing and clustering every row "
              f"{w.get('place')} s; the rest of the first map_view is colouring and packing.", "",
              "What the browser fetches for the points (scatter.py `map_data`: base64 of x, y uint16 and a colour "
              "byte per point, plus each point's row as int32 where the points are not every row once, else the "
              "row of each point drawn last, after row order):", "",
              "| map | points | payload MB | gzip MB | header KB | row numbers sent |", "|---|---|---|---|---|---|"]
    for name, x in (("whole map, checkpoint's bank", p), ("whole map, edited session", e),
                    ("before: 50,000-row subsample", b)):
        lines.append(f"| {name} | {x['points']:,} | {x['payload_mb']} | {x['payload_gzip_mb']} | {x['header_kb']} | "
                     f"{'every point' if x['rows_sent'] else str(x.get('drawn_last', 0)) + ' drawn last'} |")
    median = pl["median_distance_to_exact_nearest_row_pct_of_span"]
    lines += ["", f"The edited session's map ({r['edits']} edits: {pl['moved_rows']} moved rows, replaced and added): "
              f"{pl['within_5pct_of_exact_nearest_row']:.0%} of them lie within 5% of the map's span of the checkpoint "
              f"row nearest to their new content by exact search (median {median}%; the offset from the anchor is "
              f"half the map's local length, mapping.map_spacing, at most 1% of the span), and "
              f"{pl['own_cluster_among_10_nearest_points']:.0%} among their own cluster's rows (the true cluster of "
              f"most of the map's 10 nearest unmoved points).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(ARGS)
