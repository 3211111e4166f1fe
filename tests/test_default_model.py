"""The embedded default 'emoji-32': loads with no argument, generates, and its encoder and bank agree."""
from __future__ import annotations

import json

import pytest
import torch

from gmem_explore import GMemPipeline
from gmem_explore.checkpoints.hub import resolve_checkpoint


@pytest.fixture(scope="module")
def pipe():
    return GMemPipeline.from_pretrained()


def test_default_generates_finite_images_of_the_right_shape(pipe):
    out = pipe.generate(2, seeds=[0, 1], steps=3)
    assert out.images.shape == (2, 32, 32, 3) and out.images.dtype == torch.uint8
    assert out.seeds == [0, 1] and all(0 <= i < len(pipe.bank) for i in out.indices)
    x = torch.randn(2, 3, 32, 32)
    v = pipe.model(x, torch.full((2,), 0.5), pipe.bank.snippets([0, 1]))
    assert torch.isfinite(v).all()
    again = pipe.generate(1, seeds=[0], steps=3)
    assert torch.equal(again.images[0], out.images[0])  # a seed fixes the image


def test_bank_rows_are_the_encoder_of_the_thumbnails(pipe):
    bank = pipe.bank
    assert bank.thumbnails.shape == (len(bank), 32, 32, 3) and bank.thumbnails.dtype == torch.uint8
    rows = bank.rows[:200].float()
    encoded = pipe.encoder.encode(bank.thumbnails[:200])
    # the bank ships in fp16: relative error of a half-precision rounding
    assert ((encoded - rows).norm(dim=1) / rows.norm(dim=1)).max() < 2e-3
    assert pipe.encoder.dim == pipe.snippet_dim == 768


def test_bank_labels_groups_and_frequencies(pipe):
    bank = pipe.bank
    assert len(bank.label_names) == 9 and "Smileys & Emotion" in bank.label_names
    assert bank.labels.min() >= 0 and bank.labels.max() < 9
    assert torch.equal(bank.freq, torch.ones(len(bank), dtype=bank.freq.dtype))


def test_config_credits_twemoji_and_sets_a_cheap_sampler():
    folder = resolve_checkpoint(None)
    config = json.loads((folder / "config.json").read_text())
    assert "CC-BY 4.0" in config["data"]["attribution"]
    assert config["sampler"]["method"] in ("euler", "heun") and config["sampler"]["steps"] <= 30
    assert config["autoencoder"] == {"type": "pixels"}
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert total < 40 * 2**20, f"the embedded default is {total / 2**20:.1f} MB; it must stay under 40 MB"


@pytest.mark.parametrize("t", [0.3, 0.7])
def test_trained_velocity_matches_the_flow_target_on_its_own_bank(pipe, t):
    # Golden check of the whole forward pass against what the model was trained on: x_t = (1 - t) x0 + t eps,
    # target v = eps - x0, snippet = the bank row of the thumbnail. Correct code gives MSE ~0.035 (t=0.3) and
    # ~0.013 (t=0.7); a broken adaLN modulate, patch layout or timestep convention gives 0.5 and more.
    rows = list(range(64))
    x0 = pipe.autoencoder.encode(pipe.bank.thumbnails[rows])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = (1 - t) * x0 + t * eps
    with torch.no_grad():
        v = pipe.model(x_t, torch.full((len(rows),), t), pipe.bank.snippets(rows))
    mse = ((v - (eps - x0)) ** 2).mean().item()
    assert mse < 0.1, f"velocity MSE {mse:.3f} at t={t}: the network no longer computes what it was trained to"
