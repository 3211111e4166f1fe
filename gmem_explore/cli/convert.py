"""Convert the released GMem v1 .pth into a pickle-free checkpoint folder (safetensors + config.json).

The .pth is read with torch.load(weights_only=True) (a pickle carrying code is refused), memory-mapped, and
written tensor by tensor, so the 640,000 x 768 bank is never held twice in memory. The folder then loads
memory-mapped with `gmem sample --checkpoint OUT` or GMemPipeline.from_pretrained("OUT").

Examples:
  gmem convert GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth gmem-v1-xl/
  gmem convert GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth gmem-v1-xl-fp32/ --bank-dtype fp32
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import json
import re

from gmem_explore.cli.checks import output_folder


def add_arguments(p):
    p.add_argument("source", metavar="SOURCE", help="the released .pth file (dict with network, memorybank, memoryfreq)")
    p.add_argument("out", metavar="OUT", help="new checkpoint folder (must not exist or be empty); needs room for the "
                                              "network (2.7 GB for SiT-XL/2) and the bank, checked before writing")
    p.add_argument("--bank-dtype", choices=["fp16", "fp32"], default="fp16",
                   help="bank precision: fp16 (0.98 GB, default) or fp32 (1.97 GB, bit-exact)")
    p.add_argument("--model", default="SiT-XL/2",
                   help="model size of the network: SiT-S, SiT-B, SiT-L or SiT-XL with patch /2, /4 or /8 (default "
                        "SiT-XL/2, the release; a file of another size says which it holds)")
    p.add_argument("--model-config", default=None,
                   help="a JSON object of build_model keywords on top of --model, for released-format files of other "
                        "sizes, e.g. '{\"depth\": 12}' (default: none, the release's sizes)")
    p.add_argument("--sha256", default=None,
                   help="expected sha256 of the source file, 64 hex digits, checked before converting (default: the "
                        "Hugging Face cache's record when the file is in it, else not checked)")


def run(args) -> int:
    from gmem_explore.checkpoints.official import convert_official

    try:
        overrides = json.loads(args.model_config) if args.model_config else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-config is not valid JSON: {e}") from None
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"--model-config must be a JSON object of build_model keywords, e.g. "
                         f"'{{\"depth\": 12, \"hidden_size\": 768}}'; got {args.model_config}")
    if args.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise ValueError(f"--sha256 must be 64 hexadecimal digits (what `sha256sum FILE` prints); got {args.sha256!r}")
    output_folder(args.out, "OUT")  # before the 4.7 GB source is read
    out = convert_official(args.source, args.out, bank_dtype=args.bank_dtype, model=args.model,
                           model_overrides=overrides, sha256=args.sha256, progress=True)
    print(f"wrote {out} (config.json, model.safetensors, bank.safetensors)")
    return 0
