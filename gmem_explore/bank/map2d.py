"""A 2-D map of a memory bank (UMAP or PCA of its normalised rows), cached on disk, and a scatter figure of it.

    coords = embed_2d(bank)                      # float32 (N, 2); the second call reads the cache (milliseconds)
    fig = scatter_figure(coords, color_by=bank.labels, label_names=bank.label_names,
                         selected=in_box, highlight=[3])   # the box in full colour, the rest faded; row 3 ringed

Rows are L2-normalised first, as the model sees them, so euclidean distance in the fit is cosine distance.
The cache key is a hash of the rows' bytes (as stored) plus the method and its parameters: an edited bank gets a
new map, an unchanged one is never refitted. Cache files are safetensors under $GMEM_CACHE/maps, or
~/.cache/gmem-explore/maps when GMEM_CACHE is unset; an unwritable cache only costs a warning.

Maps shipped with the package: a cache file in a folder of gmem_explore/weights/ (emoji-32's UMAP map, beside its
bank) is read like one in the cache, so the embedded bank's map opens at once on a fresh install, without fitting
UMAP (a minute, and numba's compilation, on 2 CPU cores). `ship_map(bank, folder)` writes one; a bank that changed
no longer matches its key, and its map is fitted (and cached) as any other.

Banks larger than `max_rows` are mapped through a seeded random subsample of `max_rows` rows: UMAP on 50,000
rows takes about a minute on 2 CPU cores, on the released 640,000 it would take far longer. The coordinates
then belong to the rows `subsample_indices(len(bank), max_rows, seed)` (sorted), which
`embed_2d(..., return_indices=True)` also returns.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from .checks import chunks
from .memory import MemoryBank, normalize
from ..safefiles import load_tensors, save_tensors
from ..values import as_whole, is_whole

METHODS = ("umap", "pca")
UMAP_PARAMS = {"n_neighbors": 15, "min_dist": 0.1}
MIN_UMAP_ROWS = 32  # below this UMAP's neighbour graph is degenerate (its spectral init fails); PCA is used
FADED_ALPHA = 0.12  # points outside a selection: their layout stays visible, their colours recede
CACHE_VERSION = 1  # bump when the fitting code changes, so old cache files are not reused


SHIPPED = Path(__file__).resolve().parents[1] / "weights"  # folders of embedded checkpoints; their maps are read too


def default_cache_dir() -> Path:
    root = os.environ.get("GMEM_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "gmem-explore") / "maps"


def subsample_indices(n: int, max_rows: int, seed: int = 0) -> torch.Tensor:
    """The sorted rows a map of an n-row bank is fitted on: all of them, or a seeded random max_rows of them."""
    if n <= max_rows:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_rows].sort().values


def _rows_of(bank) -> torch.Tensor:
    # a bank's rows as stored: a copy edited in a session is read through its overlay, never copied whole
    rows = bank.column("rows") if isinstance(bank, MemoryBank) else torch.as_tensor(bank)
    if rows.ndim != 2 or not rows.is_floating_point():
        raise ValueError(f"embed_2d needs a MemoryBank or a float (N, D) matrix; got {tuple(rows.shape)} {rows.dtype}")
    return rows


def cache_key(rows: torch.Tensor, method: str, params: dict) -> str:
    """sha256 of the rows' bytes (in their stored dtype), their shape and the fit's settings."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{method}|{sorted(params.items())}|{tuple(rows.shape)}|{rows.dtype}".encode())
    rows = rows.contiguous()
    for start, stop in chunks(rows.shape[0]):  # a 640k-row bank is never copied whole
        h.update(rows[start:stop].view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """The first two principal components, signs fixed (largest |loading| positive) so maps are reproducible."""
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2:
        return torch.zeros(x.shape[0], 2)
    _, _, v = torch.linalg.svd(x.double(), full_matrices=False)
    comps = v[:2]
    if comps.shape[0] < 2:
        comps = torch.cat([comps, torch.zeros(2 - comps.shape[0], comps.shape[1], dtype=comps.dtype)])
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).clamp_min(0) * 2 - 1
    return (x.double() @ (comps * signs).T).float()


