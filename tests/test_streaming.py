"""One streaming API: the sampler loops and GMemPipeline.generate_iter are generators of typed events; generate is a
loop over them; a consumer that stops iterating stops the sampler; previews cost nothing unless asked for. And one
sampler-settings type, checked once."""
from __future__ import annotations

import pytest
import torch

from gmem_explore.events import Finished, Progress
from gmem_explore.sampling import (RECIPES, SamplerSettings, StepInfo, iter_sample, make_generators, sample)


def counting(model):
    """The model with its forward calls counted (calls[0])."""
    calls = [0]
    forward = model.forward

    def counted(*args):
        calls[0] += 1
        return forward(*args)
    model.forward = counted
    return calls


@pytest.mark.parametrize("method, steps, evaluations", [("euler", 3, 3), ("heun", 3, 5), ("sde", 4, 4)])
def test_iter_sample_yields_every_step_then_the_same_result_as_sample(tiny_model, method, steps, evaluations):
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    snippets = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    items = list(iter_sample(tiny_model, noise, snippets, method, steps, make_generators([0, 1], "cpu")))
    *infos, final = items
    assert [(i.step, i.total) for i in infos] == [(k, steps) for k in range(1, steps + 1)]
    assert all(isinstance(i, StepInfo) for i in infos) and infos[-1].t == 0.0
    seen = []
    whole = sample(tiny_model, noise, snippets, method, steps, make_generators([0, 1], "cpu"), callback=seen.append)
    assert torch.equal(final, whole) and len(seen) == steps
    calls = counting(tiny_model)
    list(iter_sample(tiny_model, noise, snippets, method, steps, make_generators([0, 1], "cpu")))
    assert calls[0] == evaluations


def test_iter_sample_checks_its_arguments_before_the_first_step(tiny_model):
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 5000\]"):
        iter_sample(tiny_model, torch.zeros(1, 3, 8, 8), torch.zeros(1, 16), "euler", 0)  # no next() needed


def test_closing_the_sampler_stops_it_after_the_step_under_way(tiny_model):
    calls = counting(tiny_model)
    steps = iter_sample(tiny_model, torch.randn(1, 3, 8, 8), torch.randn(1, 16), "euler", 50)
    assert next(steps).step == 1 and next(steps).step == 2
    steps.close()
    assert calls[0] == 2


def test_generate_iter_events_arrive_in_order_and_end_with_generates_result(tiny_pipeline):
    kw = dict(seeds=[3, 4, 5], method="euler", steps=2, batch_size=2)
    events = list(tiny_pipeline.generate_iter(indices=[1, 2, 3], **kw))
    *progress, last = events
    assert all(isinstance(e, Progress) for e in progress) and isinstance(last, Finished)
    # two batches (images 0-1, then 2), two steps each
    assert [(e.start, e.stop, e.step, e.total, e.images_total) for e in progress] == [
        (0, 2, 1, 2, 3), (0, 2, 2, 2, 3), (2, 3, 1, 2, 3), (2, 3, 2, 2, 3)]
    assert [e.images_done for e in progress] == [1.0, 2.0, 2.5, 3.0] and progress[-1].fraction == 1.0
    assert [e.t for e in progress] == [0.5, 0.0, 0.5, 0.0]
    out = tiny_pipeline.generate(indices=[1, 2, 3], **kw)
    got = last.generation
    assert torch.equal(got.images, out.images) and got.seeds == out.seeds == [3, 4, 5]
    assert got.indices == out.indices == [1, 2, 3] and got.settings == out.settings


def test_generate_iter_checks_its_arguments_when_called(tiny_pipeline):
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 5000\]"):
        tiny_pipeline.generate_iter(2, steps=0)
    with pytest.raises(ValueError, match="give either indices or snippets"):
        tiny_pipeline.generate_iter(indices=[0], snippets=torch.zeros(1, 16))


def test_a_consumer_that_stops_iterating_stops_the_sampler(tiny_pipeline):
    calls = counting(tiny_pipeline.model)
    events = tiny_pipeline.generate_iter(4, seeds=0, method="euler", steps=100, batch_size=2)
    for event in events:
        if event.step == 3:
            break
    events.close()
    assert calls[0] == 3  # the step under way finished, no other step or batch started
    calls[0] = 0
    for event in tiny_pipeline.generate_iter(4, seeds=0, method="euler", steps=100):
        break  # a for loop dropped at a break closes the stream as it is freed
    assert calls[0] == 1


