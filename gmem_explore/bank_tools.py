"""Tools for big memory banks (the released one: 640,000 x 768): statistics, nearest-row search, and low-rank
(SVD) compression with its reconstruction error.

Everything works in chunks of 65,536 rows, so a memory-mapped fp16 bank is never expanded whole to float32
(that would be 1.97 GB on top of the map). Rows are compared as the model sees them: L2-normalised.

    stats = statistics(bank)                         # JSON-able dict
    idx, sim = nearest_rows(bank, [12, 99], k=8)     # rows most similar to rows 12 and 99 (themselves excluded)
    low = compress(bank, rank=64)                    # as the v2 code keeps; low.report has the errors
    low.save("bank-r64.safetensors"); LowRankBank.load(...).to_bank()   # or MemoryBank.load(...), the same
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .bank import CHUNK, MemoryBank, normalize
from .bank_checks import check_snippets
from .devices import check_device
from .safefiles import load_tensors, save_tensors
from .values import is_whole

LOW_RANK_FORMAT = "gmem-explore-lowrank-bank-1"  # MemoryBank.load recognises a compressed file by it


SIMILAR_BUT_DIFFERENT = 0.5  # cosine of the partner row in a bank without groups


def partner_row(bank: MemoryBank, row: int) -> int:
    """A row to interpolate or mix `row` with that shows a visible, smooth change: the row most like it from
    another group. Neighbouring rows are often near-duplicates (emoji-32's rows 0 and 1: two smileys, identical
    frames), and the least similar row turns the middle frames into a washed-out blur. Without groups: the row
    whose cosine to `row` is nearest SIMILAR_BUT_DIFFERENT. Broken (NaN) rows are never chosen."""
    if len(bank) < 2:
        raise ValueError("the bank has fewer than two rows: there is no other row to pair with")
    bank._check_index([row])
    rows = normalize(bank.rows.float())
    sims = torch.nan_to_num(rows @ rows[row], nan=float("-inf"))
    sims[row] = float("-inf")
    if bank.labels is not None and (bank.labels != bank.labels[row]).any():
        return int(torch.where(bank.labels != bank.labels[row], sims, torch.tensor(float("-inf"))).argmax())
    return int((sims - SIMILAR_BUT_DIFFERENT).abs().argmin())


def _chunks(n: int, chunk: int = CHUNK):
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def statistics(bank: MemoryBank, sample: int = 4096, seed: int = 0) -> dict:
    """Size, norms, frequency concentration and how similar rows are (estimated on `sample` random rows, at least
    2: a similarity needs a pair; a bank of fewer rows than `sample` uses them all, and one of a single row has no
    similarity figures)."""
    if not is_whole(sample) or sample < 2:
        raise ValueError(f"sample must be a whole number of rows >= 2 (the similarity figures compare pairs of rows; "
                         f"a bank with fewer rows uses all of them); got {sample!r}")
    if not is_whole(seed):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    sample = int(sample)
    n, d = len(bank), bank.dim
    out = {"rows": n, "dim": d, "dtype": str(bank.rows.dtype).removeprefix("torch."),
           "megabytes": round(bank.rows.numel() * bank.rows.element_size() / 2**20, 1)}
    if n == 0:
        return out
    norms = torch.cat([bank.rows[a:b].float().norm(dim=1) for a, b in _chunks(n)])
    finite = torch.isfinite(norms)  # NaN or infinite values (or a norm beyond float32)
    good = norms[finite]
    if len(good):  # NaN / infinite rows are only counted (nonfinite_rows), never part of a figure
        out.update(norm_mean=float(good.mean()), norm_std=float(good.std()) if len(good) > 1 else 0.0,
                   norm_min=float(good.min()), norm_max=float(good.max()))
    out.update(zero_rows=int((norms == 0).sum()), nonfinite_rows=int((~finite).sum()))
    if bank.freq is not None:
        p = bank.freq / bank.freq.sum()
        nz = p[p > 0]
        top = max(1, n // 100)
        out.update(freq_total=float(bank.freq.sum()), freq_min=float(bank.freq.min()), freq_max=float(bank.freq.max()),
                   never_drawn_rows=int((bank.freq == 0).sum()),
                   # exp(entropy): how many equally likely rows the frequencies amount to (n if uniform)
                   effective_rows=float(torch.exp(-(nz * nz.log()).sum())),
                   top_1pct_share=float(p.sort(descending=True).values[:top].sum()))
    g = torch.Generator().manual_seed(seed)
    usable = finite.nonzero().flatten()  # all rows (in order) when none is broken: the same draw as before
    pick = usable[torch.randperm(len(usable), generator=g)[:min(sample, len(usable))]].sort().values
    x = normalize(bank.rows[pick])
    sims = x @ x.T
    m = len(pick)
    if m > 1:
        off = sims[~torch.eye(m, dtype=torch.bool)].reshape(m, m - 1)
        out.update(sample_rows=m, mean_cosine=float(off.mean()),
                   mean_nearest_cosine=float(off.max(dim=1).values.mean()),
                   # norm of the mean direction: 0 for directions spread evenly, 1 if all rows point one way
                   mean_direction_norm=float(x.mean(0).norm()))
    return out


def nearest_rows(bank: MemoryBank, queries, k: int = 8, device="cpu", chunk: int = CHUNK,
                 exclude_self: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows by cosine similarity: (indices (Q, k), similarities (Q, k)), best first.

    `queries` are row indices (a list / 1-D integer tensor; each row itself is excluded unless exclude_self is
    False) or snippets (Q, D). On a GPU the bank streams through in chunks (fp16 matmuls when the bank is fp16).
    Broken (NaN / infinite) rows are never returned, so a bank of few usable rows gives fewer than k columns."""
    if not is_whole(k) or k < 1:
        raise ValueError(f"k (how many nearest rows) must be a whole number >= 1; got {k!r}")
    if not is_whole(chunk) or chunk < 1:
        raise ValueError(f"chunk (rows compared at a time) must be a whole number >= 1; got {chunk!r}")
    device = check_device(device)
    q_tensor = torch.as_tensor(queries)
    if q_tensor.numel() == 0:
        raise ValueError("no queries given: give row numbers (e.g. [12, 99]) or snippets (Q, D)")
    self_rows = None
    if not q_tensor.is_floating_point():
        self_rows = bank._check_index(q_tensor).to(device)
        q = bank.snippets(self_rows.cpu())
    else:
        q = normalize(check_snippets(q_tensor, bank.dim, "query"))
    want = min(int(k), len(bank) - (1 if self_rows is not None and exclude_self else 0))
    if want < 1:
        raise ValueError(f"nearest_rows needs a bank with another row than the query; this one has {len(bank)}")
    dtype = bank.rows.dtype if device.type == "cuda" and bank.rows.dtype in (torch.float16, torch.bfloat16) else torch.float32
    q = q.to(device, dtype)
    best_s = torch.full((q.shape[0], 0), -2.0, device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    for a, b in _chunks(len(bank), chunk):
        rows = normalize(bank.rows[a:b].to(device)).to(dtype)
        sims = (q @ rows.T).float()
        sims[torch.isnan(sims)] = float("-inf")  # broken (NaN / infinite) rows: never a neighbour
        if self_rows is not None and exclude_self:
            inside = (self_rows >= a) & (self_rows < b)
            sims[inside.nonzero().flatten(), (self_rows[inside] - a)] = float("-inf")
        s, i = sims.topk(min(want, sims.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, s], 1).topk(min(want, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + a], 1).gather(1, order)
    # every query has the same number of usable rows (the bank's finite rows, less itself): drop the -inf tail
    found = torch.isfinite(best_s).all(dim=0)
    if not found.any():
        raise ValueError("the bank has no usable row to compare with: its other rows are NaN or infinite; replace or "
                         "remove them (bank.replace / bank.remove)")
    return best_i[:, found].cpu(), best_s[:, found].cpu()


@dataclass
class LowRankBank:
    """rows ~= coeffs @ basis + mean (of the L2-normalised rows): N x r + r x D numbers instead of N x D.

    Frequencies, labels (with their names) and thumbnails are kept as they are: they are small beside the rows
    (a 32 x 32 thumbnail is 3 kB), and a bank without its groups and pictures would be harder to browse. The
    report's sizes count the rows only."""

    coeffs: torch.Tensor  # (N, r)
    basis: torch.Tensor  # (r, D), orthonormal rows
    mean: torch.Tensor  # (D,)
    freq: torch.Tensor | None = None
    report: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None  # (N,)
    label_names: list[str] | None = None
    thumbnails: torch.Tensor | None = None  # (N, H, W, 3) uint8

    def __len__(self):
        return self.coeffs.shape[0]

    def rows(self, indices=None) -> torch.Tensor:
        c = self.coeffs if indices is None else self.coeffs[torch.as_tensor(indices, dtype=torch.long)]
        return c.float() @ self.basis.float() + self.mean.float()

    def to_bank(self, dtype=torch.float16) -> MemoryBank:
        """A full MemoryBank of the reconstructed rows (for sampling with a compressed bank)."""
        rows = torch.empty(len(self), self.basis.shape[1], dtype=dtype)
        for a, b in _chunks(len(self)):
            rows[a:b] = self.rows(torch.arange(a, b)).to(dtype)
        return MemoryBank(rows, self.freq, self.labels, self.label_names, self.thumbnails,
                          meta={"low_rank": self.report.get("rank")})

    def save(self, path) -> None:
        tensors = {"coeffs": self.coeffs, "basis": self.basis, "mean": self.mean}
        for name in ("freq", "labels", "thumbnails"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        save_tensors(path, tensors, {"format": LOW_RANK_FORMAT, "report": self.report, "label_names": self.label_names})

    @classmethod
    def load(cls, path) -> "LowRankBank":
        """A compressed bank file; MemoryBank.load(path) reads the same file as a full bank (its rows rebuilt)."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != LOW_RANK_FORMAT:
            raise ValueError(f"{path} is not a low-rank bank file (format {meta.get('format')!r}); a full bank file "
                             f"opens with MemoryBank.load")
        missing = [k for k in ("coeffs", "basis", "mean") if k not in tensors]
        if missing:
            raise ValueError(f"{path} is a damaged low-rank bank file: it has no {missing} tensor(s); compress the "
                             f"full bank again (gmem bank compress)")
        coeffs, basis, mean = tensors["coeffs"], tensors["basis"], tensors["mean"]
        if not (coeffs.ndim == 2 and basis.ndim == 2 and mean.ndim == 1 and coeffs.shape[1] == basis.shape[0]
                and basis.shape[1] == mean.shape[0] and all(t.is_floating_point() for t in (coeffs, basis, mean))):
            raise ValueError(f"{path} is a damaged low-rank bank file: coeffs {tuple(coeffs.shape)} {coeffs.dtype}, "
                             f"basis {tuple(basis.shape)} {basis.dtype} and mean {tuple(mean.shape)} {mean.dtype} do "
                             f"not fit together (float (N, r), (r, D), (D,)); compress the full bank again "
                             f"(gmem bank compress)")
        return cls(tensors["coeffs"], tensors["basis"], tensors["mean"], tensors.get("freq"), meta.get("report", {}),
                   tensors.get("labels"), meta.get("label_names"), tensors.get("thumbnails"))


def compress(bank: MemoryBank, rank: int = 64, center: bool = True, device="cpu",
             coeff_dtype: torch.dtype = torch.float16) -> LowRankBank:
    """Best rank-r approximation (truncated SVD, via the D x D Gram matrix) of the normalised rows,
    with its error: relative Frobenius norm ||X - X_r|| / ||X|| and the mean / min cosine between each row and
    its reconstruction (what matters to the model, which renormalises). Frequencies, labels and thumbnails
    are carried over unchanged."""
    n, d = len(bank), bank.dim
    if not is_whole(rank) or not 1 <= rank <= d:
        raise ValueError(f"rank must be an integer in [1, {d}]; got {rank!r}")
    rank = int(rank)
    if not isinstance(coeff_dtype, torch.dtype) or not coeff_dtype.is_floating_point:
        raise TypeError(f"coeff_dtype must be a floating torch dtype (torch.float16, torch.float32); "
                        f"got {coeff_dtype!r}")
    if n == 0:
        raise ValueError("cannot compress an empty bank")
    device = check_device(device)
    broken = torch.cat([(~torch.isfinite(bank.rows[a:b]).all(dim=1)).nonzero().flatten() + a for a, b in _chunks(n)])
    if len(broken):  # one NaN row would make the whole SVD fail (or every row NaN)
        raise ValueError(f"bank rows {broken.tolist()[:10]} hold NaN or infinite values ({len(broken)} row(s)); "
                         f"remove or replace them (bank.remove / bank.replace) before compressing")
    mean = torch.zeros(d, dtype=torch.float64, device=device)
    if center:
        for a, b in _chunks(n):
            mean += normalize(bank.rows[a:b].to(device)).double().sum(0)
        mean /= n
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    total = 0.0
    mean32 = mean.float()
    for a, b in _chunks(n):
        # float32 products per chunk (4x faster than float64 on CPUs), summed across chunks in float64
        x = normalize(bank.rows[a:b].to(device)) - mean32
        gram += (x.T @ x).double()
        total += float((x * x).sum())
    eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
    basis = eigvecs[:, -rank:].flip(1).T.contiguous()  # (r, D), largest first
    kept = float(eigvals[-rank:].clamp_min(0).sum() / eigvals.clamp_min(0).sum()) if total > 0 else 1.0
    coeffs = torch.empty(n, rank, dtype=coeff_dtype)
    err2 = norm2 = cos_sum = 0.0
    cos_min = 1.0
    basis_f = basis.float()
    for a, b in _chunks(n):
        x = normalize(bank.rows[a:b].to(device))
        c = (x - mean.float()) @ basis_f.T
        coeffs[a:b] = c.to(coeff_dtype).cpu()
        recon = c.to(coeff_dtype).float() @ basis_f + mean.float()  # what a reader of the stored file gets
        err2 += float(((x - recon) ** 2).sum())
        norm2 += float((x * x).sum())
        cos = torch.nn.functional.cosine_similarity(x, recon, dim=1)
        cos_sum += float(cos.sum())
        cos_min = min(cos_min, float(cos.min()))
    full_bytes = n * d * 2
    small_bytes = n * rank * coeff_dtype.itemsize + rank * d * 4 + d * 4
    report = {"rank": rank, "rows": n, "dim": d, "centered": center,
              "relative_frobenius_error": math.sqrt(err2 / max(norm2, 1e-30)),
              "mean_cosine": cos_sum / n, "min_cosine": cos_min, "variance_kept": kept,
              "megabytes_fp16_full": round(full_bytes / 2**20, 1), "megabytes_compressed": round(small_bytes / 2**20, 1),
              "compression_ratio": round(full_bytes / small_bytes, 2)}
    clone = lambda t: None if t is None else t.clone()  # noqa: E731  (the compressed bank owns its extras)
    return LowRankBank(coeffs, basis_f.cpu(), mean.float().cpu(), clone(bank.freq), report,
                       clone(bank.labels), None if bank.label_names is None else list(bank.label_names),
                       clone(bank.thumbnails))
