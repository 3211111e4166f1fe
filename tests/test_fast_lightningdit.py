"""The fast path on GMem v2's LightningDiT and v2's samplers (fast.py + fast_lightningdit.py): the reference loop's
images (fp32 within 1e-4 relative L2, bf16 within 2%) and steps over method x time shift x steps x guidance, one
generator per image, the unconditional half only on guided steps, routing and what it refuses; and the prepared GPU
benchmark (benchmarks/gpu_sampler_v2.py) in its CPU smoke mode."""
from __future__ import annotations

import itertools

import pytest
import torch

from gmem_explore import build_model
from gmem_explore.sampling import FastOptions, StepInfo, fast, fast_lightningdit, initial_noise, iter_sample
from gmem_explore.sampling import RECIPES, make_generators, sample

from test_fast import ReplayedSteps, smoke_run

# depth 2, width 64, 4 heads (head width 16: RoPE on), patch 1 on 8 x 4 x 4 latents: 16 tokens; narrow snippets
TINY_V2 = dict(backbone="lightningdit", input_size=4, patch_size=1, in_channels=8, hidden_size=64, depth=2,
               num_heads=4, projector_dim=32, repa_dim=16, snippet_dim=16)
SHAPE = (8, 4, 4)
# (method, time_shift): v2's SDE, its ODE with and without the shift, Heun with and without
METHODS = (("sde-heun", 1.0), ("euler", 1.0), ("euler", 0.3), ("heun", 1.0), ("heun", 0.3))
GUIDANCE = ((1.0, (0.0, 1.0)), (4.0, (0.0, 0.5)))  # none; half the grid
RECIPE_GUIDANCE = (7.75, (0.0, 0.11))  # GMem v2's: touches only the last steps of a grid
FP32_TOL, BF16_TOL = 1e-4, 0.02


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(**{**TINY_V2, **overrides}).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def rel_l2(a, b):
    """Per-image relative L2 error, the largest over the batch."""
    a, b = a.float(), b.float()
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


def inputs(n, first_seed=0):
    gens = make_generators(range(first_seed, first_seed + n), "cpu")
    noise = initial_noise(gens, SHAPE)
    snippets = torch.randn(n, TINY_V2["snippet_dim"], generator=torch.Generator().manual_seed(5 + first_seed))
    return noise, snippets, gens


def run(model, mode, method, steps, shift=1.0, guidance=1.0, interval=(0.0, 1.0), n=3, records=None):
    """(final latents, [(step, total, t, x, denoised)]), with fresh per-image generators for every run."""
    noise, snippets, gens = inputs(n)
    seen = []
    out = sample(model, noise, snippets, method, steps, gens, guidance, interval, time_shift=shift, fast=mode,
                 fast_report=None if records is None else records.append,
                 callback=lambda i: seen.append((i.step, i.total, i.t, i.x.clone(), i.denoised.clone())))
    return out, seen


def check_against(ref, got, tol):
    """Final latents and every step's x and denoised within tol; step, total and t exactly the reference's."""
    (ref_out, ref_steps), (out, steps) = ref, got
    assert out.dtype == torch.float32 and out.shape == ref_out.shape
    assert [s[:3] for s in steps] == [s[:3] for s in ref_steps]
    errors = [rel_l2(out, ref_out)] + [rel_l2(a[k], b[k]) for a, b in zip(steps, ref_steps) for k in (3, 4)]
    assert max(errors) < tol, errors
    return max(errors)


