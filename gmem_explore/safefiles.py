"""Writing and reading our own files safely: atomic replace, safetensors only, memory-mapped reads.

A file we write is first written to a temporary file in the same folder, flushed to disk, then renamed over
the target (os.replace is atomic on POSIX and Windows): a crash leaves either the old file or the new one.

Big files are written tensor by tensor, slice by slice (write_streaming): `safetensors.torch.save` builds the
entire file as one bytes object, for the released 640,000 x 768 bank a second 1.97 GB copy (plus a third during an
fp32 -> fp16 cast). When the sources are memory-mapped, the pages read are page cache, which the kernel reclaims,
not process memory.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# What to do about a damaged or foreign file, appended to the errors below.
AGAIN = "The file is damaged or was not copied completely: download, copy or save it again."
NOT_PICKLE = "Only safetensors are read (never pickles): convert .pth/.pt weights to safetensors first."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


STALE_TEMP_SECONDS = 3600  # a temporary file untouched this long belongs to a writer that died (SIGKILL, power)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete `.name.*.tmp` files beside `path` older than STALE_TEMP_SECONDS: what killed writers left behind.
    Younger ones may belong to a save still running in another process, so they stay."""
    removed = []
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to delete: never a reason to fail the save
            pass
    return removed


def _is_temp_of(name, path: Path) -> bool:
    """Whether `name` is one of atomic_path's temporary files for `path` (.NAME.xxxxxxxx.tmp beside it)."""
    if not isinstance(name, (str, os.PathLike)):
        return False
    name = Path(name)
    return name.parent == path.parent and name.name.startswith(f".{path.name}.") and name.name.endswith(".tmp")


def naming_target(error: Exception, path: Path, tmp: Path | None = None) -> Exception | None:
    """The same kind of error, naming `path` where it named our temporary file (the user never gave that name and
    cannot find it afterwards); None when it did not name it or cannot be rebuilt."""
    try:
        if isinstance(error, OSError) and error.errno is not None:
            names = [str(path) if _is_temp_of(n, path) else n for n in (error.filename, error.filename2)]
            if names == [error.filename, error.filename2]:
                return None
            if names[1] == names[0]:  # os.replace(tmp, path): both are the target now
                names[1] = None
            return type(error)(error.errno, error.strerror, names[0], *((None, names[1]) if names[1] else ()))
        if tmp is not None and str(tmp) in str(error):
            return type(error)(str(error).replace(str(tmp), str(path)))
    except Exception:  # noqa: BLE001 - an exception class with another signature: keep the original
        return None
    return None


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it is removed.
    Temporary files of earlier writers that died are cleaned up first (remove_stale_temps). An error that names
    the temporary file (e.g. PermissionError on a read-only folder) is raised again, of the same type, naming
    `path` instead, with the original chained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved bank should get the usual permissions
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        renamed = naming_target(e, path, tmp) if isinstance(e, Exception) else None
        if renamed is None:
            raise
        raise renamed from e


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomic safetensors write; metadata values are JSON-encoded strings."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_bytes_atomic(path, safetensors_bytes(clean, metadata=meta))


