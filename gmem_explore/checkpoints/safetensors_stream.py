"""Write a safetensors file tensor by tensor, chunk by chunk, so a big tensor is never copied whole.

`safetensors.torch.save` builds the entire file as one bytes object: for the released 640,000 x 768 bank that
is a second 1.97 GB copy (plus a third during an fp32 -> fp16 cast). Here each tensor is cast and written in
slices of at most `chunk_bytes` (64 MB by default), so the extra memory is one slice whatever the file size.
When the sources are memory-mapped (torch.load(mmap=True)), the pages read are page cache, which the kernel
reclaims, not process memory.

The file layout is the safetensors specification: 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}} padded with spaces to 8 bytes, then the data.
The write is atomic (temporary file + rename), like every file the project writes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from ..safefiles import atomic_path

NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def write_streaming(path, tensors: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype] | None = None,
                    metadata: dict | None = None, chunk_bytes: int = 64 << 20, progress=None) -> Path:
    """Write `tensors` (cast to `dtypes[name]` where given) to `path`; metadata values are JSON-encoded
    (the convention of safefiles.save_tensors, so load_tensors decodes them). `progress(nbytes)` is called
    after every slice (a tqdm bar's update fits)."""
    dtypes = dtypes or {}
    header, offset, plan = {}, 0, []
    for name, t in tensors.items():
        dtype = dtypes.get(name, t.dtype)
        if dtype not in NAMES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors here")
        nbytes = t.numel() * _itemsize(dtype)
        header[name] = {"dtype": NAMES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        plan.append((name, t, dtype))
        offset += nbytes
    header["__metadata__"] = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors itself writes it
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, t, dtype in plan:
                _write_tensor(f, name, t, dtype, chunk_bytes, progress)
    return path


def _write_tensor(f, name: str, t: torch.Tensor, dtype: torch.dtype, chunk_bytes: int, progress) -> None:
    t = t.detach()
    if t.numel() == 0:
        return
    if t.ndim == 0:
        t = t.reshape(1)
    # a float cast to a narrower float (fp32 -> fp16) overflows to inf above its range: checked slice by slice
    narrowed = t.is_floating_point() and dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(t.dtype).max
    row_bytes = max(1, t[0].numel() * max(_itemsize(dtype), t.element_size()))
    rows = max(1, chunk_bytes // row_bytes)
    for start in range(0, t.shape[0], rows):
        source = t[start:start + rows]
        piece = source.to(device="cpu", dtype=dtype).contiguous()
        if narrowed and not torch.isfinite(piece).all() and torch.isfinite(source).all():
            raise ValueError(f"tensor {name!r} holds values up to {source.abs().max().item():.4g}, which do not fit "
                             f"{dtype} (largest {torch.finfo(dtype).max:.4g}): they would be stored as infinity. Keep "
                             f"a wider dtype (a converted bank: `gmem convert --bank-dtype fp32`)")
        f.write(memoryview(piece.reshape(-1).view(torch.uint8).numpy()))
        if progress is not None:
            progress(piece.numel() * _itemsize(dtype))
        del piece


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
