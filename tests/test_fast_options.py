"""The fast path's settings travel as an immutable FastOptions argument and come back as a FastRun record: checked
at the boundary, shorthands kept (fast=True / "bf16"), caches keyed on every option that changes a step, and
fp8_steps (FP8 for the first steps only) where the loop switches networks."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from gmem_explore.sampling import FastOptions, FastRun, fast, initial_noise, make_generators, sample

from conftest import TINY

SHAPE = (TINY["in_channels"], TINY["input_size"], TINY["input_size"])


def run(model, options, steps=4, method="sde", **kw) -> tuple[torch.Tensor, FastRun]:
    gens = make_generators(range(3), "cpu")
    noise = initial_noise(gens, SHAPE)
    snippets = torch.randn(3, TINY["snippet_dim"], generator=torch.Generator().manual_seed(7))
    records = []
    out = sample(model, noise, snippets, method, steps, gens, fast=options, fast_report=records.append, **kw)
    assert len(records) == 1
    return out, records[0]


def test_options_are_immutable_hashable_and_checked():
    options = FastOptions(precision="fp8", inductor={"b": 1, "a": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fused_gelu = False
    assert options.inductor == (("a", True), ("b", 1))  # one key per option set, whatever the dict's order
    assert options == FastOptions(precision="fp8", inductor=[("a", True), ("b", 1)])
    assert hash(options) == hash(FastOptions(precision="fp8", inductor={"a": True, "b": 1}))
    assert options != dataclasses.replace(options, fp8_fast_accum=False)
    for bad, match in [(dict(precision="fp4"), "precision must be one of"), (dict(compile="yes"), "compile must be"),
                       (dict(fused_gelu=1), "fused_gelu must be True or False"),
                       (dict(graph_max_batch=-1), "graph_max_batch must be an integer >= 0"),
                       (dict(modulation_budget=0), "modulation_budget"),
                       (dict(precision="bf16", fp8_steps=3), "fp8_steps needs an FP8 precision"),
                       (dict(precision="fp8", fp8_steps=-1), "fp8_steps must be a step count")]:
        with pytest.raises((ValueError, TypeError), match=match):
            FastOptions(**bad)


def test_shorthands_and_resolution():
    assert FastOptions.from_fast(True) == FastOptions()
    assert FastOptions.from_fast("bf16") == FastOptions(precision="bf16")
    given = FastOptions(cuda_graphs=False)
    assert FastOptions.from_fast(given) is given
    with pytest.raises(TypeError, match="fast must be"):
        FastOptions.from_fast(1)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert FastOptions().resolve(cpu, 4, False) == FastOptions(precision="fp32", compile=False, cuda_graphs=False)
    assert FastOptions().resolve(cuda, 16, True) == FastOptions(precision="bf16", compile=True, cuda_graphs=True)
    assert FastOptions().resolve(cuda, 17, True).cuda_graphs is False  # graph_max_batch = 16
    assert FastOptions(cuda_graphs=True).resolve(cuda, 256, True).cuda_graphs is True
    assert FastOptions(cuda_graphs=True).resolve(cpu, 2, False).cuda_graphs is False  # graphs need CUDA


def test_record_says_what_ran(tiny_model):
    out, record = run(tiny_model, True)
    assert record.options == FastOptions(precision="fp32", compile=False, cuda_graphs=False)  # the CPU's defaults
    assert (record.precision, record.compiled, record.cuda_graphs, record.fallback) == ("fp32", False, False, None)
    assert record.evaluations == 4 and record.guided_evaluations == 0
    row = record.as_dict()
    assert row["options"]["inductor"] == {} and row["precision"] == "fp32" and row["evaluations"] == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.compiled = True
    assert not hasattr(fast, "last_run")  # no shared state for another caller's run to overwrite


class CountedSteps(fast.GraphedSteps):
    """CUDA graphs emulated on the CPU (the step reruns on replay), counting captures."""

    captures = 0

    def _capture(self, fn, args):
        CountedSteps.captures += 1
        static_in = tuple(None if a is None else a.clone() for a in args)
        static_out = tuple(o.clone() for o in fn(*static_in))

        class Graph:
            def replay(self):
                for o, r in zip(static_out, fn(*static_in)):
                    o.copy_(r)

        return Graph(), static_in, static_out


def test_graphs_are_kept_per_option_set(tiny_model, monkeypatch):
    """A graph captured with one FP8 scaling must not be replayed for another: each option set that changes the
    step gets its own capture, and gives the images an eager run with those options gives."""
    monkeypatch.setattr(fast, "GraphedSteps", CountedSteps)
    monkeypatch.setattr(fast, "graphs_possible", lambda device: True)
    static = FastOptions(precision="fp8", cuda_graphs=True)
    per_token = dataclasses.replace(static, fp8_static_scales=False)
    CountedSteps.captures = 0
    a, record = run(tiny_model, static)
    assert record.cuda_graphs and CountedSteps.captures > 0
    captured = CountedSteps.captures
    assert torch.equal(run(tiny_model, static)[0], a) and CountedSteps.captures == captured  # replayed
    b, _ = run(tiny_model, per_token)
    assert CountedSteps.captures > captured and not torch.equal(a, b)
    assert torch.equal(b, run(tiny_model, dataclasses.replace(per_token, cuda_graphs=False))[0])


@pytest.mark.parametrize("method", ["sde", "heun"])
def test_fp8_for_the_first_steps_then_bf16(tiny_model, method):
    """fp8_steps=k: FP8 products on steps 0..k-1, the plain bf16 copy's from step k on. k=0 is a bf16 run and
    k=steps an FP8 run, bit for bit; in between, neither."""
    bf16, _ = run(tiny_model, "bf16", method=method)
    fp8_all, _ = run(tiny_model, "fp8", method=method)
    assert not torch.equal(bf16, fp8_all)
    switched = lambda k: run(tiny_model, FastOptions(precision="fp8", fp8_steps=k), method=method)[0]  # noqa: E731
    assert torch.equal(switched(0), bf16)
    assert torch.equal(switched(4), fp8_all)
    half = switched(2)
    assert not torch.equal(half, bf16) and not torch.equal(half, fp8_all)
