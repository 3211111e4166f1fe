"""What a .pth that is not the released GMem dict holds, in words: read from its keys and weight shapes.

A researcher's disk holds many diffusion-transformer checkpoints. Told only "keys network, memorybank, memoryfreq
are missing", or shown 250 missing keys, they cannot tell whether the file is the wrong kind or the right kind of
another size. This module names it:
- a GMem network of another size: its sizes read from the weights (depth = blocks, width and patch from
  x_embedder.proj, input side from pos_embed, snippet width from condition_projection) and the `--model` /
  `--model-config` that converts it;
- a class-conditional DiT / SiT / REPA network (a label embedding `y_embedder`, no `condition_projection`): not GMem;
- a training checkpoint ({"model", "ema", "opt", "args", ...}, as REPA's and GMem's train.py write it): the network to
  use is "ema" (what upstream's generate.py samples with), and the memory bank lives in another file;
- a bare state_dict (DiT's released .pt files are one): a network without a bank.
"""
from __future__ import annotations

import json
import re

import torch

from ..models.sit import PATCHES, SIZES

V1_KEYS = ("network", "memorybank", "memoryfreq")  # the GMem v1 release's dict
TRAINING_KEYS = ("ema", "model")  # REPA / GMem train.py: {"model", "ema", "opt", "args", "steps"}
HEAD_WIDTH = 64  # every named SiT size has 64-wide heads; num_heads is not stored in the weights