def test_previews_decode_only_when_asked(tiny_pipeline, monkeypatch):
    decoded = []
    decode = tiny_pipeline.autoencoder.decode
    monkeypatch.setattr(tiny_pipeline.autoencoder, "decode", lambda z: decoded.append(z.shape[0]) or decode(z))
    events = list(tiny_pipeline.generate_iter(3, seeds=0, method="euler", steps=4, batch_size=2))
    assert decoded == [2, 1]  # the finished images of the two batches, never a preview
    decoded.clear()
    preview = events[1].preview()
    assert decoded == [2] and preview.dtype == torch.uint8 and preview.shape == (2, 8, 8, 3)
    # the preview is of the denoised estimate x - t v, not of the noisy state
    assert torch.equal(preview, decode(events[1].denoised.float()))


def test_generate_callback_and_progress_are_built_on_the_events(tiny_pipeline, tqdm_bars):
    seen = []
    tiny_pipeline.generate(3, seeds=0, steps=2, batch_size=2, progress=True,
                           callback=lambda e, start, total: seen.append((e.step, start, total)))
    assert seen == [(1, 0, 3), (2, 0, 3), (1, 2, 3), (2, 2, 3)]
    (bar,) = tqdm_bars
    assert bar.total == bar.n == 3 and bar.closed  # images, not images x steps


def test_interpolate_iter_ends_with_interpolates_frames(tiny_pipeline):
    *progress, last = tiny_pipeline.interpolate_iter(0, 5, k=3, steps=2)
    assert len(progress) == 2 and last.generation.settings["mix"] == "slerp"
    assert torch.equal(last.generation.images, tiny_pipeline.interpolate(0, 5, k=3, steps=2).images)


# ---- SamplerSettings --------------------------------------------------------------------------------------------
def test_sampler_settings_are_checked_when_made():
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 5000\]; got 0"):
        SamplerSettings("sde", 0)
    with pytest.raises(ValueError, match="Unknown sampler 'ddim'"):
        SamplerSettings("ddim", 10)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        SamplerSettings("sde", 10, guidance=float("nan"))
    import numpy as np
    s = SamplerSettings("heun", np.int64(8), guidance_interval=[0, 0.5])
    assert type(s.steps) is int and s.guidance_interval == (0.0, 0.5) and s.evaluations == 15
    assert len(s.time_grid()) == 9
    with pytest.raises(ValueError, match="steps must be an integer"):
        s.replace(steps=-1)
    with pytest.raises(AttributeError):
        s.steps = 3  # frozen: one checked value


def test_a_checkpoints_sampler_section_is_read_once_with_the_recipe_filling_gaps(tiny_pipeline):
    assert RECIPES["gmem-v1"] == SamplerSettings("sde", 250)
    assert SamplerSettings.from_config(None) == RECIPES["gmem-v1"]
    assert SamplerSettings.from_config({"method": "heun", "steps": 8}) == SamplerSettings("heun", 8)
    assert SamplerSettings.from_config({"steps": 20}) == SamplerSettings("sde", 20)
    with pytest.raises(ValueError, match=r"unknown sampler settings \['step'\]"):
        SamplerSettings.from_config({"step": 20})
    assert SamplerSettings("heun", 8).to_config() == {"method": "heun", "steps": 8}
    assert tiny_pipeline.sampler == SamplerSettings("euler", 4)
    out = tiny_pipeline.generate(1, seeds=0)  # the pipeline's settings, unless overridden
    assert (out.settings["method"], out.settings["steps"]) == ("euler", 4)
    out = tiny_pipeline.generate(1, seeds=0, method="heun")
    assert (out.settings["method"], out.settings["steps"]) == ("heun", 4)


def test_generate_checks_steps_once(tiny_pipeline, monkeypatch):
    import gmem_explore.sampling.settings as settings_module

    calls = []
    check = settings_module.check_method_and_steps
    monkeypatch.setattr(settings_module, "check_method_and_steps", lambda *a: calls.append(a) or check(*a))
    tiny_pipeline.generate(3, seeds=0, steps=2, batch_size=1)  # three batches, one check
    assert calls == [("euler", 2)]
