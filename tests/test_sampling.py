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
