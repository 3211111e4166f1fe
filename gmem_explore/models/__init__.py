"""The networks: velocity models called as model(x, t, snippet) with t = 1 noise and t = 0 data at every model's
edge. sit.py is GMem v1's SiT (sizes S/B/L/XL, patch 2/4/8); lightningdit.py is GMem v2's LightningDiT (upstream's
sizes, XL/1 on VA-VAE latents), whose upstream time runs the other way and is converted at its edge. A new backbone
is a module beside them whose state_dict keeps its upstream names, registered in registry.py, which gives the one
build_model of every family."""
from .lightningdit import LightningDiT, LightningDiTConfig, load_upstream_checkpoint
from .registry import BACKBONES, build_model, config_from_dict, model_config, model_names
from .sit import PATCHES, SIZES, GMemSiT, ModelConfig, load_network_state

__all__ = ["BACKBONES", "GMemSiT", "LightningDiT", "LightningDiTConfig", "ModelConfig", "PATCHES", "SIZES",
           "build_model", "config_from_dict", "load_network_state", "load_upstream_checkpoint", "model_config",
           "model_names"]
