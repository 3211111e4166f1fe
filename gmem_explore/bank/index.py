"""An approximate nearest-row index for big banks: candidates from compressed codes, answers from the bank itself.

Exact search over the released 1.28M x 768 bank reads 2 GB per query (about 80 ms with fp16 rows on two cores, 10 s
when every row is re-normalised on each call). The index answers in about 2 ms:

1. faiss IVF-PQ over the L2-normalised rows: an inner-product coarse quantizer of `lists` centroids (2,048 at
   1.28M rows), each row stored as `code_bytes` bytes of product-quantisation code (96: 118 MB at 1.28M rows,
   6% of the fp16 bank; narrower rows take the largest divisor of their width). A query scans the `probe` nearest lists' codes for `rerank` candidates.
2. The candidates are re-ranked exactly against the bank's own rows (memory-mapped, never copied): PQ distances
   are coarse, exact cosines are not, so the order of the answer is the exact order among the candidates.
Why faiss IVF-PQ and not HNSW (hnswlib): an HNSW graph stores every vector again in float32 (3.9 GB at 1.28M x
768, a second copy of the bank) and builds in tens of minutes on two cores; IVF-PQ trains on a 100k-row sample
and adds 1.28M rows in about a minute, and its codes are small enough to keep beside the bank.

The index is cached on disk (safetensors: the serialised faiss index as bytes, with its options and the bank's
fingerprint in the metadata), keyed by a hash of the rows' bytes: another bank or an edited one never reuses it,
and a damaged or foreign file is rebuilt with a warning, never trusted.

faiss-cpu is an optional dependency (`pip install 'gmem-explore[search]'`); without it search stays exact.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..safefiles import load_tensors, save_tensors
from .checks import CHUNK
from .overlay import Column

FORMAT = "gmem-explore-row-index-1"  # bump when the index layout or the build changes


@dataclass(frozen=True)
class IndexOptions:
    """How the index is built and searched. The defaults reach recall@10 >= 0.95 against exact search on a
    clustered 1.28M x 768 bank at about 2 ms per query on two cores (benchmarks/bank_scale.py)."""

    min_rows: int = 100_000  # below this exact search (about 4 ms at 100k x 768 fp16) needs no index
    lists: int | None = None  # IVF lists; None: 2 * sqrt(rows) rounded to a power of two (2,048 at 1.28M)
    code_bytes: int = 96  # PQ bytes per row at most: the largest divisor of the row width up to this (768 = 96 x 8)
    probe: int = 16  # lists scanned per query: 32 or 64 find no more of the true top 10 (the codes, not the lists, limit)
    # candidates re-ranked exactly: on 1.28M clustered rows with fresh queries recall@10 is 0.87 at 200, 0.96 at 400,
    # 0.98 at 800 (1.3 / 2.0 / 4.0 ms per query; benchmarks/bank_scale.py)
    rerank: int = 500
    train_rows: int = 100_000  # rows sampled to train the quantizers (faiss wants >= 39 per list)
    seed: int = 0

    def code_bytes_for(self, dim: int) -> int:
        """PQ needs sub-vectors of equal width: the largest divisor of `dim` not above code_bytes (8 for 8-wide rows,
        where a 96-byte code would not divide the row; 96 for GMem's 768)."""
        return max(b for b in range(1, min(self.code_bytes, dim) + 1) if dim % b == 0)

    def lists_for(self, n: int) -> int:
        if self.lists is not None:
            return self.lists
        return int(min(2 ** round(math.log2(max(2 * math.sqrt(n), 1))), max(1, n // 39)))


def available() -> bool:
    try:
        import faiss  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def default_cache_dir() -> Path:
    root = os.environ.get("GMEM_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "gmem-explore") / "index"


def fingerprint(rows) -> str:
    """sha256 of the rows' bytes as stored, their shape and dtype: about 2 s for the 2 GB fp16 bank, once per bank
    object (MemoryBank keeps it until an edit)."""
    h = hashlib.sha256(f"{tuple(rows.shape)}|{rows.dtype}".encode())
    for a in range(0, rows.shape[0], CHUNK):
        chunk = rows[a:a + CHUNK].contiguous()
        h.update(chunk.view(torch.uint8).numpy() if chunk.numel() else b"")
    return h.hexdigest()[:32]


def _normalised(rows: torch.Tensor) -> np.ndarray:
    x = rows.float()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return np.ascontiguousarray(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).numpy())


class RowIndex:
    """A built index over a bank's rows (positions 0..n-1 of the rows it was built from)."""

    def __init__(self, index, options: IndexOptions, key: str, n: int, dim: int):
        self.index, self.options, self.key, self.n, self.dim = index, options, key, n, dim

    @classmethod
    def build(cls, rows: torch.Tensor, options: IndexOptions = IndexOptions(), key: str | None = None,
              progress: bool = True) -> "RowIndex":
        import faiss  # optional dependency: only imported where an index is built or read
        from tqdm.auto import tqdm

        n, dim = rows.shape
        lists = options.lists_for(n)
        rng = np.random.default_rng(options.seed)
        sample = np.sort(rng.choice(n, size=min(n, max(options.train_rows, 39 * lists)), replace=False))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, lists, options.code_bytes_for(dim), 8,
                                 faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = options.seed  # the same rows give the same index
        bar = tqdm(total=n, desc="building the bank index", unit="row", disable=not progress)
        index.train(_normalised(rows[torch.from_numpy(sample)]))
        for a in range(0, n, CHUNK):
            chunk = rows[a:a + CHUNK]
            index.add(_normalised(chunk))
            bar.update(chunk.shape[0])
        bar.close()
        return cls(index, options, key or fingerprint(rows), n, dim)

    def candidates(self, queries: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """(Q, count) int64 row positions, best first by PQ score; -1 where fewer were found."""
        self.index.nprobe = self.options.probe
        q = np.ascontiguousarray(queries.float().numpy())
        _, ids = self.index.search(q, count or self.options.rerank)
        return torch.from_numpy(ids)

    # ---- the cache ------------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"format": FORMAT, "key": self.key, "rows": self.n, "dim": self.dim, "options": asdict(self.options)}

    def save(self, path) -> None:
        import faiss

        data = torch.from_numpy(faiss.serialize_index(self.index).copy())
        save_tensors(path, {"index": data}, self._meta())

    @classmethod
    def load(cls, path, key: str, n: int, dim: int, options: IndexOptions) -> "RowIndex":
        """The cached index of these rows, or a ValueError saying why the file cannot be trusted."""
        import faiss

        tensors, meta = load_tensors(path, mmap=False)
        want = {"format": FORMAT, "key": key, "rows": n, "dim": dim, "options": asdict(options)}
        wrong = [name for name, value in want.items() if meta.get(name) != json.loads(json.dumps(value))]
        if wrong or "index" not in tensors:
            raise ValueError(f"it belongs to another bank or build ({', '.join(wrong) or 'no index tensor'} differ)")
        index = faiss.deserialize_index(tensors["index"].numpy())
        if index.ntotal != n or index.d != dim:
            raise ValueError(f"it holds {index.ntotal} rows of width {index.d}, not {n} x {dim}")
        return cls(index, options, key, n, dim)


def cached_index(rows: torch.Tensor, options: IndexOptions = IndexOptions(), key: str | None = None,
                 cache_dir=None, progress: bool = True) -> RowIndex:
    """The index of these rows: read from the cache when a trusted file is there, else built and cached.
    cache_dir=False builds without a cache; a cache that cannot be written costs a warning, not the search."""
    n, dim = rows.shape
    key = key or fingerprint(rows)
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / f"rows-{key}.safetensors"
        if path.is_file():
            try:
                return RowIndex.load(path, key, n, dim, options)
            except Exception as e:  # noqa: BLE001 - any file we cannot read is rebuilt, never trusted
                warnings.warn(f"ignoring the bank index cache {path}: {e}; the index is built again")
    index = RowIndex.build(rows, options, key, progress)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            index.save(path)
        except OSError as e:
            warnings.warn(f"could not write the bank index cache {path}: {e}; it will be built again next time")
    return index


def row_norms(rows: torch.Tensor) -> torch.Tensor:
    """float32 L2 norm of every row, computed once per bank (chunked, so an fp16 bank is never expanded whole):
    exact search then divides scores by them instead of re-normalising 1.28M rows on every query. NaN or
    infinite rows get norm NaN, so their scores are NaN and never chosen."""
    out = torch.empty(rows.shape[0], dtype=torch.float32)
    for a in range(0, rows.shape[0], CHUNK):
        chunk = rows[a:a + CHUNK].float()
        norms = chunk.norm(dim=1)
        norms[~torch.isfinite(chunk).all(dim=1)] = float("nan")
        out[a:a + CHUNK] = norms
    return out


def exact_scores(rows, norms: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """(Q, N) cosines of unit-norm float32 queries with every row (a tensor or a bank's overlay Column). One query
    runs as a matrix-vector product in the rows' own dtype (fp16 on CPU: about 80 ms for 1.28M x 768 on two cores,
    against 1.5 s converting chunks to float32 first); several run chunk by chunk in float32, where a matrix
    product wins."""
    return _dot(rows, queries) / norms.clamp_min(1e-12)


def _dot(rows, queries: torch.Tensor) -> torch.Tensor:
    if isinstance(rows, Column):
        if not rows.edited:
            return _dot(rows.base, queries)
        # an edited copy: its shared rows and its own scored apart, then put in the copy's row order
        return torch.cat([_dot(rows.base, queries), _dot(rows.delta, queries)], dim=1).index_select(1, rows.src)
    if rows.shape[0] == 0:
        return torch.zeros(queries.shape[0], 0)
    if queries.shape[0] == 1 and rows.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return (rows @ queries[0].to(rows.dtype)).float()[None]
    return torch.cat([queries @ rows[a:a + CHUNK].float().T for a in range(0, rows.shape[0], CHUNK)], dim=1)


def rerank(rows: torch.Tensor, norms: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each query's candidate rows by exact cosine: (Q, k) rows and scores, -1 / -inf where fewer
    than k valid candidates exist. Candidates of -1 (none found) and rows with NaN are skipped."""
    q = queries.shape[0]
    best_i = torch.full((q, k), -1, dtype=torch.long)
    best_s = torch.full((q, k), float("-inf"))
    for j in range(q):
        c = candidates[j][candidates[j] >= 0].unique()  # sorted: memory-mapped pages are read in order
        if not len(c):
            continue
        s = (rows[c].float() @ queries[j]) / norms[c].clamp_min(1e-12)
        s = torch.where(torch.isnan(s), torch.tensor(float("-inf")), s)
        top = s.topk(min(k, len(c)))
        keep = torch.isfinite(top.values)
        best_i[j, :int(keep.sum())] = c[top.indices[keep]]
        best_s[j, :int(keep.sum())] = top.values[keep]
    return best_i, best_s
