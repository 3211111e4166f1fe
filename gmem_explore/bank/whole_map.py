"""A 2-D layout of every row of a bank (1.28M x 768 included), with k-means clusters, computed once and cached.

    m = whole_map(bank)              # WholeMap: coords (N, 2) float32, cluster (N,), fitted rows, method
    m = whole_map(bank, progress=False, progress_callback=lambda done, total: ...)   # for the app

How: the layout (UMAP or PCA, map2d.embed_2d's own fit and cache) is fitted on a seeded subsample of `fit_rows`
rows, the one embed_2d maps (map2d.subsample_indices); every other row is then placed from the fit, streaming
over the bank in chunks (memory-mapped or overlay rows are read a chunk at a time, never copied whole):
- PCA: the other rows are projected on the same two components (exact: PCA is linear).
- UMAP: each row is projected onto the fitted rows' first `dims` principal components, its `neighbours` nearest
  fitted rows there are found (faiss), and it lands at their UMAP coordinates' mean, weighted by a softmax of
  their distances (PlaceOptions).
k-means (faiss) on the fitted rows' first `cluster_dims` principal components gives the clusters, and every row
is assigned to its nearest centre in the same pass.
Banks of at most `fit_rows` rows are fitted whole: their coordinates are embed_2d's (the shipped emoji-32 map is
read, not refitted).

Why nearest-neighbour placement and not UMAP's own `transform` (measured by benchmarks/bank_map.py --choose on the
clustered synthetic bank of benchmarks/bank_scale.py; results in benchmarks/results/bank_map.md):
- UMAP transform is slow and, on this bank, wrong: 1.16 s per 1,000 rows (24 min for the 1.23M rows outside a
  50,000-row fit on 2 cores), and a transformed row's 10 nearest fitted rows on the map share its cluster for only
  36% of rows (neighbour agreement with its 768-d neighbours 0.08): transformed rows drift off their clusters.
- Nearest fitted rows (this module) put 100% of placed rows among their own cluster's rows with 0.23 neighbour
  agreement, as good as the fit is for its own rows (1.0 and 0.25, each left out). 32, 64 or 128 PCA dimensions,
  5-20 neighbours and the softmax temperature changed these figures by at most 0.015; IVF lists instead of exact
  search (42 ms against 400-800 ms per 1,000 rows on a loaded machine) changed none of them.
- The anchor (only neighbours near the nearest one on the map count) is for banks whose clusters hold few fitted
  rows: with 5 fitted rows per cluster (a 5,000-row fit of a 20,000-row bank) the plain weighted mean of 10
  neighbours put rows between islands (cluster accuracy 0.22, 32% of fitted rows placed from the others within r
  of their own place), anchored 0.64 and 98%, as good as the fit's own rows (0.63) and UMAP transform's (0.61).
The synthetic bank is the hard case for 64 principal components (its 1,000 centres spread evenly over all 768
dimensions); learned embeddings usually concentrate their variance in fewer directions.
The whole synthetic 1.28M x 768 fp16 bank (memory-mapped) took 116 s on 2 cores: row norms + fingerprint 7 s,
the 50,000-row UMAP fit 34 s, PCA + k-means 14 s, placing and assigning every row 61 s; peak RSS +0.8 GB (mostly
the bank's mapped pages); the cache file is 15 MB and reads in 0.07 s. Placement also needs only the fitted
coordinates, so it works from embed_2d's cache or a shipped map; `transform` needs the fitted UMAP object (its
neighbour graph), which is not cached (only safetensors are written, never pickles).

Rows with NaN or infinite values are left out of the fit and placed nowhere: their coordinates are NaN and their
cluster is -1 (a scatter plot skips NaN points). A bank with fewer than two usable rows is refused.

The cache: safetensors under map2d.default_cache_dir() (beside embed_2d's maps), named by a hash of the bank's
fingerprint (search.fingerprint: hashed once per bank and shared with the search index's cache) and every
setting. A file that is damaged, of another shape or another bank's is recomputed with a warning; a cache that
cannot be written costs a warning.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import map2d, search
from .checks import CHUNK
from .memory import MemoryBank
from ..safefiles import load_tensors, save_tensors
from ..values import as_whole

VERSION = 1  # bump when the placement or the clustering changes, so old cache files are not reused
MIN_FIT_ROWS = map2d.MIN_UMAP_ROWS  # UMAP's neighbour graph needs at least this many rows
DEFAULT_CLUSTERS = 64  # colours a person can still tell apart on a map, and a few hundred rows per cluster at 50k
POINTS_PER_CLUSTER = 39  # faiss k-means wants this many training rows per centre (it warns below)


@dataclass(frozen=True)
class PlaceOptions:
    """How rows outside the fit are placed and clustered (benchmarks/bank_map.py --choose measured these)."""

    dims: int = 64  # principal components of the fitted rows the neighbours are searched in
    neighbours: int = 10  # fitted rows a row's place is averaged from
    temperature: float = 1.0  # softmax weights exp(-(d - d_min) / (temperature * d_min)); d = squared distance
    anchor: float | None = 1.0  # only neighbours within anchor x map_scale of the nearest's place count; None: all
    lists: int = 256  # IVF lists of the fitted rows (at most; 100 fitted rows per list at least): 3x faster than
    probe: int = 16  # exact search at 50,000 fitted rows, with 99.96% of the exact neighbours (lists probed 16)
    # k-means runs on more components than the placement: on the synthetic 1,000-cluster bank (150,000 rows, 64
    # centres) a true cluster kept 85% of its rows in one k-means cluster with 64 components, 91% with 128, 95% with
    # 256 and 98% with all 768 (k-means 2 / 4 / 10 / 34 s)
    cluster_dims: int = 256
    kmeans_iterations: int = 20
    kmeans_restarts: int = 3  # k-means from 3 seeded k-means++ starts, the lowest error kept
    chunk: int = CHUNK  # rows read, normalised and placed at a time (65,536 x 768 float32 = 200 MB)


@dataclass(frozen=True, eq=False)
class WholeMap:
    """Every row's place on the map (the bank's row order). coords float32 (N, 2), NaN for unusable rows;
    cluster int64 (N,), -1 for them; fitted: the sorted rows the layout was fitted on; method "umap" or "pca";
    seconds: what each stage took ({"read": s} when read from the cache)."""

    coords: torch.Tensor
    cluster: torch.Tensor
    fitted: torch.Tensor
    method: str
    seconds: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.coords.shape[0]


def _check(bank, method, fit_rows, clusters, seed, options) -> tuple[MemoryBank, int, int | None, int]:
    if isinstance(bank, torch.Tensor):
        bank = MemoryBank(bank)  # keeps the tensor, copies nothing
    if not isinstance(bank, MemoryBank):
        raise ValueError(f"whole_map needs a MemoryBank or a float (N, D) tensor; got {type(bank).__name__}")
    if method not in map2d.METHODS:
        raise ValueError(f"Unknown map method {method!r}; choose one of {map2d.METHODS}")
    if as_whole(fit_rows, MIN_FIT_ROWS) is None:
        raise ValueError(f"fit_rows must be a whole number >= {MIN_FIT_ROWS} (UMAP needs a neighbourhood; 50,000 "
                         f"takes about a minute on 2 cores); got {fit_rows!r}")
    if clusters is not None and as_whole(clusters, 1) is None:
        raise ValueError(f"clusters must be a whole number >= 1 (or None: up to {DEFAULT_CLUSTERS}); got {clusters!r}")
    if as_whole(seed) is None:
        raise ValueError(f"seed must be an integer; got {seed!r}")
    counts = ("dims", "cluster_dims", "neighbours", "lists", "probe", "kmeans_iterations", "kmeans_restarts", "chunk")
    if not isinstance(options, PlaceOptions) or any(as_whole(getattr(options, name), 1) is None for name in counts) \
            or not options.temperature > 0 or (options.anchor is not None and not options.anchor > 0):
        raise ValueError(f"options must be a PlaceOptions with whole numbers >= 1, temperature > 0 and anchor > 0 "
                         f"or None; got {options!r}")
    if len(bank) < 2:
        raise ValueError(f"a map needs at least 2 rows; this bank has {len(bank)}: add rows first")
    return bank, as_whole(fit_rows), None if clusters is None else as_whole(clusters), as_whole(seed)


def _fitted_rows(usable: torch.Tensor, fit_rows: int, seed: int) -> torch.Tensor:
    """embed_2d's subsample (map2d.subsample_indices) of the usable rows: with no unusable row, the same rows."""
    if bool(usable.all()):
        return map2d.subsample_indices(usable.shape[0], fit_rows, seed)
    ok = usable.nonzero().flatten()
    return ok[map2d.subsample_indices(len(ok), fit_rows, seed)]


