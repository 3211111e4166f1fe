"""GMem v2's sampler recipes (LINs-lab/GMem transport/, configs/gmem_*_xl*.yaml) in this project's time (t = 1
noise): the stochastic Heun SDE with its "Mean" last step, the shifted ODE grid, guidance inside an interval, each
checked against the algorithm written in upstream's own time (t = 0 noise) with the same noise."""
from __future__ import annotations

import pytest
import torch

from gmem_explore.sampling import RECIPES, SamplerSettings, evaluations, make_generators, sample, time_grid

torch.manual_seed(0)
W = torch.randn(3 * 4 * 4, 3 * 4 * 4) * 0.1


def upstream_velocity(x, t_up, snippet):
    """A stand-in network in upstream's convention: any smooth function of (x, t, snippet) will do."""
    flat = x.reshape(x.shape[0], -1)
    out = torch.tanh(flat @ W.double()) * (1 + t_up[:, None]) + snippet[:, :1] * 0.3
    return out.reshape(x.shape)


def ours(x, t, snippet):
    """The same network at this project's edge: v_here(x, t) = -v_upstream(x, 1 - t)."""
    return -upstream_velocity(x.double(), 1 - t.double(), snippet.double()).to(x.dtype)


def upstream_sde_heun(x, snippet, num_steps, noises, last_step_size=0.004):
    """transport.Sampler.sample_sde with sampling_method "Heun", diffusion_form "linear" (g = 1 - t),
    last_step "Mean", written in upstream's time; noises[i] is the i-th step's standard normal draw."""
    t = torch.linspace(0.0, 1.0 - last_step_size, num_steps, dtype=torch.float64)
    dt = float(t[1] - t[0])

    def drift(x, t_cur):
        tv = torch.full((x.shape[0],), t_cur, dtype=torch.float64)
        v = upstream_velocity(x, tv, snippet)
        score = -(x - t_cur * v) / (1 - t_cur)  # x_t = t x1 + (1 - t) eps, v = x1 - eps: eps = x_t - t v
        return v + (1 - t_cur) * score

    for i, t_cur in enumerate(t[:-1].tolist()):
        x_hat = x + (2 * (1 - t_cur)) ** 0.5 * noises[i] * dt ** 0.5
        k1 = drift(x_hat, t_cur)
        x_p = x_hat + dt * k1
        k2 = drift(x_p, t_cur + dt)
        x = x_hat + 0.5 * dt * (k1 + k2)
    return x + drift(x, float(t[-1])) * last_step_size


def test_sde_heun_is_upstreams_stochastic_heun_with_the_same_noise():
    n, steps = 3, 12
    gens = make_generators([1, 2, 3], "cpu")
    noise = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
    snippet = torch.randn(n, 8)
    ours_out = sample(ours, noise, snippet, method="sde-heun", steps=steps, generators=gens, fast=False)
    again = make_generators([1, 2, 3], "cpu")
    [torch.randn(3, 4, 4, generator=g) for g in again]  # the initial noise: each generator's first draw
    draws = torch.stack([torch.randn((steps - 1, 3, 4, 4), generator=g) for g in again], 1).double()
    want = upstream_sde_heun(noise.double(), snippet.double(), steps, draws)
    assert torch.allclose(ours_out.double(), want, atol=1e-5), (ours_out.double() - want).abs().max()


def test_sde_heun_grid_and_evaluations_are_upstreams():
    grid = time_grid("sde-heun", 50)
    assert len(grid) == 51 and grid[0] == 1 and abs(grid[49] - 0.004) < 1e-12 and grid[50] == 0
    assert evaluations("sde-heun", 50) == 99 and RECIPES["gmem-v2"].evaluations == 99
    calls = []

    def counted(x, t, s):
        calls.append(x.shape[0])
        return ours(x, t, s)

    noise, snippet = torch.randn(2, 3, 4, 4), torch.randn(2, 8)
    sample(counted, noise, snippet, method="sde-heun", steps=50, fast=False)
    assert len(calls) == 99  # one network call per evaluation (upstream makes two: drift and score)


def test_guidance_runs_the_unconditional_half_only_inside_its_interval():
    calls = []

    def counted(x, t, s):
        calls.append((x.shape[0], float(t[0])))
        return ours(x, t, s)

    settings = RECIPES["gmem-v2-cfg"]
    assert settings.guidance == 7.75 and settings.guidance_interval == (0.0, 0.11)
    sample(counted, torch.randn(2, 3, 4, 4), torch.randn(2, 8), method="sde-heun", steps=50, fast=False,
           guidance=settings.guidance, guidance_interval=settings.guidance_interval)
    doubled = [t for b, t in calls if b == 4]
    assert doubled and all(t <= 0.11 + 1e-9 for t in doubled)
    assert all(b == 2 for b, t in calls if t > 0.11 + 1e-9)
    assert len(calls) == 99  # guided calls double the batch, not the number of calls


def test_the_ode_time_shift_is_upstreams_formula():
    s = 0.3
    up = torch.linspace(0, 1, 50, dtype=torch.float64)
    shifted = s * up / (1 + (s - 1) * up)  # integrators.ode compute_tm
    assert torch.allclose(time_grid("euler", 49, s), (1 - shifted))
    assert torch.equal(time_grid("euler", 49, 1.0), torch.linspace(1, 0, 50, dtype=torch.float64))
    recipe = RECIPES["gmem-v2-ode"]
    assert recipe.method == "euler" and recipe.steps == 49 and torch.allclose(recipe.time_grid(), 1 - shifted)


def test_an_image_does_not_depend_on_its_batch():
    gens = make_generators([5, 6], "cpu")
    noise = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
    both = sample(ours, noise, torch.ones(2, 8), method="sde-heun", steps=6, generators=gens, fast=False)
    one = make_generators([6], "cpu")
    alone = sample(ours, torch.randn(1, 3, 4, 4, generator=one[0]), torch.ones(1, 8), method="sde-heun", steps=6,
                   generators=one, fast=False)
    assert torch.allclose(both[1], alone[0], atol=1e-6)


def test_bad_v2_settings_are_refused_with_what_to_do(tiny_model):
    with pytest.raises(ValueError, match="time_shift applies to the ODE methods"):
        SamplerSettings("sde-heun", 50, time_shift=0.3)
    with pytest.raises(ValueError, match="time_shift must be a finite number > 0"):
        SamplerSettings("euler", 49, time_shift=0.0)
    noise, snippet = torch.randn(1, 3, 8, 8), torch.randn(1, 16)
    with pytest.raises(TypeError, match="the fast path needs a GMemSiT \\(v1\\) or LightningDiT \\(v2\\) model"):
        sample(ours, torch.randn(1, 3, 4, 4), torch.randn(1, 8), method="sde-heun", steps=4, fast=True)
    kw = dict(method="sde-heun", steps=4)
    out = sample(tiny_model, noise, snippet, generators=make_generators([0], "cpu"), **kw)  # fast=None: the reference
    assert out.shape == noise.shape and torch.isfinite(out).all()
    fast = sample(tiny_model, noise, snippet, generators=make_generators([0], "cpu"), fast=True, **kw)  # runs fast too
    assert torch.allclose(fast, out, rtol=1e-4, atol=1e-5)
