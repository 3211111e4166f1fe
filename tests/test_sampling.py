"""Samplers: correctness on Gaussian data with the exact velocity, determinism per image, guidance, errors."""
import math

import pytest
import torch

from gmem_explore.sampling import StepInfo, evaluations, initial_noise, make_generators, sample, time_grid

MU, S = 0.7, 0.5


def gaussian_velocity(x, t, snippet):
    """Exact E[eps - x0 | x_t] for data x0 ~ N(MU, S^2) per dimension on the path x_t = (1 - t) x0 + t eps."""
    t = t.double().view(-1, *([1] * (x.ndim - 1)))
    x = x.double()
    var = (1 - t) ** 2 * S**2 + t**2
    centred = x - (1 - t) * MU
    e_x0 = MU + (1 - t) * S**2 / var * centred
    e_eps = t / var * centred
    return e_eps - e_x0


@pytest.mark.parametrize("method,steps", [("euler", 100), ("heun", 40), ("sde", 250)])
def test_samplers_reproduce_gaussian_data(method, steps):
    n = 256
    gens = make_generators(range(n), "cpu")
    noise = initial_noise(gens, (1, 8, 8))  # 16,384 scalar samples
    out = sample(gaussian_velocity, noise, torch.zeros(n, 4), method=method, steps=steps, generators=gens)
    # Sampling error of the mean of 16,384 draws: S / 128 = 0.004 (dimensions within an image are independent
    # here), so 0.02 is 5 sigma. The std's own sampling error is 0.6%; the discretisation adds a bias of O(1/steps)
    # for Euler and the released SDE grid (one final deterministic step from t = 0.04). Measured with these seeds:
    # mean off by <= 0.006, std off by <= 1.2% for all three; 4% leaves room for other platforms' RNG streams.
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / S - 1) < 0.04


def test_a_wrong_velocity_fails_the_gaussian_check():
    """The check above can fail: a sampler fed a biased velocity lands visibly off."""
    n = 64
    gens = make_generators(range(n), "cpu")
    noise = initial_noise(gens, (1, 8, 8))
    biased = lambda x, t, s: gaussian_velocity(x, t, s) - 0.1  # noqa: E731
    out = sample(biased, noise, torch.zeros(n, 4), method="euler", steps=50)
    assert abs(out.mean().item() - MU) > 0.05