def _cache_path(bank, method, fit_rows, clusters, seed, options, cache_dir) -> Path | None:
    if cache_dir is False:
        return None
    settings = {"version": VERSION, "bank": search.fingerprint(bank), "method": method, "fit_rows": fit_rows,
                "clusters": clusters, "seed": seed, "umap": map2d.UMAP_PARAMS, **asdict(options)}
    settings.pop("chunk")  # how many rows are read at a time never changes the map
    key = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:32]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else map2d.default_cache_dir()
    return folder / f"whole-{method}-{key}.safetensors"


def _read_cache(path: Path | None, n: int, warn: bool) -> WholeMap | None:
    """The cached map at `path` when the file is this map's and holds what a computation returns, else None."""
    if path is None or not path.is_file():
        return None
    t = time.perf_counter()
    key = path.stem.rsplit("-", 1)[1]
    try:
        tensors, meta = load_tensors(path, mmap=False)
        coords, cluster, fitted = tensors["coords"], tensors["cluster"].long(), tensors["fitted"]
        placed = cluster >= 0
        why = None
        if meta.get("key") != key:
            why = "it was written for another bank or other settings (copied or renamed)"
        elif coords.shape != (n, 2) or coords.dtype != torch.float32 or cluster.shape != (n,) \
                or fitted.ndim != 1 or fitted.dtype != torch.int64:
            why = f"it holds {tuple(coords.shape)} coordinates and {tuple(cluster.shape)} clusters, not ({n}, 2), ({n},)"
        elif not (bool(torch.isfinite(coords[placed]).all()) and bool(torch.isnan(coords[~placed]).all())
                  and int(cluster.min()) >= -1 and int(cluster.max()) < int(meta.get("clusters", 0))
                  and len(fitted) >= 2 and int(fitted.min()) >= 0 and int(fitted.max()) < n
                  and bool(placed[fitted].all())):
            why = "its values are out of range (damaged)"
        if why is None:
            return WholeMap(coords, cluster, fitted, meta["method"], {"read": round(time.perf_counter() - t, 3)})
    except Exception as e:  # noqa: BLE001 - any file we cannot read is a cache miss, never a failed map
        why = f"it cannot be read ({type(e).__name__}: {str(e).replace(str(path), 'the file')[:200]})"
    if warn:
        warnings.warn(f"ignoring the whole-bank map cache file {path}: {why}; the map is computed again and the "
                      f"file rewritten", stacklevel=3)
    return None


