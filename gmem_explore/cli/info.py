"""Describe a checkpoint: its parts, default sampler and where it came from.

The network, bank, snippet encoder, autoencoder and default sampler, then what the checkpoint's config.json
records of its origin (description, data and licence, training recipe).

CHECKPOINT is a name (default: the embedded 'emoji-32'), a checkpoint folder or a released-format .pth file.
Nothing is generated; the weights are read once (the released gmem-v1-xl, or a .pth, is downloaded and converted
first, as for every command). The autoencoder and a DINOv2 encoder are named, not loaded: describing gmem-v1-xl
needs neither diffusers nor the SD-VAE's weights.

Examples:
  gmem info                       # the embedded default
  gmem info path/to/folder
  gmem info gmem-v1-xl --json     # the same facts as JSON, for scripts
  gmem info gmem-v1-xl --revision COMMIT   # another Hub revision (its commit is in "source")
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import json

# what config.json's "info" says of a checkpoint's origin, in the order a reader wants it
ORIGIN = ("description", "data", "licence", "recipe", "trained_on", "source")
SPELLINGS = {"licence": ("licence", "license")}  # conversions before this version wrote "license"


def add_arguments(p):
    p.add_argument("checkpoint", nargs="?", default="emoji-32",
                   help="checkpoint name, folder or released-format .pth (default: the embedded 'emoji-32')")
    p.add_argument("--revision", default=None,
                   help="Hub revision (branch, tag or commit) of a named checkpoint such as gmem-v1-xl (default: main)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (parts, parameter counts, sampler, info) instead of text (default: off)")


def origin_lines(info: dict) -> list[str]:
    lines = []
    for key in ORIGIN:
        value = next((info[k] for k in SPELLINGS.get(key, (key,)) if info.get(k)), None)
        if isinstance(value, dict):  # e.g. data: {dataset, images, attribution}
            value = "; ".join(f"{k} {v}" for k, v in value.items() if v is not None)
        if value:
            lines.append(f"  {key:<12} {value}")
    training = info.get("training")
    if isinstance(training, dict) and training.get("steps"):
        config = training.get("config") or {}
        lines.append(f"  {'training':<12} {training['steps']:,} steps" + (
            f", batch {config['batch_size']}, lr {config['lr']:g}" if {"batch_size", "lr"} <= set(config) else ""))
    return lines


class NamedAutoencoder:
    """The autoencoder a checkpoint's config names, not loaded: its `name` is all the description uses (the
    SD-VAE would need diffusers and a download, which a description must not)."""

    def __init__(self, config: dict | None):
        self.name = (config or {}).get("type", "pixels")


def describe(checkpoint, revision: str | None = None):
    """A GMemPipeline over the checkpoint's network and bank, with its autoencoder named but not loaded."""
    from gmem_explore.checkpoints.folder import load_checkpoint
    from gmem_explore.checkpoints.hub import resolve_checkpoint
    from gmem_explore.pipeline import GMemPipeline

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint, revision=revision))
    return GMemPipeline(ckpt.model, ckpt.bank, NamedAutoencoder(ckpt.autoencoder), ckpt.encoder, ckpt.sampler,
                        ckpt.info, choose=ckpt.choose)


def run(args) -> int:
    pipe = describe(args.checkpoint, args.revision)
    if args.json:
        print(json.dumps(pipe.describe(), indent=1, default=str))
        return 0
    print(pipe.summary())
    lines = origin_lines(pipe.info)
    if lines:
        print("origin\n" + "\n".join(lines))
    return 0