def test_blocks_with_deferred_residuals_are_the_models_blocks():
    """fast_lightningdit.block_forward (carry added by the next block) is Block.forward, for GMem v2's switches and
    for the other upstream switches (LayerNorm, GELU MLP, qk-norm, no RoPE, no adaLN shift)."""
    variants = [{}, dict(use_rmsnorm=False, use_swiglu=False, use_qknorm=True, use_rope=False, wo_shift=True),
                dict(use_qknorm=True, wo_shift=True)]
    for overrides in variants:
        net = tiny(1, **overrides)
        x, snippets, _ = inputs(2)
        c = net.t_embedder(torch.tensor([0.3, 0.9])) + net.condition_projection(snippets)
        h = ref = net.x_embedder(x) + net.pos_embed
        mods = [b.adaLN_modulation(c) for b in net.blocks]
        carry = fast.zero_carry(h, mods[0])
        for block, mod in zip(net.blocks, mods):
            ref = block(ref, c, net.feat_rope)
            h, carry = fast_lightningdit.block_forward(block, h, mod, carry, FastOptions(),
                                                       *fast_lightningdit.rope_tables(net))
        torch.testing.assert_close(h + carry[0].unsqueeze(1) * carry[1], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,shift", METHODS)
def test_fast_modes_match_the_reference(model, method, shift):
    worst = {"fp32": 0.0, "bf16": 0.0}
    guidances = GUIDANCE + ((RECIPE_GUIDANCE,) if method == "sde-heun" else ())  # v2's SDE recipe with its guidance
    for steps, (guidance, interval) in itertools.product(range(1, 6), guidances):
        setting = (method, steps, shift, guidance, interval)
        ref = run(model, False, *setting)
        assert [s[0] for s in ref[1]] == list(range(1, steps + 1))
        worst["fp32"] = max(worst["fp32"], check_against(ref, run(model, "fp32", *setting), FP32_TOL))
        records = []
        worst["bf16"] = max(worst["bf16"], check_against(ref, run(model, "bf16", *setting, records=records), BF16_TOL))
        assert [r.precision for r in records] == ["bf16"]
    assert worst["fp32"] < 1e-5 and worst["bf16"] > 1e-4  # bf16 really ran (fp32 agrees to about 1e-7 here)


@pytest.mark.parametrize("method,shift", [("sde-heun", 1.0), ("euler", 0.3), ("heun", 0.3)])
def test_sit_runs_v2s_methods_on_the_fast_path(tiny_model, method, shift):
    """GMem v1's SiT through the same plan: the stochastic Heun and the shifted grids."""
    kw = dict(n=2, shift=shift, guidance=3.0, interval=(0.0, 0.5))
    for steps in (1, 2, 4):
        noise_shape = (2, tiny_model.config.in_channels, tiny_model.config.input_size, tiny_model.config.input_size)
        noise = initial_noise(make_generators(range(2), "cpu"), noise_shape[1:])
        snippets = torch.randn(2, tiny_model.config.snippet_dim, generator=torch.Generator().manual_seed(3))
        outs = {}
        for mode in (False, "fp32", "bf16"):
            outs[mode] = sample(tiny_model, noise, snippets, method, steps, make_generators(range(2), "cpu"),
                                kw["guidance"], kw["interval"], time_shift=shift, fast=mode)
        assert rel_l2(outs["fp32"], outs[False]) < FP32_TOL and rel_l2(outs["bf16"], outs[False]) < BF16_TOL


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_an_image_does_not_depend_on_its_batch(model, mode):
    """One generator per image (the initial noise and every step's noise): seeds 0..2 together or one at a time give
    the same images, guided steps included. bf16: bit for bit on the CPU; fp32: up to rounding, as the reference loop
    itself (its float32 products are blocked by batch size: 1.4e-6 apart here, the fast path's 1.9e-6)."""
    noise, snippets, gens = inputs(3)
    kw = dict(method="sde-heun", steps=5, guidance=4.0, guidance_interval=(0.0, 0.5), fast=mode)
    batch = sample(model, noise, snippets, generators=gens, **kw)
    singles = []
    for i in range(3):
        one, _, gen = inputs(1, first_seed=i)
        singles.append(sample(model, one, snippets[i:i + 1], generators=gen, **kw))
    if mode == "bf16":
        assert torch.equal(torch.cat(singles), batch)
    else:
        torch.testing.assert_close(torch.cat(singles), batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,shift", METHODS)
def test_the_unconditional_half_runs_only_on_guided_steps(model, method, shift):
    """The fast path doubles the batch exactly where the reference does (counted on the reference's calls)."""
    noise, snippets, _ = inputs(3)
    partly = False
    for guidance, interval in GUIDANCE + (RECIPE_GUIDANCE,):
        rows = []
        probe = lambda x, t, s: rows.append(x.shape[0]) or model(x, t, s)  # noqa: E731  (a callable: reference path)
        sample(probe, noise, snippets, method, 7, None, guidance, interval, time_shift=shift)
        records = []
        sample(model, noise, snippets, method, 7, None, guidance, interval, time_shift=shift, fast="fp32",
               fast_report=records.append)
        assert records[0].evaluations == len(rows) == (13 if method in ("heun", "sde-heun") else 7)
        assert records[0].guided_evaluations == rows.count(6) and rows.count(3) + rows.count(6) == len(rows)
        partly |= 0 < rows.count(6) < len(rows)
    assert partly  # some setting guided some evaluations and not others


def test_routing_picks_the_fast_path_only_when_asked_on_the_cpu(model):
    setting = ("sde-heun", 4)
    noise, snippets, gens = inputs(2)
    records = []
    ref = sample(model, noise, snippets, *setting, gens, fast=False, fast_report=records.append)
    assert records == []  # the reference loop reports nothing
    noise, snippets, gens = inputs(2)
    assert torch.equal(sample(model, noise, snippets, *setting, gens, fast_report=records.append), ref)
    assert records == []  # fast=None: the reference on the CPU (on CUDA the fast path, as for SiT)
    noise, snippets, gens = inputs(2)
    steps = list(iter_sample(model, noise, snippets, *setting, gens, fast=True, fast_report=records.append))
    assert [type(s) for s in steps] == [StepInfo] * 4 + [torch.Tensor]  # a generator, streamed as the reference
    assert len(records) == 1 and records[0].precision == "fp32" and not records[0].compiled  # CPU defaults
    assert rel_l2(steps[-1], ref) < FP32_TOL
    assert fast.supports(model) and all(fast.handles(RECIPES[r]) for r in ("gmem-v2", "gmem-v2-cfg", "gmem-v2-ode"))


def test_what_the_fast_path_refuses(model):
    noise, snippets, gens = inputs(1)
    with pytest.raises(TypeError, match="GMemSiT \\(v1\\) or LightningDiT \\(v2\\)"):
        sample(lambda x, t, s: -x, noise, snippets, "sde-heun", 3, fast=True)
    for precision in ("fp8", "fp8-mlp"):
        with pytest.raises(ValueError, match="SiT models only.*fast='bf16' or 'fp32'"):
            sample(model, noise, snippets, "sde-heun", 3, fast=precision)
        with pytest.raises(ValueError, match="SiT models only"):
            next(fast.iter_fast(model, noise, snippets, "euler", 3, options=FastOptions(precision=precision)))
    with pytest.raises(ValueError, match="snippet must have shape"):
        sample(model, noise, torch.zeros(1, 768), "sde-heun", 3, fast=True)
    with pytest.raises(ValueError, match="time_shift applies to the ODE methods"):
        sample(model, noise, snippets, "sde-heun", 3, fast=True, time_shift=0.3)


def test_the_bf16_copy_keeps_the_rope_tables_in_float32(model):
    net = fast.network_for(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert net.feat_rope.freqs_cos.dtype == torch.float32
    assert torch.equal(net.feat_rope.freqs_sin, model.feat_rope.freqs_sin)


def test_graph_plumbing_with_emulated_graphs(model, monkeypatch):
    """CUDA graphs emulated on the CPU (test_fast.ReplayedSteps): the noise added before each stochastic Heun step, the
    predictor's outputs kept across the corrector's replay, and callbacks given their own tensors."""
    monkeypatch.setattr(fast, "GraphedSteps", ReplayedSteps)
    monkeypatch.setattr(fast, "graphs_possible", lambda device: True)
    setting = ("sde-heun", 6, 1.0, 4.0, (0.0, 0.5))
    ref = run(model, False, *setting)
    ReplayedSteps.captures = 0
    records = []
    check_against(ref, run(model, FastOptions(precision="fp32"), *setting, records=records), FP32_TOL)
    assert records[0].cuda_graphs and ReplayedSteps.captures == 4  # predict/correct x guided or not
    check_against(ref, run(model, FastOptions(precision="fp32"), *setting), FP32_TOL)
    assert ReplayedSteps.captures == 4  # the second run replays the kept graphs


@pytest.mark.slow  # inductor compiles the block and the tail on the CPU: about 45 s on 2 busy cores
def test_the_compiled_step_matches_the_eager_one(model):
    """FastOptions(compile=True) on the CPU: the LightningDiT block and the tail go through torch.compile (regional)
    and give the reference's images."""
    pytest.importorskip("torch._inductor")
    records = []
    ref = run(model, False, "sde-heun", 3, n=2)
    got = run(model, FastOptions(precision="fp32", compile=True), "sde-heun", 3, n=2, records=records)
    if not records[0].compiled:
        pytest.skip(f"torch.compile cannot run here: {records[0].fallback}")
    check_against(ref, got, FP32_TOL)


def test_gpu_benchmark_v2_smoke(tmp_path):
    """benchmarks/gpu_sampler_v2.py runs end to end on a tiny LightningDiT on the CPU and writes its JSON and table:
    upstream's sampler as written in the benchmark agrees with ours (both fp32), and every measurement is there."""
    result = smoke_run("gpu_sampler_v2.py", tmp_path)
    runs = result["runs"]
    assert {"a_upstream", "a_upstream_guided", "b_fast", "b_fast_guided", "c_live"} <= set(runs)
    assert runs["a_upstream"]["network_calls_per_image"] == 2 * runs["b_fast"]["evaluations"]
    assert runs["a_upstream_guided"]["rows_per_call"] == 2 * runs["a_upstream_guided"]["batch"]
    assert runs["b_fast_guided"]["fast"]["guided_evaluations"] < runs["b_fast_guided"]["fast"]["evaluations"]
    assert result["checks"]["fp32_fast_vs_upstream_algorithm"]["max"] < 1e-4
    assert result["checks"]["bf16_vs_fp32"]["unguided"]["max"] < 0.02
    assert result["checks"]["batch_independence"]["max_rel_l2"] < 1e-5
    table = (tmp_path / "gpu_sampler_v2_cpu-smoke.md").read_text()
    assert "| b_fast |" in table and "target" in table
