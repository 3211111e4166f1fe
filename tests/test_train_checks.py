"""The Trainer refuses what would train into NaN weights or fail deep in torch, before anything changes."""
from __future__ import annotations

import pytest
import torch

from gmem_explore import build_model
from gmem_explore.train.trainer import TrainConfig, Trainer

from conftest import TINY

QUIET = dict(steps=4, batch_size=4, lr=3e-3, warmup=1, progress=False)


def pixels(n=8, seed=0):
    return torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def rows(n=8, seed=0):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def trainer(images, conditions, autoencoder="auto", **cfg):
    torch.manual_seed(0)
    return Trainer(build_model(**TINY), images, conditions, TrainConfig(**{**QUIET, **cfg}), autoencoder=autoencoder,
                   use_accelerate=False)


def test_a_list_of_images_trains_as_the_stacked_tensor():
    images = pixels()
    as_list, as_tensor = trainer(list(images), rows()), trainer(images, rows())
    assert torch.equal(as_list.data, as_tensor.data)
    assert as_list.fit(steps=2)[-1]["loss"] == as_tensor.fit(steps=2)[-1]["loss"]


@pytest.mark.parametrize("images, message", [
    ([], "no training images"),
    (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), "non-empty batch"),
    ([torch.zeros(8, 8, 3, dtype=torch.uint8), torch.zeros(4, 4, 3, dtype=torch.uint8)], "of one shape"),
    ("images/", "tensor or array"),
    (torch.rand(8, 8, 8, 3), "give pixel images as uint8 (N, H, W, 3)"),  # float pixels in [0, 1] are not latents
])
def test_bad_training_images_are_refused_with_the_fix(images, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer(images, rows(len(images) if len(images) else 1))


def test_channels_last_latents_get_the_permute_hint():
    model = build_model(**{**TINY, "in_channels": 4})  # SD-VAE-like latents: 4 channels
    with pytest.raises(ValueError, match=r"expects \(4, 8, 8\): channels last; use x.permute\(0, 3, 1, 2\)"):
        Trainer(model, torch.randn(8, 8, 8, 4), rows(), TrainConfig(**QUIET), autoencoder=None, use_accelerate=False)


def test_nan_latents_and_bad_snippet_conditions_are_refused_by_row():
    latents = torch.randn(8, 3, 8, 8)
    latents[5, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"training items \[5\] hold NaN"):
        trainer(latents, rows(), autoencoder=None)
    bad = rows()
    bad[2] = 0  # the unconditional input under image 2's name
    with pytest.raises(ValueError, match=r"rows \[2\] are all zeros"):
        trainer(pixels(), bad)
    bad[2], bad[6] = 1.0, float("inf")
    with pytest.raises(ValueError, match=r"rows \[6\] hold NaN or infinite"):
        trainer(pixels(), bad)


@pytest.mark.parametrize("setting", [dict(lr=float("nan")), dict(lr=float("inf")), dict(ema_decay=1.5),
                                     dict(grad_clip=float("nan")), dict(lr_final=-1.0), dict(logit_std=float("nan"))])
def test_non_finite_or_out_of_range_settings_are_refused(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name}"):
        TrainConfig(**setting)


def test_a_nan_loss_stops_training_before_the_weights_change():
    tr = trainer(pixels(), rows())
    tr.fit(steps=2)
    before = {k: v.clone() for k, v in tr.module.state_dict().items()}
    ema_before = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    real_loss = tr.loss_on

    def nan_loss(*batch):
        loss, mse, repa = real_loss(*batch)
        return loss * float("nan"), mse, repa

    tr.loss_on = nan_loss
    with pytest.raises(FloatingPointError, match="loss became nan at step 3.*after step 2"):
        tr.fit(steps=1)
    assert tr.step == 2
    assert all(torch.equal(before[k], v) for k, v in tr.module.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in tr.ema.state_dict().items())
    tr.loss_on = real_loss  # the run goes on from its last good step
    assert tr.fit(steps=1)[-1]["step"] == 3


def test_on_end_says_how_each_fit_call_ended():
    tr = trainer(pixels(), rows())
    ends = []
    tr.on("on_end", lambda t, event: ends.append((event["step"], event["steps"], type(event["error"]).__name__)))
    tr.fit(steps=2)
    tr.fit(steps=0)
    real_loss = tr.loss_on
    tr.loss_on = lambda *batch: tuple(v * float("nan") for v in real_loss(*batch))
    with pytest.raises(FloatingPointError):
        tr.fit(steps=1)
    assert ends == [(2, 2, "NoneType"), (2, 0, "NoneType"), (2, 0, "FloatingPointError")]


@pytest.mark.parametrize("grad_clip, bad", [(1.0, float("nan")), (0.0, float("inf"))])
def test_a_nan_gradient_with_a_finite_loss_stops_training_before_the_weights_change(grad_clip, bad):
    """A NaN or infinite gradient (here one parameter's, through a hook) with a finite loss: the step stops before
    the optimizer applies it, naming the parameter. With clipping the NaN norm used to turn every gradient NaN and
    the step went on, so every weight and the EMA became NaN."""
    tr = trainer(pixels(), rows(), grad_clip=grad_clip)
    tr.fit(steps=2)
    before = {k: v.clone() for k, v in tr.module.state_dict().items()}
    ema_before = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    moments = {k: v.clone() for k, v in tr.state_tensors()[0].items() if k.startswith("optimizer.")}
    weight = tr.network.final_layer.linear.weight
    hook = weight.register_hook(lambda g: torch.full_like(g, bad))
    with pytest.raises(FloatingPointError, match=r"gradients became NaN or infinite in final_layer\.linear\.weight "
                                                 r"at step 3 .*finite loss.*after step 2"):
        tr.fit(steps=1)
    assert tr.step == 2 and torch.isfinite(weight).all()
    assert all(torch.equal(before[k], v) for k, v in tr.module.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in tr.ema.state_dict().items())
    assert all(torch.equal(moments[k], v) for k, v in tr.state_tensors()[0].items() if k.startswith("optimizer."))
    hook.remove()  # the run goes on from its last good step
    event = tr.fit(steps=1)[-1]
    assert event["step"] == 3 and 0 < event["grad_norm"] < float("inf")


def test_gradient_clipping_bounds_the_step_as_clip_grad_norm_does():
    """The clip written out in Trainer._gradient_norm gives torch.nn.utils.clip_grad_norm_'s gradients and norm."""
    tr = trainer(pixels(), rows(), grad_clip=1e-3)
    loss, _, _ = tr.loss_on(*tr._draw_batch())
    loss.backward()
    params = [p for p in tr.module.parameters() if p.grad is not None]
    copies = [p.grad.clone() for p in params]
    norm = tr._gradient_norm()
    ours = [p.grad.clone() for p in params]
    for p, g in zip(params, copies):
        p.grad = g
    assert norm > 1e-3  # so the clip acts
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(params, 1e-3))
    for p, g in zip(params, ours):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("setting", [dict(decay=-5), dict(eval_every=-2), dict(eval_images=0), dict(eval_steps=0),
                                     dict(batch_size=2.5), dict(steps=True), dict(warmup=-1), dict(checkpoint_every=-1),
                                     dict(seed=1.5)])
def test_counts_that_are_not_whole_or_below_their_least_are_refused(setting):
    """A negative decay bent the LR schedule (a cosine of negative length), a negative eval_every evaluated every
    few steps anyway, eval_images 0 failed deep in the sampler, 2.5 images per batch inside torch."""
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"training counts must be whole numbers .*got {name}="):
        TrainConfig(**setting)


def test_numpy_counts_are_kept_as_python_ints(tmp_path):
    """A NumPy count (a value from an array, a sweep) went into the train state's JSON, which cannot hold it."""
    import numpy as np

    config = TrainConfig(**{**QUIET, "steps": np.int64(2), "batch_size": np.int32(4)})
    assert type(config.steps) is int and type(config.batch_size) is int
    tr = trainer(pixels(), rows(), steps=np.int64(2))
    tr.fit()
    tr.save_state(tmp_path / "state.safetensors")
