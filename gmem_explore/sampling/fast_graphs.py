"""CUDA graphs for the fast path's steps: one graph per step kind, captured on first use and replayed.

A graph replays its kernels without a launch per operation, which pays off where launch overhead dominates (small,
fixed batches: the live case of 4 images). gmem_explore.sampling.fast decides when to use them and keeps them per network.
"""
from __future__ import annotations

from typing import Callable

import torch


def graphs_possible(device: torch.device) -> bool:
    return device.type == "cuda"


class GraphedSteps:
    """One CUDA graph per step kind (guided or not, Heun corrector or not), captured on first use.

    Inputs are copied into static buffers before each replay (device-to-device, no host sync); the outputs
    live in static buffers overwritten by the next replay, so callers clone what they keep.
    """

    def __init__(self, warmup: int = 2):
        self.warmup, self.graphs = warmup, {}  # no reference to the network: the cache is keyed weakly by it

    def __call__(self, fn: Callable, *args):
        key = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)
        if key not in self.graphs:
            self.graphs[key] = self._capture(fn, args)
        graph, static_in, static_out = self.graphs[key]
        for dst, src in zip(static_in, args):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return static_out

    def _capture(self, fn, args):
        static_in = tuple(None if a is None else a.clone() for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (and compilation) on a side stream, as torch.cuda.graph requires
            for _ in range(self.warmup):
                fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(*static_in)
        return graph, static_in, static_out
