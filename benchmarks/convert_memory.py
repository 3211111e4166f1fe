"""Peak process memory of converting a released-format GMem .pth: ours (mmap + streaming, official.py) against
the obvious way (torch.load into memory, then safetensors.save of each dict), in the same run, same file.

The file is synthetic but has the released layout and the released bank size (640,000 x 768 fp32 = 1.97 GB);
the network defaults to SiT-B/2 (0.5 GB) to keep the run short (the network is streamed the same way).
Peak memory is the process's anonymous resident memory (RssAnon, sampled every 5 ms): page cache used by the
memory map is not counted, since the kernel reclaims it. Each method runs in a fresh process.

    .venv/bin/python benchmarks/convert_memory.py                 # writes benchmarks/results/convert_memory.json
    .venv/bin/python benchmarks/convert_memory.py --rows 100000   # quicker
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.base, self.stop = 0.0, rss_anon_mb(), False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_anon_mb())
            time.sleep(0.005)


def child(method: str, src: str, out: str, model: str) -> dict:
    import torch  # noqa: F401  (imported before the baseline is taken)

    from gmem_explore.checkpoints.official import convert_official

    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    if method == "ours":
        convert_official(src, out, bank_dtype="fp16", model=model)
    else:
        from gmem_explore.safefiles import save_tensors

        raw = torch.load(src, map_location="cpu", weights_only=True)  # whole file in memory
        Path(out).mkdir()
        save_tensors(Path(out) / "model.safetensors", raw["network"])
        save_tensors(Path(out) / "bank.safetensors", {"rows": raw["memorybank"].half(), "freq": raw["memoryfreq"]})
        del load_official
    seconds = time.perf_counter() - start
    sampler.stop = True
    sampler.join()
    return {"method": method, "peak_rss_anon_mb": round(sampler.peak - sampler.base, 1), "seconds": round(seconds, 1)}


def main():
    p = argparse.ArgumentParser(prog="benchmarks/convert_memory.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The synthetic file and both conversions go to a temporary folder under "
                                       "benchmarks/,\nremoved at the end: about 5.5 GB at the defaults (the 2.5 GB "
                                       "file and two 1.5 GB checkpoints).")
    p.add_argument("--rows", type=int, default=640_000,
                   help="bank rows of the synthetic file (default 640000, the released bank)")
    p.add_argument("--dim", type=int, default=768, help="bank row dimension (default 768, the released bank)")
    p.add_argument("--model", default="SiT-B/2",
                   help="network of the synthetic file, a build_model name (default SiT-B/2, 0.5 GB; the "
                        "release is SiT-XL/2)")
    # the parent re-runs this file with these for each method, so every measurement starts in a fresh process
    internal = p.add_argument_group("internal (set by the benchmark for its child processes)")
    internal.add_argument("--child", default=None, choices=["baseline", "ours"], help="measure this method only")
    internal.add_argument("--src", default=None, help="the .pth to convert")
    internal.add_argument("--out", default=None, help="the folder to convert it into")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.src, args.out, args.model)))
        return
    import torch

    from gmem_explore import build_model

    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        src = Path(tmp) / "released-layout.pth"
        net = build_model(args.model).state_dict()
        g = torch.Generator().manual_seed(0)
        raw = {"network": net, "memorybank": torch.randn(args.rows, args.dim, generator=g),
               "memoryfreq": torch.randint(1, 100, (args.rows,), generator=g).float()}
        torch.save(raw, src)
        sizes = {"file_mb": round(src.stat().st_size / 2**20, 1),
                 "network_mb": round(sum(t.numel() * t.element_size() for t in net.values()) / 2**20, 1),
                 "bank_fp32_mb": round(raw["memorybank"].numel() * 4 / 2**20, 1)}
        del raw, net
        results = []
        for method in ("baseline", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--child", method, "--src", str(src), "--out",
                                   str(Path(tmp) / method), "--model", args.model],
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    record = {"rows": args.rows, "dim": args.dim, "model": args.model, **sizes, "results": results,
              "note": "peak anonymous memory above the process's start; page cache of the memory map excluded"}
    out = ROOT / "benchmarks" / "results" / "convert_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