def is_cached(bank, method: str = "umap", fit_rows: int = 50_000, clusters: int | None = None, seed: int = 0,
              cache_dir=None, options: PlaceOptions = PlaceOptions()) -> bool:
    """Whether whole_map with these arguments would read its cache (a file it would not trust counts as not)."""
    bank, fit_rows, clusters, seed = _check(bank, method, fit_rows, clusters, seed, options)
    path = _cache_path(bank, method, fit_rows, clusters, seed, options, cache_dir)
    return _read_cache(path, len(bank), warn=False) is not None


def pca_basis(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), components (dims, D)) of float32 rows x, float32; signs fixed as map2d.pca_2d fixes them (the
    largest |loading| positive), so the first two components project rows where pca_2d put the fitted ones."""
    mean = x.double().mean(0)
    centred = x.double() - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred)  # (D, D): cheaper than an SVD of 50,000 x 768
    comps = vectors[:, values.argsort(descending=True)[:min(dims, x.shape[1])]].T
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).clamp_min(0) * 2 - 1
    return mean.float(), (comps * signs).float()


def _normalised(chunk: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    x = chunk.float() / norms[:, None].clamp_min(1e-12)
    return torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)  # unusable rows: placed nowhere below


def kmeans_plus_plus(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k starting centres chosen among the rows x by greedy k-means++ (each of 2 + ln k candidates drawn by squared
    distance to the centres so far, the one that lowers the total most kept). faiss's own start (k random rows)
    often puts two centres in one cluster and one between two, and 20 iterations do not undo it: 8 clusters on a
    circle came out with an adjusted Rand index of 0.7-0.85 against 1.0 from this start."""
    g = torch.Generator().manual_seed(seed)
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(len(x), (1,), generator=g))]
    d = (x - x[chosen[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        weights = d if bool(d.sum() > 0) else torch.ones_like(d)  # every row already a centre: any will do
        candidates = torch.multinomial(weights, trials, replacement=True, generator=g)
        with_each = torch.minimum(d[None], torch.cdist(x[candidates], x).pow(2))
        best = int(with_each.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d = with_each[best]
    return x[chosen]


def _kmeans(faiss, fit_p: np.ndarray, k: int, options: PlaceOptions, seed: int):
    """faiss k-means from options.kmeans_restarts greedy k-means++ starts; the one of lowest error."""
    x, best = torch.from_numpy(fit_p), None
    for restart in range(options.kmeans_restarts):
        kmeans = faiss.Kmeans(fit_p.shape[1], k, niter=options.kmeans_iterations, seed=seed + restart, verbose=False)
        kmeans.train(fit_p, init_centroids=np.ascontiguousarray(kmeans_plus_plus(x, k, seed + restart).numpy()))
        if best is None or kmeans.obj[-1] < best.obj[-1]:
            best = kmeans
    return best


def _neighbour_index(faiss, fit_p: np.ndarray, options: PlaceOptions, seed: int):
    """The fitted rows' projections, searched exactly (few rows) or through IVF lists (PlaceOptions.lists)."""
    dims, lists = fit_p.shape[1], min(options.lists, fit_p.shape[0] // 100)
    if lists < 2 * options.probe:  # probing most lists: exact search costs the same
        index = faiss.IndexFlatL2(dims)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, lists)
        index.cp.seed = seed  # the same rows give the same lists
        index.train(fit_p)
        index.nprobe = options.probe
    index.add(fit_p)
    return index


def map_scale(fit_coords: torch.Tensor, k: int = 10, sample: int = 2000, seed: int = 0) -> float:
    """The map's local length: the median distance from a fitted row (a seeded sample of them) to its k-th nearest
    fitted row on the map; about a cluster's radius on UMAP maps."""
    import faiss

    xy = np.ascontiguousarray(fit_coords.numpy(), dtype=np.float32)
    pick = np.random.default_rng(seed).permutation(len(xy))[:sample]
    index = faiss.IndexFlatL2(2)
    index.add(xy)
    dist, _ = index.search(np.ascontiguousarray(xy[pick]), min(k + 1, len(xy)))
    return float(np.median(np.sqrt(dist[:, -1]))) or 1.0


def place(index, fit_coords: torch.Tensor, queries: np.ndarray, options: PlaceOptions, scale: float) -> torch.Tensor:
    """2-D places of projected rows from their nearest fitted rows (weighted_place)."""
    dist, ids = index.search(queries, min(options.neighbours, fit_coords.shape[0]))
    return weighted_place(dist, ids, fit_coords, options, scale)


def weighted_place(dist: np.ndarray, ids: np.ndarray, fit_coords: torch.Tensor, options: PlaceOptions,
                   scale: float) -> torch.Tensor:
    """The mean of the fitted rows `ids`' coordinates, weighted by exp(-(d - d_min) / (temperature * d_min)) of
    their squared distances d (scaled by the nearest one's, so dense and sparse regions weigh alike), counting only
    the neighbours that lie within anchor * scale of the nearest one on the map: neighbours from two islands
    would otherwise put the row in the empty space between them."""
    d = torch.from_numpy(dist).clamp_min(0)
    nearest = d[:, :1]
    logits = -(d - nearest) / (options.temperature * nearest.clamp_min(1e-6))
    xy = fit_coords[torch.from_numpy(ids).long()]  # (Q, k, 2)
    if options.anchor is not None:
        far = (xy - xy[:, :1]).norm(dim=2) > options.anchor * scale
        logits = logits.masked_fill(far, float("-inf"))  # the nearest itself is never far: one weight stays
    w = torch.softmax(logits, dim=1)
    return (w[:, :, None] * xy).sum(1)


def whole_map(bank, method: str = "umap", fit_rows: int = 50_000, clusters: int | None = None, seed: int = 0,
              cache_dir=None, progress: bool = True, progress_callback=None,
              options: PlaceOptions = PlaceOptions()) -> WholeMap:
    """Every row of `bank` (a MemoryBank, edited copies included, or an (N, D) float tensor) on the map.

    method: "umap" or "pca" (map2d.METHODS); banks with fewer than 32 usable rows get PCA. fit_rows (>= 32): rows
    the layout is fitted on (seeded subsample, as embed_2d's max_rows). clusters: k-means centres (None:
    min(64, fitted rows / 39)); more than the rows fitted is refused. cache_dir: None for the default cache
    (beside embed_2d's), False for none. progress: a tqdm bar; progress_callback(done, total) is called as rows
    are placed (0 before the fit, total at the end)."""
    bank, fit_rows, clusters, seed = _check(bank, method, fit_rows, clusters, seed, options)
    t0 = time.perf_counter()
    state = search.state_of(bank)  # row norms once, NaN for unusable rows (also what search uses)
    rows, norms, n = state.rows, state.norms, len(bank)
    usable = torch.isfinite(norms)
    if int(usable.sum()) < 2:
        raise ValueError(f"a map needs at least 2 usable rows; this bank has {int(usable.sum())} (the others hold NaN "
                         f"or infinite values): replace or remove them (bank.replace / bank.remove)")
    fitted = _fitted_rows(usable, fit_rows, seed)
    chosen = min(DEFAULT_CLUSTERS, max(1, len(fitted) // POINTS_PER_CLUSTER)) if clusters is None else clusters
    if chosen > len(fitted):
        raise ValueError(f"clusters={clusters} is more than the {len(fitted)} rows the map is fitted on: ask for at "
                         f"most {len(fitted)} clusters, or raise fit_rows")
    path = _cache_path(bank, method, fit_rows, clusters, seed, options, cache_dir)
    seconds = {"fingerprint": round(time.perf_counter() - t0, 2)}
    cached = _read_cache(path, n, warn=True)
    if cached is not None:
        return cached
    try:
        import faiss  # optional dependency (gmem-explore[search]); imported where a map is computed
    except ImportError:
        raise ImportError("the whole-bank map needs faiss-cpu (k-means and nearest-row search): pip install "
                          "'gmem-explore[search]' (or faiss-cpu); embed_2d maps a subsample without it") from None
    if progress_callback is not None:
        progress_callback(0, n)
    from tqdm.auto import tqdm

    used = "pca" if method == "pca" or len(fitted) < MIN_FIT_ROWS else "umap"
    bar = tqdm(total=n, desc=f"bank map: fitting {used.upper()} on {len(fitted):,} rows", unit="row", unit_scale=True,
               disable=not progress)
    t = time.perf_counter()
    fit_x = _normalised(rows[fitted], norms[fitted])
    fit_coords = map2d.embed_2d(rows[fitted], method, cache_dir=cache_dir, max_rows=len(fitted), seed=seed)
    seconds["fit"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    mean, comps = pca_basis(fit_x, max(options.dims, options.cluster_dims))  # the first components of both
    fit_p = ((fit_x - mean) @ comps.T).numpy()
    del fit_x
    kmeans = _kmeans(faiss, np.ascontiguousarray(fit_p[:, :options.cluster_dims]), chosen, options, seed)
    seconds["cluster_fit"] = round(time.perf_counter() - t, 2)
    neighbours = _neighbour_index(faiss, np.ascontiguousarray(fit_p[:, :options.dims]), options, seed)
    scale = map_scale(fit_coords) if used == "umap" and len(fitted) < n else 1.0

    coords = torch.full((n, 2), float("nan"))
    cluster = torch.full((n,), -1, dtype=torch.int32)
    is_fit = torch.zeros(n, dtype=torch.bool)
    is_fit[fitted] = True
    bar.set_description(f"bank map: placing {n - len(fitted):,} rows by their nearest fitted rows" if used == "umap"
                        else f"bank map: projecting {n - len(fitted):,} rows")
    t = time.perf_counter()
    for a in range(0, n, options.chunk):
        b = min(a + options.chunk, n)
        p = ((_normalised(rows[a:b], norms[a:b]) - mean) @ comps.T).numpy()
        ok = usable[a:b]
        mine = np.ascontiguousarray(p[ok.numpy(), :options.cluster_dims])
        cluster[a:b][ok] = torch.from_numpy(kmeans.index.search(mine, 1)[1][:, 0]).int()
        todo = (ok & ~is_fit[a:b]).numpy()
        if todo.any():
            coords[a:b][torch.from_numpy(todo)] = torch.from_numpy(p[todo, :2]) if used == "pca" else \
                place(neighbours, fit_coords, np.ascontiguousarray(p[todo, :options.dims]), options, scale)
        bar.update(b - a)
        if progress_callback is not None:
            progress_callback(b, n)
    coords[fitted] = fit_coords
    bar.close()
    seconds["place"] = round(time.perf_counter() - t, 2)
    out = WholeMap(coords, cluster.long(), fitted, used, seconds)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(path, {"coords": coords, "cluster": cluster, "fitted": fitted},
                         {"key": path.stem.rsplit("-", 1)[1], "method": used, "rows": n, "clusters": chosen,
                          "version": VERSION})
        except OSError as e:
            warnings.warn(f"could not write the whole-bank map cache {path}: {e}; the map will be computed again "
                          f"next time")
    return out