def is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def network_sizes(network: dict) -> dict | None:
    """build_model keywords read from a SiT-style state_dict (plain or "module."-prefixed keys); None when the
    weights that carry the sizes are missing. num_heads is a guess (64-wide heads, as every named size has)."""
    net = {k.removeprefix("module."): v for k, v in network.items()}
    embed, pos = net.get("x_embedder.proj.weight"), net.get("pos_embed")
    if embed is None or embed.ndim != 4 or pos is None or pos.ndim != 3:
        return None
    hidden, channels, patch = embed.shape[0], embed.shape[1], embed.shape[2]
    grid = round(pos.shape[1] ** 0.5)
    blocks = {int(m.group(1)) for k in net if (m := re.match(r"blocks\.(\d+)\.", k))}
    sizes = {"input_size": grid * patch, "patch_size": patch, "in_channels": channels, "hidden_size": hidden,
             "depth": len(blocks)}
    named = [heads for depth, width, heads in SIZES.values() if (depth, width) == (len(blocks), hidden)]
    sizes["num_heads"] = named[0] if named else max(1, hidden // HEAD_WIDTH)
    fc1 = net.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.shape[0] != 4 * hidden:
        sizes["mlp_ratio"] = fc1.shape[0] / hidden
    condition = net.get("condition_projection.linear.weight")
    if condition is not None:
        sizes["snippet_dim"] = condition.shape[1]
    first, last = net.get("projectors.0.0.weight"), net.get("projectors.0.4.weight")
    if first is not None and last is not None:
        sizes["projector_dim"], sizes["repa_dim"] = first.shape[0], last.shape[0]
    return sizes


def size_name(sizes: dict) -> str | None:
    """"SiT-B/2" when the sizes are a named size, else None."""
    for name, (depth, width, heads) in SIZES.items():
        if (sizes["depth"], sizes["hidden_size"]) == (depth, width) and sizes["patch_size"] in PATCHES:
            return f"SiT-{name}/{sizes['patch_size']}"
    return None


def describe_network(network: dict) -> str:
    """"a GMem SiT-B/2 network (depth 12, width 768, patch 2, 32x32x4 input, 768-d snippets)", or the kind of
    network it is when it is not GMem."""
    net = {k.removeprefix("module."): v for k, v in network.items()}
    sizes = network_sizes(net)
    if any(k.startswith("y_embedder.") for k in net):
        classes = net.get("y_embedder.embedding_table.weight")
        count = f", {classes.shape[0]} rows" if classes is not None else ""
        return (f"a class-conditional DiT / SiT / REPA network (a label embedding y_embedder{count}, no "
                f"condition_projection), not a GMem network: GMem is conditioned on memory snippets")
    if sizes is None or "snippet_dim" not in sizes:
        return f"a state_dict that is not a GMem SiT ({len(net)} tensors, e.g. {', '.join(sorted(net)[:4])})"
    shape = (f"depth {sizes['depth']}, width {sizes['hidden_size']}, patch {sizes['patch_size']}, "
             f"{sizes['input_size']}x{sizes['input_size']}x{sizes['in_channels']} input, "
             f"{sizes['snippet_dim']}-d snippets")
    name = size_name(sizes)
    return f"a GMem {name} network ({shape})" if name else f"a GMem network of a custom size ({shape})"


def how_to_convert(network: dict) -> str:
    """The `gmem convert` options that build a network of this state_dict's size (GMem networks only)."""
    sizes = network_sizes(network)
    if sizes is None or "snippet_dim" not in sizes:
        return ""
    name = size_name(sizes)
    # keywords on top of --model: all sizes for a custom network, else those that differ from the release's
    defaults = {"input_size": 32, "in_channels": 4, "snippet_dim": 768, "projector_dim": 2048, "repa_dim": 768}
    if name is not None:
        defaults.update(patch_size=sizes["patch_size"], hidden_size=sizes["hidden_size"], depth=sizes["depth"],
                        num_heads=sizes["num_heads"])
    extra = {k: v for k, v in sizes.items() if defaults.get(k) != v}
    model = f" --model {name}" if name else ""
    config = f" --model-config '{json.dumps(extra)}'" if extra else ""
    heads = "" if name else " (num_heads is not stored in the weights: 64-wide heads assumed, as in every named size)"
    return f"convert it with `gmem convert FILE OUT{model}{config}`{heads}"


def explain_foreign(raw: dict) -> str | None:
    """A sentence on what a dict without the released keys is, or None when it is not recognisable."""
    if is_state_dict(raw):
        return (f"it holds a bare network state_dict, {describe_network(raw)}, and no memory bank (the released "
                f"file is a dict of network, memorybank and memoryfreq)")
    found = [k for k in TRAINING_KEYS if is_state_dict(raw.get(k))]
    if found:
        network = raw[found[0]]
        kind = describe_network(network)
        text = (f"it is a training checkpoint (keys {sorted(map(str, raw))}, as REPA's and GMem's train.py write "
                f"it) holding {kind}")
        if kind.startswith("a GMem"):
            text += (". Its memory bank is a separate file (upstream keeps it beside the run as a tensor and a "
                     ".freq file). Use the EMA weights, as upstream's generate.py does: "
                     "torch.save({'network': ckpt['ema'], 'memorybank': bank, 'memoryfreq': freq}, 'gmem.pth') "
                     "makes the released layout, which this converts")
        return text
    return None


def looks_like(obj) -> str:
    """What a .pth's contents look like, in words: a v1 or v2 network, a v2 bank of either layout, or neither."""
    if isinstance(obj, dict) and all(k in obj for k in V1_KEYS):
        return "the GMem v1 release (a dict of network, memorybank and memoryfreq: SiT-XL/2 with its 640k bank)"
    if torch.is_tensor(obj):
        return f"a GMem v2 memory bank in upstream's 'full' layout (a bare {tuple(obj.shape)} tensor)"
    if isinstance(obj, dict) and {"C", "M", "mean"} <= set(obj):
        return f"a GMem v2 memory bank in upstream's 'dmd' low-rank layout (keys {sorted(map(str, obj))})"
    state = obj.get("ema") if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) else obj
    if isinstance(state, dict):
        keys = {str(k).removeprefix("module.") for k in state}
        if any(k.startswith(("feat_rope.", "projector.0.")) or ".mlp.w12." in k for k in keys):
            return "a GMem v2 LightningDiT network (RoPE buffers, SwiGLU, the singular REPA 'projector')"
        if any(k.startswith("projectors.") or ".mlp.fc1." in k for k in keys):
            return "a GMem v1 SiT network (GELU MLP, the plural REPA 'projectors')"
        return f"a dict of {len(keys)} entries such as {sorted(keys)[:4]}, neither a GMem network nor a bank"
    return f"a {type(obj).__name__}, neither a GMem network nor a bank"
