"""Low-rank (SVD) compression of a bank: rows ~= coeffs @ basis + mean, with its reconstruction error.

    low = compress(bank, rank=64)                    # as the v2 code keeps; low.report has the errors
    low.save("bank-r64.safetensors"); LowRankBank.load(...).to_bank()   # or MemoryBank.load(...), the same
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..devices import check_device
from ..safefiles import load_tensors, save_tensors
from ..values import is_whole
from .checks import LOW_RANK_FORMAT, check_low_rank, chunks
from .memory import MemoryBank, low_rank_rows
from .snippets import normalize


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
        return MemoryBank(low_rank_rows(self.coeffs, self.basis, self.mean, dtype), self.freq, self.labels, self.label_names, self.thumbnails,
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
        coeffs, basis, mean = check_low_rank(tensors, meta, path)
        return cls(coeffs, basis, mean, tensors.get("freq"), meta.get("report", {}), tensors.get("labels"),
                   meta.get("label_names"), tensors.get("thumbnails"))


def compress(bank: MemoryBank, rank: int = 64, center: bool = True, device="cpu",
             coeff_dtype: torch.dtype = torch.float16) -> LowRankBank:
    """Best rank-r approximation (truncated SVD, via the D x D Gram matrix) of the normalised rows,
    with its error: relative Frobenius norm ||X - X_r|| / ||X|| and the mean / min cosine between each row and
    its reconstruction (what matters to the model, which renormalises). Frequencies, labels and thumbnails
    are carried over unchanged."""
    n, d, rows = len(bank), bank.dim, bank.column("rows")  # read as stored, never copied whole
    if not is_whole(rank, 1, d):
        raise ValueError(f"rank must be an integer in [1, {d}]; got {rank!r}")
    rank = int(rank)
    if not isinstance(coeff_dtype, torch.dtype) or not coeff_dtype.is_floating_point:
        raise TypeError(f"coeff_dtype must be a floating torch dtype (torch.float16, torch.float32); "
                        f"got {coeff_dtype!r}")
    if n == 0:
        raise ValueError("cannot compress an empty bank")
    device = check_device(device)
    broken = torch.cat([(~torch.isfinite(rows[a:b]).all(dim=1)).nonzero().flatten() + a for a, b in chunks(n)])
    if len(broken):  # one NaN row would make the whole SVD fail (or every row NaN)
        raise ValueError(f"bank rows {broken.tolist()[:10]} hold NaN or infinite values ({len(broken)} row(s)); "
                         f"remove or replace them (bank.remove / bank.replace) before compressing")
    mean = torch.zeros(d, dtype=torch.float64, device=device)
    if center:
        for a, b in chunks(n):
            mean += normalize(rows[a:b].to(device)).double().sum(0)
        mean /= n
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    total = 0.0
    mean32 = mean.float()
    for a, b in chunks(n):
        # float32 products per chunk (4x faster than float64 on CPUs), summed across chunks in float64
        x = normalize(rows[a:b].to(device)) - mean32
        gram += (x.T @ x).double()
        total += float((x * x).sum())
    eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
    basis = eigvecs[:, -rank:].flip(1).T.contiguous()  # (r, D), largest first
    kept = float(eigvals[-rank:].clamp_min(0).sum() / eigvals.clamp_min(0).sum()) if total > 0 else 1.0
    coeffs = torch.empty(n, rank, dtype=coeff_dtype)
    err2 = norm2 = cos_sum = 0.0
    cos_min = 1.0
    basis_f = basis.float()
    for a, b in chunks(n):
        x = normalize(rows[a:b].to(device))
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
    clone = lambda name: None if bank.column(name) is None else bank.column(name)[:].clone()  # noqa: E731  (its own)
    return LowRankBank(coeffs, basis_f.cpu(), mean.float().cpu(), clone("freq"), report,
                       clone("labels"), None if bank.label_names is None else list(bank.label_names),
                       clone("thumbnails"))
