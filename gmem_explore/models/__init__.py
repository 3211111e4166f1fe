"""The networks: velocity models called as model(x, t, snippet) with t = 1 noise and t = 0 data at every model's
edge. sit.py is GMem v1's SiT (sizes S/B/L/XL, patch 2/4/8); a new backbone is a module beside it whose state_dict
keeps its upstream names, registered in build_model."""
from .sit import PATCHES, SIZES, GMemSiT, ModelConfig, build_model, load_network_state, model_config

__all__ = ["GMemSiT", "ModelConfig", "PATCHES", "SIZES", "build_model", "load_network_state", "model_config"]
