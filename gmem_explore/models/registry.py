"""One build_model for every backbone family: a name's prefix ("SiT-XL/2", "LightningDiT-XL/1") or `backbone=`
picks the family; keywords override its sizes. Without either, the family is SiT (v1), as before there were two."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .lightningdit import NAMED as LIGHTNINGDIT_NAMES
from .lightningdit import LightningDiT, LightningDiTConfig, lightningdit_config
from .sit import PATCHES, SIZES, GMemSiT, ModelConfig
from .sit import model_config as sit_config


@dataclass(frozen=True)
class Backbone:
    prefix: str  # what the names of this family start with
    names: tuple[str, ...]
    config: Callable  # (name | None, **overrides) -> config
    config_class: type
    network: type  # config -> module


BACKBONES = {
    "sit": Backbone("SiT-", tuple(f"SiT-{s}/{p}" for s in SIZES for p in PATCHES), sit_config, ModelConfig, GMemSiT),
    "lightningdit": Backbone("LightningDiT-", tuple(LIGHTNINGDIT_NAMES), lightningdit_config, LightningDiTConfig,
                             LightningDiT),
}


def model_names() -> list[str]:
    return [n for b in BACKBONES.values() for n in b.names]


def backbone_of(name: str | None = None, backbone: str | None = None) -> str:
    """The family of a model name and/or an explicit backbone; an error that lists the choices when they disagree
    or are unknown."""
    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if name is None:
        return backbone or "sit"
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string such as 'SiT-XL/2' or 'LightningDiT-XL/1'; got {name!r}")
    found = next((key for key, b in BACKBONES.items() if name.startswith(b.prefix)), None)
    if found is None:
        raise ValueError(f"Unknown model name {name!r}; choose one of {model_names()} or pass sizes as keywords")
    if backbone is not None and backbone != found:
        raise ValueError(f"Model name {name!r} is a {found} model, not backbone={backbone!r}; drop one of the two")
    return found


def model_config(name: str | None = None, *, backbone: str | None = None, **overrides):
    """The config of `build_model(name, backbone=..., **overrides)`, without building the network."""
    return BACKBONES[backbone_of(name, backbone)].config(name, **overrides)


def build_model(name: str | None = None, *, backbone: str | None = None, **overrides) -> nn.Module:
    """`build_model("SiT-XL/2")`, `build_model("LightningDiT-XL/1")`, or sizes as keywords:
    `build_model(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4)` (SiT) and
    `build_model(backbone="lightningdit", input_size=16, patch_size=1, in_channels=32, ...)`."""
    config = model_config(name, backbone=backbone, **overrides)
    return network_for(config)


def network_for(config) -> nn.Module:
    """The network of a config of any family."""
    for b in BACKBONES.values():
        if type(config) is b.config_class:
            return b.network(config)
    raise TypeError(f"Not a model config: {type(config).__name__}")


def config_from_dict(d: dict):
    """A config saved as JSON (to_dict): {"backbone": "lightningdit", ...}; without "backbone", SiT's (v1 folders)."""
    d = dict(d)
    key = d.pop("backbone", "sit")
    if key not in BACKBONES:
        raise ValueError(f"Unknown backbone {key!r} in the model config; choose one of {sorted(BACKBONES)}")
    return BACKBONES[key].config_class.from_dict(d)
