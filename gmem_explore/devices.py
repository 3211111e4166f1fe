"""The torch device a user asked for, refused at once when this machine cannot use it: torch's own errors come late
and bare (`cuda` on a CPU-only build is an AssertionError inside the first .to(), after a model has loaded).
One check for the library (pipeline, `device="cuda:7"`) and the command line (`--device cuda:7`)."""
from __future__ import annotations

import torch

USAGE = "use cpu, cuda, cuda:N (a GPU's number), mps or xpu"


def check_device(spec, what: str = "device", cpu_hint: str = "device='cpu'") -> torch.device:
    """torch.device(spec) when it can run here, else a ValueError that names `what` (e.g. "--device") and says to
    use `cpu_hint` instead."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{what} {spec!r} is not a device torch knows; {USAGE}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{what} {str(spec)!r} is not available here: {why} (torch {torch.__version__}); use "
                             f"{cpu_hint}, or a CUDA build of torch on a machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{what} {str(spec)!r} is not available here: there {'is' if count == 1 else 'are'} only "
                             f"{count} CUDA GPU{'s' if count != 1 else ''} here "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return device
    if device.type in ("mps", "xpu"):
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            raise ValueError(f"{what} {str(spec)!r}: torch cannot use a {device.type} device on this machine; use "
                             f"{cpu_hint}")
        return device
    # meta tensors hold no values (nothing could be generated); other types have no kernels for this model
    raise ValueError(f"{what} {str(spec)!r}: gmem does not run on {device.type} devices; {USAGE}")
