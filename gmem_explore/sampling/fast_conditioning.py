"""The fast path's inputs that do not change during a run: the network copy it runs (bf16, optionally with FP8
weights) and every block's adaLN modulation for every step time (gmem_explore.sampling.fast uses both).

c = t_embedder(t) + condition_projection(snippet) and the adaLN modulation of every block depend only on t and the
snippet, so they are computed for all steps in a few large matrix products (in chunks that fit a byte budget)
instead of 29 small ones per step.
"""
from __future__ import annotations

import copy
import weakref
from typing import Callable, Sequence

import torch

from . import fp8
from .fast_options import DEFAULT_MODULATION_BUDGET
from ..models.sit import GMemSiT


# ---- network copies ------------------------------------------------------------------------------------------
_copies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fingerprint(model) -> tuple:
    # Storage address + in-place version counter of every tensor: changes when weights are trained or reloaded.
    return tuple((t.data_ptr(), t._version, t.dtype, str(t.device)) for t in model.state_dict().values())


def network_for(model: GMemSiT, dtype: torch.dtype, fp8_layers: tuple = ()) -> GMemSiT:
    """The model itself in its own dtype, else a cached copy with its parameters cast to `dtype` (rebuilt when the
    weights change), with FP8 weights for the named block linears (fp8.attach) when asked. A GMemSiT or a
    LightningDiT."""
    if next(model.parameters()).dtype == dtype and not fp8_layers:
        return model
    key = _fingerprint(model)
    cached = _copies.get(model, {}).get((dtype, fp8_layers))
    if cached is not None and cached[0] == key:
        return cached[1]
    net = copy.deepcopy(model).eval().requires_grad_(False)
    for param in net.parameters():  # buffers keep their dtype: LightningDiT's RoPE tables would lose 0.4% in bf16
        param.data = param.data.to(dtype)
    if fp8_layers:
        fp8.attach(net, fp8_layers)
        fp8.calibrate(net)  # fixed input scales for FastOptions.fp8_static_scales (a few small forwards)
    _copies.setdefault(model, {})[(dtype, fp8_layers)] = (key, net)
    return net


# ---- conditioning, computed once -----------------------------------------------------------------------------
class Modulation:
    """adaLN modulation of every block for every step time, computed in chunks of steps.

    c = t_embedder(t) + condition_projection(snippet) comes from `model` (its own precision, so t is not
    rounded to bf16); the adaLN layers are `net`'s (bf16 in the fast mode: 28 big bf16 products per chunk).

    get(k) -> (blocks (depth, N, 6D), final (N, 2D)) for time index k, in `dtype`; with `uncond` the zero-
    snippet rows (the guidance branch) are appended, giving 2N rows.
    network_time: the time the network embeds for a step time t (a float tensor in the model's dtype), where the
    network runs in another convention than t = 1 noise (LightningDiT: 1 - t, fast_lightningdit.network_time).
    """

    def __init__(self, model: GMemSiT, snippets: torch.Tensor, times: Sequence[float], net: GMemSiT | None = None,
                 budget: int = DEFAULT_MODULATION_BUDGET, network_time: Callable | None = None):
        self.model, self.net, self.times, self.network_time = model, net or model, list(times), network_time
        self.dtype = dtype = next(self.net.parameters()).dtype
        p = next(model.parameters())
        self.snippet_proj = model.condition_projection.linear(snippets.to(p.device, p.dtype))  # (N, D), no dropout
        self.null_proj = model.condition_projection.linear.bias[None]  # Linear(0) = bias: the zero snippet
        c = model.config
        n = snippets.shape[0]
        per_step = (c.depth * 6 + 2) * c.hidden_size * (n + 1) * torch.finfo(dtype).bits // 8
        self.chunk = max(1, min(len(self.times), budget // max(per_step, 1)))
        self.start, self.cond, self.null = -1, None, None

    def _compute(self, start: int):
        stop = min(start + self.chunk, len(self.times))
        p = next(self.model.parameters())
        t = torch.tensor(self.times[start:stop], dtype=p.dtype, device=p.device)
        if self.network_time is not None:
            t = self.network_time(t)
        temb = self.model.t_embedder(t)  # (K, D): the reference's float values (ones * t in the model's dtype)
        net = self.net

        def mods(proj):  # proj (R, D) -> blocks (K, depth, R, 6D), final (K, R, 2D)
            cond = (temb[:, None] + proj[None]).to(self.dtype)
            blocks = torch.stack([b.adaLN_modulation(cond) for b in net.blocks], dim=1)
            return blocks, net.final_layer.adaLN_modulation(cond)

        self.cond, self.null = mods(self.snippet_proj), mods(self.null_proj)
        self.start = start

    def get(self, k: int, uncond: bool = False):
        if not self.start <= k < self.start + self.chunk or self.cond is None:
            self._compute(k)
        j = k - self.start
        blocks, final = self.cond[0][j], self.cond[1][j]
        if uncond:
            n = blocks.shape[1]
            blocks = torch.cat([blocks, self.null[0][j].expand(-1, n, -1)], dim=1)
            final = torch.cat([final, self.null[1][j].expand(n, -1)], dim=0)
        return blocks, final