def umap_2d(x: torch.Tensor, seed: int) -> torch.Tensor:
    import umap  # imported here: its first import compiles with numba for about 10 s

    reducer = umap.UMAP(n_components=2, random_state=seed, **UMAP_PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": determinism is what we want
        out = reducer.fit_transform(x.numpy())
    return torch.from_numpy(out).float()


def _plan(bank, method, cache_dir, max_rows, seed):
    rows = _rows_of(bank)
    idx = subsample_indices(rows.shape[0], max_rows, seed)
    chosen = rows[:] if len(idx) == rows.shape[0] else rows[idx]  # rows[:]: a tensor (a view of a plain one)
    if chosen.shape[0] < MIN_UMAP_ROWS:
        method = "pca"
    params = {"seed": seed, **(UMAP_PARAMS if method == "umap" else {})}
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / f"{method}-{cache_key(chosen, method, params)}.safetensors"
    return rows, idx, chosen, method, params, path


def _check_arguments(method, max_rows, seed) -> tuple[int, int]:
    """(max_rows, seed) as ints, after the checks embed_2d and is_cached share (is_cached answers for the same
    call)."""
    if method not in METHODS:
        raise ValueError(f"Unknown map method {method!r}; choose one of {METHODS}")
    if not is_whole(max_rows, 2):
        raise ValueError(f"max_rows must be an integer >= 2; got {max_rows!r}")
    if not is_whole(seed):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    return as_whole(max_rows), as_whole(seed)


def _shipped_path(path: Path | None) -> Path | None:
    """The shipped map of the same name as a cache file (same method and key), if the package has one."""
    if path is None or not SHIPPED.is_dir():
        return None
    return next((p for p in sorted(SHIPPED.glob(f"*/{path.name}")) if p.is_file()), None)


def _stored_coords(path: Path | None, rows: int, warn: bool) -> torch.Tensor | None:
    """The coordinates of this map from a shipped map (read-only, read first), else from the cache."""
    shipped = _shipped_path(path)
    coords = None if shipped is None else _cached_coords(shipped, rows, warn=False)
    return coords if coords is not None else _cached_coords(path, rows, warn)


def ship_map(bank, folder, method: str = "umap", max_rows: int = 50_000, seed: int = 0) -> Path:
    """Fit the bank's map (as embed_2d does, without the cache) and write it into `folder` under its cache name,
    for a folder of gmem_explore/weights/ to ship it (pyproject's package-data takes weights/*/*.safetensors)."""
    coords = embed_2d(bank, method, cache_dir=False, max_rows=max_rows, seed=seed)
    _, _, _, method, _, path = _plan(bank, method, folder, *_check_arguments(method, max_rows, seed)[:2])
    save_tensors(path, {"coords": coords}, {"method": method, "rows": str(len(bank)), "key": path.stem.split("-", 1)[1]})
    return path


def _cached_coords(path: Path | None, rows: int, warn: bool) -> torch.Tensor | None:
    """The coordinates stored at `path` when the file is this map's, else None (no file, or one not to trust).

    Trusted only when the file says it is this map (its key: a file copied or renamed from another bank's is not)
    and holds what a fit returns: float32, one finite point per mapped row. A file that is there but fails this
    (truncated by a full disk, written by another version) is refitted and overwritten; with `warn` it is named,
    so a map that takes a minute instead of milliseconds is explained."""
    if path is None or not path.is_file():
        return None
    key = path.stem.split("-", 1)[1]
    try:
        tensors, meta = load_tensors(path, mmap=False)
        coords = tensors["coords"]
        if (meta.get("key") == key and coords.shape == (rows, 2) and coords.dtype == torch.float32
                and bool(torch.isfinite(coords).all())):
            return coords
        why = ("it was written for another bank (copied or renamed)" if meta.get("key") != key else
               f"it holds {tuple(coords.shape)} {coords.dtype} coordinates, not ({rows}, 2) finite float32 ones")
    except Exception as e:  # noqa: BLE001 - any file we cannot read is a cache miss, never a failed map
        why = f"it cannot be read ({type(e).__name__}: {str(e).replace(str(path), 'the file')[:200]})"
    if warn:
        warnings.warn(f"ignoring the bank-map cache file {path}: {why}; the map is fitted again and the file "
                      f"rewritten", stacklevel=3)
    return None


def is_cached(bank, method: str = "umap", cache_dir=None, max_rows: int = 50_000, seed: int = 0) -> bool:
    """Whether embed_2d with these arguments would read its cache instead of fitting (UMAP takes a while): a cache
    file that embed_2d would not trust (damaged, or another map's) counts as not cached."""
    max_rows, seed = _check_arguments(method, max_rows, seed)
    _, idx, _, _, _, path = _plan(bank, method, cache_dir, max_rows, seed)
    return _stored_coords(path, len(idx), warn=False) is not None


def embed_2d(bank, method: str = "umap", cache_dir=None, max_rows: int = 50_000, seed: int = 0,
             return_indices: bool = False):
    """float32 (M, 2) coordinates of a bank's rows (M = min(N, max_rows)); with return_indices, (coords, rows).

    `bank` is a MemoryBank or an (N, D) float matrix. cache_dir=None uses the default cache, False disables it.
    Banks with fewer than 32 rows are mapped with PCA whatever the method (UMAP needs a neighbourhood).
    A cache file that cannot be trusted is refitted with a warning that names it.
    """
    max_rows, seed = _check_arguments(method, max_rows, seed)
    rows, idx, chosen, method, params, path = _plan(bank, method, cache_dir, max_rows, seed)
    coords = _stored_coords(path, len(idx), warn=True)
    if coords is not None:
        return (coords, idx) if return_indices else coords
    key = None if path is None else path.stem.split("-", 1)[1]

    x = normalize(chosen)
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        rows_bad = idx[bad].tolist()
        raise ValueError(f"the bank holds NaN or infinite rows ({len(rows_bad)}, e.g. rows {rows_bad[:10]}); fix or "
                         f"remove them (bank.replace / bank.remove) before mapping it")
    coords = umap_2d(x, seed) if method == "umap" else pca_2d(x)
    coords = coords.contiguous().float()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(path, {"coords": coords}, {"method": method, "rows": str(rows.shape[0]), "key": key})
        except OSError as e:
            warnings.warn(f"could not write the bank-map cache {path}: {e}; the map will be refitted next time")
    return (coords, idx) if return_indices else coords


def uniform_frequency(bank) -> str | None:
    """The sentence saying rows are drawn uniformly when they are (no frequencies, or all equal), else None:
    a histogram, a colour scale or a 'most frequent' order of equal values would show nothing (a colour bar from
    0.9 to 1.1 with every point the same colour)."""
    column = bank.column("freq")  # read as stored: a bank shared with its copies is not copied
    if column is None:
        return "this bank has no frequencies: rows are drawn uniformly"
    freq = column[:]
    if len(bank) and bool((freq == freq[0]).all()):
        return f"all rows have frequency {float(freq[0]):g}: rows are drawn uniformly"
    return None


def scatter_figure(coords, color_by=None, label_names=None, highlight=None, title: str | None = None,
                   size: tuple[float, float] = (6.0, 5.0), selected=None):
    """A matplotlib Figure of the map.

    color_by: integer labels (one colour per group, legend from label_names; -1 = "added"), or float values such
    as freq (a colour bar; log scale when they span more than 100x), or None. highlight: point indices to ring
    (meant for a few points: rings on many points merge into one red blob). selected: point indices (or a bool
    mask) to keep in full colour while every other point is faded, so a box selection stays readable with its
    group colours; None keeps every point in full colour.
    Builds a Figure without pyplot, so it is safe in a server thread and never opens a window.
    """
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    coords = torch.as_tensor(coords).float()
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2); got {tuple(coords.shape)}")
    n = coords.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    if selected is not None:
        sel = torch.as_tensor(selected)
        if sel.dtype == torch.bool:
            if sel.shape != (n,):
                raise ValueError(f"a selected mask must have one value per point ({n}); got {tuple(sel.shape)}")
            keep = sel.clone()
        else:
            sel = sel.long().reshape(-1)
            keep = torch.zeros(n, dtype=torch.bool)
            keep[sel[(sel >= 0) & (sel < n)]] = True
    keep = keep.numpy()
    fig = Figure(figsize=size, dpi=100)
    ax = fig.add_subplot()
    xy = coords.numpy()
    point = max(2.0, min(30.0, 3000.0 / max(n, 1)))  # big dots for small banks, specks for 50k rows

    def draw(mask, label=None, **style):
        """Faded points first (unlabelled, so the legend shows full colours), then the kept ones on top."""
        faded = mask & ~keep
        if faded.any():
            ax.scatter(xy[faded, 0], xy[faded, 1], s=point, alpha=FADED_ALPHA, linewidths=0, **style)
        return ax.scatter(xy[mask & keep, 0], xy[mask & keep, 1], s=point, alpha=0.85, linewidths=0, label=label,
                          **style)

    everything = torch.ones(n, dtype=torch.bool).numpy()
    if color_by is None:
        draw(everything, c="tab:blue")
    else:
        values = torch.as_tensor(color_by)
        if values.shape != (n,):
            raise ValueError(f"color_by must have one value per point ({n}); got shape {tuple(values.shape)}")
        if values.is_floating_point():
            v = values.double().numpy()
            positive = v[v > 0]
            # one norm for the faded and the kept points, so a colour means the same value in both
            norm = LogNorm(positive.min(), positive.max()) if len(positive) == n and n and \
                positive.max() > 100 * positive.min() else Normalize(v.min() if n else 0, v.max() if n else 1)
            faded = ~keep
            if faded.any():
                ax.scatter(xy[faded, 0], xy[faded, 1], s=point, c=v[faded], cmap="viridis", norm=norm,
                           alpha=FADED_ALPHA, linewidths=0)
            sc = ax.scatter(xy[keep, 0], xy[keep, 1], s=point, c=v[keep], cmap="viridis", norm=norm, alpha=0.85,
                            linewidths=0)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label="frequency")
        else:
            import matplotlib

            cmap = matplotlib.colormaps["tab10" if n == 0 or int(values.max()) < 10 else "tab20"]
            for g in sorted(set(values.tolist())):
                m = (values == g).numpy()
                name = "added" if g < 0 else (label_names[g] if label_names and g < len(label_names) else str(g))
                draw(m, label=name, color="black" if g < 0 else cmap(g % cmap.N))
            # beside the map, not on it: loc="best" still covered a corner of points (9 groups in emoji-32); the
            # figure grows by the legend's width so the map keeps its size
            fig.set_size_inches(size[0] + 1.6, size[1])
            ax.legend(fontsize=7, markerscale=max(1.0, 6 / point ** 0.5), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      borderaxespad=0.0, frameon=False)
    if highlight is not None:
        h = torch.as_tensor(highlight, dtype=torch.long).reshape(-1)
        h = h[(h >= 0) & (h < n)].numpy()
        ax.scatter(xy[h, 0], xy[h, 1], s=max(40.0, point * 4), facecolors="none", edgecolors="red", linewidths=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
