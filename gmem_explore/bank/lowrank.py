"""Low-rank (SVD) compression of a bank: rows ~= coeffs @ basis + mean, with its reconstruction error.

    low = compress(bank, rank=64)                    # as the v2 code keeps; low.report has the errors
    low.save("bank-r64.safetensors"); LowRankBank.load(...).to_bank()   # or MemoryBank.load(...), the same
    low.save_dmd("bank-dmd.pth"); LowRankBank.from_dmd("bank-dmd.pth")   # GMem v2 upstream's `dmd` layout

Upstream's `dmd` file (LINs-lab/GMem utils/svd_utils.py DMDMemoryBank) is a torch.save dict {C (N, d), M (D, d),
S (d,), mean (D,), latent_dim, feature_dim} with row i = C[i] @ M.T + mean, C = U sqrt(S) and M = V sqrt(S) from the
SVD of the centred rows. Ours keeps orthonormal basis rows: coeffs = C * |M_k| and basis = (M / |M_k|).T give the
same rows, and |M_k| = sqrt(S_k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..devices import check_device
from ..safefiles import atomic_path, load_tensors, save_tensors
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

    def save_dmd(self, path) -> None:
        """Upstream's `dmd` .pth (GMem v2's utils/svd_utils.py); frequencies, labels and thumbnails are not in it."""
        save_dmd(self, path)

    @classmethod
    def from_dmd(cls, source) -> "LowRankBank":
        """Upstream's `dmd` bank (a .pth path or its dict)."""
        return from_dmd(source)

    @classmethod
    def load(cls, path) -> "LowRankBank":
        """A compressed bank file; MemoryBank.load(path) reads the same file as a full bank (its rows rebuilt)."""
        tensors, meta = load_tensors(path)
        coeffs, basis, mean = check_low_rank(tensors, meta, path)
        return cls(coeffs, basis, mean, tensors.get("freq"), meta.get("report", {}), tensors.get("labels"),
                   meta.get("label_names"), tensors.get("thumbnails"))


DMD_KEYS = ("C", "M", "S", "mean", "latent_dim", "feature_dim")


def to_dmd(low: LowRankBank) -> dict:
    """Upstream's `dmd` dict of a compressed bank: S_k is the norm of coefficient column k (the singular value of
    the centred rows, since the basis rows are orthonormal), C = coeffs / sqrt(S), M = basis.T * sqrt(S)."""
    coeffs = low.coeffs.float()
    singular = torch.zeros(coeffs.shape[1], dtype=torch.float64)
    for a, b in chunks(len(coeffs)):
        singular += (coeffs[a:b].double() ** 2).sum(0)
    singular = singular.sqrt().float()
    root = singular.clamp_min(torch.finfo(torch.float32).tiny).sqrt()  # a zero column stays zero either way
    return {"C": coeffs / root, "M": low.basis.float().T * root, "S": singular, "mean": low.mean.float(),
            "latent_dim": int(coeffs.shape[1]), "feature_dim": int(low.basis.shape[1])}


def from_dmd(source) -> LowRankBank:
    """A LowRankBank of upstream's `dmd` layout: a dict, or a .pth read with weights_only=True (tensors only)."""
    if not isinstance(source, dict):
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated file, code in the pickle, not a torch file: one message, what to do
            raise ValueError(f"Could not read {source} as upstream's dmd bank (a tensors-only torch file): "
                             f"{e}") from None
    missing = [k for k in DMD_KEYS if k not in source] if isinstance(source, dict) else list(DMD_KEYS)
    if missing:
        found = sorted(map(str, source)) if isinstance(source, dict) else type(source).__name__
        raise ValueError(f"not upstream's dmd bank: {missing} missing (found {found}); a bare (N, D) tensor is the "
                         f"'full' layout: MemoryBank(torch.load(path)) reads it")
    coeffs, basis, mean = source["C"], source["M"], source["mean"]
    if not (coeffs.ndim == 2 and basis.ndim == 2 and coeffs.shape[1] == basis.shape[1]
            and mean.numel() == basis.shape[0] == int(source["feature_dim"])):
        raise ValueError(f"upstream's dmd bank does not fit together: C {tuple(coeffs.shape)}, M {tuple(basis.shape)}, "
                         f"mean {tuple(mean.shape)}, feature_dim {source['feature_dim']} (want C (N, d), M (D, d), "
                         f"mean (D,))")
    norms = basis.float().norm(dim=0)  # |M_k| = sqrt(S_k)
    keep = norms.clamp_min(torch.finfo(torch.float32).tiny)
    report = {"rank": int(coeffs.shape[1]), "rows": int(coeffs.shape[0]), "dim": int(basis.shape[0]),
              "centered": True, "origin": "upstream dmd (rows as stored, not normalised)"}
    return LowRankBank(coeffs.float() * keep, (basis.float() / keep).T.contiguous(), mean.float().reshape(-1),
                       report=report)


def save_dmd(low: LowRankBank, path) -> None:
    """Write upstream's `dmd` file (torch.save, atomically), which its DMDMemoryBank.from_state_dict reads."""
    with atomic_path(path) as tmp:
        torch.save(to_dmd(low), tmp)


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


class LowRankRows:
    """The (N, D) rows C[i] @ M.T + mean of a low-rank bank (upstream's `dmd` layout), computed slice by slice when
    write_streaming reads them: a 1.28M x 768 bank is written in full without ever being held whole (only C, about
    N x 64, is). Slicing gives float32 tensors; the object answers what write_streaming asks of a tensor."""

    ndim = 2
    dtype = torch.float32

    def __init__(self, coeffs: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor):
        self.coeffs, self.basis, self.mean = coeffs, basis.float(), mean.float().reshape(-1)
        self.shape = torch.Size((coeffs.shape[0], basis.shape[0]))

    def __getitem__(self, index):
        if isinstance(index, int):
            return self[index:index + 1][0]
        return self.coeffs[index].float() @ self.basis.T + self.mean

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> int:
        return 4

    def is_floating_point(self) -> bool:
        return True

    def detach(self) -> "LowRankRows":
        return self