def test_time_grids_are_the_released_ones():
    sde = time_grid("sde", 250)
    assert len(sde) == 251 and sde[0] == 1.0 and abs(sde[-2] - 0.04) < 1e-12 and sde[-1] == 0.0
    assert torch.allclose(time_grid("euler", 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert evaluations("heun", 10) == 19 and evaluations("sde", 250) == 250


@pytest.mark.parametrize("method", ["sde", "euler", "heun"])
def test_same_seed_same_image_at_batch_1_and_8(tiny_model, method):
    seeds = list(range(100, 108))
    snippets = torch.randn(8, 16)

    def run(indices):
        gens = make_generators([seeds[i] for i in indices], "cpu")
        noise = initial_noise(gens, (3, 8, 8))
        return sample(tiny_model, noise, snippets[indices], method=method, steps=5, generators=gens)

    together = run(list(range(8)))
    alone = torch.cat([run([i]) for i in range(8)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_sde_noise_comes_from_the_generators(tiny_model):
    noise = initial_noise(make_generators([1], "cpu"), (3, 8, 8))
    a = sample(tiny_model, noise, torch.randn(1, 16), "sde", 5, generators=make_generators([7], "cpu"))
    b = sample(tiny_model, noise, torch.randn(1, 16), "sde", 5, generators=make_generators([8], "cpu"))
    assert not torch.allclose(a, b)


def test_callback_sees_every_step_and_can_stop(tiny_model):
    seen = []
    noise = torch.randn(2, 3, 8, 8)
    sample(tiny_model, noise, torch.randn(2, 16), "heun", 6, callback=seen.append)
    assert [i.step for i in seen] == list(range(1, 7)) and all(isinstance(i, StepInfo) for i in seen)
    assert seen[-1].t == 0.0 and seen[0].denoised.shape == noise.shape

    def stop(info):
        if info.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(tiny_model, noise, torch.randn(2, 16), "euler", 6, callback=stop)


def test_guidance_calls_the_unconditional_branch_only_inside_the_interval():
    calls = []

    def model(x, t, s):
        calls.append((float(t[0]), x.shape[0], bool((s == 0).all(dim=1).any())))
        return torch.where((s == 0).all(dim=1).view(-1, 1, 1, 1), torch.zeros_like(x), torch.ones_like(x))

    noise = torch.zeros(2, 1, 2, 2)
    out = sample(model, noise, torch.ones(2, 3), "euler", 4, guidance=3.0, guidance_interval=(0.6, 1.0))
    doubled = [t for t, batch, has_zero in calls if batch == 4 and has_zero]
    assert doubled == [1.0, 0.75]  # t = 0.5 and 0.25 lie outside [0.6, 1]
    # velocity 1 conditional, 0 unconditional: guided 3 on two steps of dt 0.25, plain 1 on the other two
    assert torch.allclose(out, torch.full_like(out, -(3 * 0.25 * 2 + 1 * 0.25 * 2)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="ddim"), "Unknown sampler 'ddim'"),
    (dict(steps=0), r"steps must be an integer in \[1, 5000\]"),
    (dict(steps=-3), "steps must be"),
    (dict(steps=10**9), "steps must be"),
    (dict(steps=2.5), "steps must be"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(guidance_interval=(0.8, 0.2)), "guidance_interval"),
])
def test_bad_parameters_are_explained(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(tiny_model, torch.randn(1, 3, 8, 8), torch.randn(1, 16), **kwargs)


def test_nan_and_misshaped_snippets_are_refused(tiny_model):
    bad = torch.randn(2, 16)
    bad[1, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        sample(tiny_model, torch.randn(2, 3, 8, 8), bad, "euler", 2)
    with pytest.raises(ValueError, match=r"snippets must have shape \(2, D\)"):
        sample(tiny_model, torch.randn(2, 3, 8, 8), torch.randn(3, 16), "euler", 2)


def branch_stub(calls):
    """Velocity 1 for the conditional branch, 0 for the all-zero (unconditional) snippet; records
    (t, whether the call held an unconditional row)."""

    def model(x, t, s):
        null = (s == 0).all(dim=1)
        calls.append((float(t[0]), bool(null.any())))
        return torch.where(null.view(-1, 1, 1, 1), torch.zeros_like(x), torch.ones_like(x))

    return model


def test_guidance_interval_includes_its_lower_edge():
    """Euler 4 steps visits t = 1, 0.75, 0.5, 0.25: the interval [0.5, 1] is closed, so t = 0.5 is guided."""
    calls = []
    out = sample(branch_stub(calls), torch.zeros(2, 1, 2, 2), torch.ones(2, 3), "euler", 4, guidance=3.0,
                 guidance_interval=(0.5, 1.0))
    assert [t for t, has_null in calls if has_null] == [1.0, 0.75, 0.5]
    assert [t for t, has_null in calls if not has_null] == [0.25]
    # guided velocity 0 + 3 (1 - 0) = 3 on three steps of dt -0.25, plain velocity 1 on the last
    assert torch.allclose(out, torch.full_like(out, -0.25 * (3 + 3 + 3 + 1)))


def test_guidance_below_one_is_applied():
    """guidance 0.5 moves towards the unconditional branch: 0 + 0.5 (1 - 0) = 0.5; it is not 'no guidance'."""
    calls = []
    out = sample(branch_stub(calls), torch.zeros(1, 1, 2, 2), torch.ones(1, 3), "euler", 4, guidance=0.5)
    assert [t for t, has_null in calls if has_null] == [1.0, 0.75, 0.5, 0.25]
    assert torch.allclose(out, torch.full_like(out, -0.25 * 4 * 0.5))
    plain = sample(branch_stub([]), torch.zeros(1, 1, 2, 2), torch.ones(1, 3), "euler", 4, guidance=1.0)
    assert torch.allclose(plain, torch.full_like(plain, -1.0))


def affine_velocity(x, t, s):
    """A velocity depending on both x and t (so a step evaluated at the wrong point or time is visible)."""
    return 0.5 * x + 0.3 * t.view(-1, *([1] * (x.ndim - 1))) - 0.1


def f(x, t):
    return 0.5 * x + 0.3 * t - 0.1


def test_sde_steps_are_the_documented_euler_maruyama_by_hand():
    """3 SDE steps on linspace(1, 0.04, 3) then 0: x + ((2 - t) v + x) dt + sqrt(2 t |dt|) eps, the last step
    without noise; eps drawn up front from each image's generator; denoised = x - t v at every step."""
    shape = (1, 2, 2)
    noise = torch.randn(2, *shape, generator=torch.Generator().manual_seed(11))
    seen = []
    out = sample(affine_velocity, noise, torch.ones(2, 3), "sde", 3, generators=make_generators([5, 6], "cpu"),
                 callback=seen.append)
    eps = torch.stack([torch.randn((2, *shape), generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    grid = [1.0, 0.52, 0.04, 0.0]
    x = noise.double()
    xs, denoised = [], []
    for i in range(3):
        t, dt = grid[i], grid[i + 1] - grid[i]
        v = f(x, t)
        denoised.append(x - t * v)
        x = x + ((2 - t) * v + x) * dt
        if i < 2:
            x = x + math.sqrt(2 * t * abs(dt)) * eps[:, i].double()
        xs.append(x)
    assert [info.t for info in seen] == pytest.approx([0.52, 0.04, 0.0])
    for info, x_i, d_i in zip(seen, xs, denoised):
        torch.testing.assert_close(info.x.double(), x_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(info.denoised.double(), d_i, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-5)


def test_heun_corrects_every_step_but_the_last_by_hand():
    """Heun, 2 steps on 1, 0.5, 0: a corrected step, then a plain Euler step; 3 evaluations; denoised = x - t v."""
    calls = []

    def model(x, t, s):
        calls.append(float(t[0]))
        return affine_velocity(x, t, s)

    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    seen = []
    out = sample(model, noise, torch.ones(2, 3), "heun", 2, callback=seen.append)
    assert calls == [1.0, 0.5, 0.5] and len(calls) == evaluations("heun", 2)
    x0 = noise.double()
    v0 = f(x0, 1.0)
    x1 = x0 - 0.5 * 0.5 * (v0 + f(x0 - 0.5 * v0, 0.5))
    v1 = f(x1, 0.5)
    x2 = x1 - 0.5 * v1
    torch.testing.assert_close(seen[0].x.double(), x1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0].denoised.double(), x0 - 1.0 * v0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[1].denoised.double(), x1 - 0.5 * v1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), x2, rtol=1e-5, atol=1e-5)


def test_euler_denoised_is_x_minus_t_v():
    noise = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    seen = []
    sample(affine_velocity, noise, torch.ones(1, 3), "euler", 2, callback=seen.append)
    x0 = noise.double()
    torch.testing.assert_close(seen[0].denoised.double(), x0 - f(x0, 1.0), rtol=1e-5, atol=1e-5)
    x1 = x0 - 0.5 * f(x0, 1.0)
    torch.testing.assert_close(seen[1].denoised.double(), x1 - 0.5 * f(x1, 0.5), rtol=1e-5, atol=1e-5)
