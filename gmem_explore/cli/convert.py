"""Convert a released GMem model (a .pth or a Hub name) into a pickle-free checkpoint folder.

The folder holds safetensors + config.json. The source is the v1 .pth, or GMem v2's network .pth with its bank
.pth (--bank; upstream's 'full' or 'dmd' layout) and VA-VAE files, or a named Hub checkpoint (gmem-v1-xl,
gmem-v2-xl-160ep, gmem-v2-xl-600ep: downloaded or found in the cache).

The .pth is read with torch.load(weights_only=True) (a pickle carrying code is refused), memory-mapped, and
written tensor by tensor, so the 640,000 x 768 bank is never held twice in memory. The folder then loads
memory-mapped with `gmem sample --checkpoint OUT` or GMemPipeline.from_pretrained("OUT").

Examples:
  gmem convert GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth gmem-v1-xl/
  gmem convert GMem_XL_2Miter_ImageNet-1K_K640000_5epo.pth gmem-v1-xl-fp32/ --bank-dtype fp32
  gmem convert GMem_XL_160Epoch_in1k256_network.pth gmem-v2/ --bank BANK.pth \
      --vavae vavae-imagenet256-f16d32-dinov2.pt --stats latents_stats.pt
  gmem convert gmem-v2-xl-160ep gmem-v2/
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import json
import re

from gmem_explore.cli.checks import output_folder


def add_arguments(p):
    p.add_argument("source", metavar="SOURCE",
                   help="the released v1 .pth (dict with network, memorybank, memoryfreq), a v2 network .pth (with "
                        "--bank), or a Hub name: gmem-v1-xl, gmem-v2-xl-160ep, gmem-v2-xl-600ep")
    p.add_argument("out", metavar="OUT", help="new checkpoint folder (must not exist or be empty); needs room for the "
                                              "network (2.7 GB for SiT-XL/2) and the bank, checked before writing")
    p.add_argument("--bank-dtype", choices=["fp16", "fp32"], default="fp16",
                   help="bank precision: fp16 (0.98 GB, default) or fp32 (1.97 GB, bit-exact)")
    p.add_argument("--model", default=None,
                   help="model size of the network: SiT-S, SiT-B, SiT-L or SiT-XL with patch /2, /4 or /8 for v1 "
                        "(default SiT-XL/2), LightningDiT-B/1, -L/1 or -XL/1 for v2 (default LightningDiT-XL/1)")
    p.add_argument("--bank", default=None, metavar="BANK.pth",
                   help="GMem v2: the memory bank .pth, a bare (N, 768) tensor ('full') or the low-rank dict ('dmd'); "
                        "makes SOURCE a v2 network file")
    p.add_argument("--vavae", default=None, metavar="VAVAE.pt",
                   help="GMem v2: hustvl's vavae-imagenet256-f16d32-dinov2.pt, checked and named by the folder "
                        "(default: named on the Hub, hustvl/vavae-imagenet256-f16d32-dinov2)")
    p.add_argument("--stats", default=None, metavar="latents_stats.pt",
                   help="GMem v2: the VA-VAE's latents_stats.pt (with --vavae)")
    p.add_argument("--revision", default=None, help="Hub revision of a named SOURCE (default: main)")
    p.add_argument("--model-config", default=None,
                   help="a JSON object of build_model keywords on top of --model, for released-format files of other "
                        "sizes, e.g. '{\"depth\": 12}' (default: none, the release's sizes)")
    p.add_argument("--sha256", default=None,
                   help="expected sha256 of the source file, 64 hex digits, checked before converting (default: the "
                        "Hugging Face cache's record when the file is in it, else not checked)")


def run(args) -> int:
    from gmem_explore.checkpoints.hub import HUB, download, download_v2, vavae_names

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
    v2_only = [flag for flag, value in (("--bank", args.bank), ("--vavae", args.vavae), ("--stats", args.stats))
               if value is not None]
    if args.source in HUB:
        return convert_named(args, overrides, v2_only)
    if args.revision is not None:
        raise ValueError(f"--revision picks a version of a Hub name ({', '.join(HUB)}); {args.source} is a local file")
    if args.bank is not None and args.sha256:
        raise ValueError("--sha256 checks the v1 release; a v2 conversion checks the Hugging Face cache's hashes "
                         "itself")
    if args.bank is not None:
        from gmem_explore.checkpoints.official_v2 import V2_MODEL, convert_official_v2

        out = convert_official_v2(args.source, args.bank, args.out, vavae=args.vavae, stats=args.stats,
                                  bank_dtype=args.bank_dtype, model=args.model or V2_MODEL, model_overrides=overrides,
                                  names=None if args.vavae else vavae_names(), progress=True)
    elif v2_only:
        raise ValueError(f"{' and '.join(v2_only)} belong to a GMem v2 conversion, which also needs --bank BANK.pth")
    else:
        from gmem_explore.checkpoints.official import OFFICIAL_MODEL, convert_official

        out = convert_official(args.source, args.out, bank_dtype=args.bank_dtype, model=args.model or OFFICIAL_MODEL,
                               model_overrides=overrides, sha256=args.sha256, progress=True)
    print(f"wrote {out} (config.json, model.safetensors, bank.safetensors)")
    return 0


def convert_named(args, overrides, v2_only) -> int:
    """A Hub name: its files downloaded (or found in the cache, offline too) and converted into OUT."""
    if v2_only or args.model or overrides or args.sha256:
        given = v2_only + [f for f, v in (("--model", args.model), ("--model-config", overrides),
                                          ("--sha256", args.sha256)) if v]
        raise ValueError(f"{args.source} is a Hub name, whose files and sizes are known: drop {', '.join(given)}")
    if HUB[args.source].get("generation") == 2:
        from gmem_explore.checkpoints.official_v2 import convert_official_v2

        files = download_v2(args.source, revision=args.revision)
        out = convert_official_v2(files["network"], files["bank"], args.out, vavae=files["vavae"],
                                  stats=files["stats"], bank_dtype=args.bank_dtype,
                                  names=vavae_names(args.source), info={"name": args.source}, progress=True)
    else:
        from gmem_explore.checkpoints.official import convert_official

        out = convert_official(download(args.source, revision=args.revision), args.out, bank_dtype=args.bank_dtype,
                               progress=True)
    print(f"wrote {out} (config.json, model.safetensors, bank.safetensors)")
    return 0