STREAM_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def write_streaming(path, tensors: dict, dtypes: dict[str, torch.dtype] | None = None, metadata: dict | None = None,
                    chunk_bytes: int = 64 << 20, progress=None) -> Path:
    """Write `tensors` (cast to `dtypes[name]` where given) to `path` atomically, each in slices of at most
    `chunk_bytes` (64 MB), so the extra memory is one slice whatever the file size. A tensor may be anything with
    .shape, .dtype and slicing by rows that gives tensors (a bank's overlay Column). Metadata values are
    JSON-encoded (the convention of save_tensors, so load_tensors decodes them). `progress(nbytes)` is called after
    every slice (a tqdm bar's update fits). The layout is the safetensors specification: 8-byte little-endian
    header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}} padded with
    spaces to 8 bytes, then the data."""
    dtypes = {k: v for k, v in (dtypes or {}).items() if v is not None}
    header, offset, plan = {}, 0, []
    for name, t in tensors.items():
        dtype = dtypes.get(name, t.dtype)
        if dtype not in STREAM_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors here")
        nbytes = math.prod(t.shape) * _itemsize(dtype)
        header[name] = {"dtype": STREAM_NAMES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
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


def _write_tensor(f, name: str, t, dtype: torch.dtype, chunk_bytes: int, progress) -> None:
    if math.prod(t.shape) == 0:
        return
    if len(t.shape) == 0:
        t = t.reshape(1)
    # a float cast to a narrower float (fp32 -> fp16) overflows to inf above its range: checked slice by slice
    narrowed = t.dtype.is_floating_point and dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(t.dtype).max
    row_bytes = max(1, math.prod(t.shape[1:]) * max(_itemsize(dtype), _itemsize(t.dtype)))
    rows = max(1, chunk_bytes // row_bytes)
    for start in range(0, t.shape[0], rows):
        source = t[start:start + rows].detach()
        piece = source.to(device="cpu", dtype=dtype).contiguous()
        if narrowed and not torch.isfinite(piece).all() and torch.isfinite(source).all():
            raise ValueError(f"tensor {name!r} holds values up to {source.abs().max().item():.4g}, which do not fit "
                             f"{dtype} (largest {torch.finfo(dtype).max:.4g}): they would be stored as infinity. Keep "
                             f"a wider dtype (a converted bank: `gmem convert --bank-dtype fp32`)")
        f.write(memoryview(piece.reshape(-1).view(torch.uint8).numpy()))
        if progress is not None:
            progress(piece.numel() * _itemsize(dtype))
        del piece


def read_header(path) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, data offset) of a safetensors file, with clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        # "No such file" would be wrong here: the path exists. Usually a checkpoint folder given where its bank
        # file was meant (MemoryBank.load), so both ways forward are named.
        inside = path / "bank.safetensors"
        example = f" such as {inside}" if inside.is_file() else ""
        raise IsADirectoryError(
            f"{path} is a folder, not a file: give the .safetensors file itself (a memory bank is one file{example}). "
            f"To load a whole checkpoint folder, use gmem_explore.load_checkpoint(folder) or "
            f"GMemPipeline.from_pretrained(folder).")
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}. Check the path; a checkpoint folder needs all its files "
                                f"(copy or save it again).")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file (only {size} bytes): it is empty or truncated. {AGAIN}")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"{path} is not a valid safetensors file (header length {n} exceeds the file): truncated or "
                             f"not safetensors. {AGAIN} {NOT_PICKLE}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not a valid safetensors file (unreadable header). {AGAIN} {NOT_PICKLE}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file (its header is a JSON {type(header).__name__}, not "
                         f"an object). {AGAIN} {NOT_PICKLE}")
    meta_raw = header.pop("__metadata__", {}) or {}
    if not isinstance(meta_raw, dict):
        raise ValueError(f"{path} is not a valid safetensors file (its __metadata__ is not an object). {AGAIN}")
    for name, entry in header.items():
        wrong = _entry_problem(entry)
        if wrong:
            raise ValueError(f"{path} is not a valid safetensors file (tensor {name!r}: {wrong}). {AGAIN}")
    metadata = {}
    for k, v in meta_raw.items():
        try:
            metadata[k] = json.loads(v)
        except (TypeError, json.JSONDecodeError):
            metadata[k] = v
    end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path} is truncated: it holds {size} bytes but its header describes {8 + n + end}. {AGAIN}")
    return header, metadata, 8 + n


def _entry_problem(entry) -> str | None:
    """What is wrong with one tensor's header entry, or None: a damaged header must not reach the reader (an
    offset below 0 read bytes of the header itself as weights; a missing key was a bare KeyError)."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return "its entry lacks dtype, shape or data_offsets"
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"shape {str(shape)[:40]} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return f"data_offsets {str(offsets)[:40]} are not [begin, end] with 0 <= begin <= end"
    return None


def load_tensors(path, mmap: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata. With mmap=True the tensors are copy-on-write views of the mapped file: pages are
    read only when touched, so a 2 GB bank opens at once and is never held twice."""
    header, metadata, offset = read_header(path)
    size = Path(path).stat().st_size
    out = {}
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size) if mmap and size else None
    raw = None if storage is not None else Path(path).read_bytes()
    for name, entry in header.items():
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which gmem-explore does not read "
                             f"(it reads {', '.join(DTYPES)}): convert the file's tensors to one of those, e.g. F32")
        start, stop = entry["data_offsets"]
        shape = tuple(entry["shape"])
        count = stop - start
        itemsize = torch.empty((), dtype=dtype).element_size()
        if count != itemsize * int(torch.tensor(shape).prod().item() if shape else 1):
            raise ValueError(f"{path}: tensor {name!r} has {count} bytes but shape {shape} needs more or fewer")
        begin = offset + start
        if storage is not None and begin % itemsize == 0:
            t = torch.empty(0, dtype=dtype).set_(storage, begin // itemsize, shape)
        else:
            if raw is None:  # a tensor off its dtype's alignment (another writer's file): read the file once
                raw = Path(path).read_bytes()
            t = torch.frombuffer(bytearray(raw[begin:offset + stop]), dtype=dtype).reshape(shape) if count else torch.empty(shape, dtype=dtype)
        out[name] = t
    return out, metadata
