"""The built-in snippet encoder and the feature-space metrics."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from gmem_explore.autoencoders import from_uint8
from gmem_explore.encoders.conv import ConvEncoder, encoder_from_config, to_model_input, train_conv_encoder
from gmem_explore.evaluation.metrics import frechet_distance, knn_accuracy, nearest_training, precision_recall


def test_encode_accepts_tensors_of_any_size_and_pil_images():
    torch.manual_seed(0)
    enc = ConvEncoder(dim=24, image_size=16, widths=(8, 8, 8), head_channels=8).eval()
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    out = enc.encode(images)
    assert out.shape == (3, 24) and out.dtype == torch.float32
    assert enc.encode(torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)).shape == (2, 24)
    pil = [Image.fromarray(im.numpy()) for im in images]
    torch.testing.assert_close(enc.encode(pil), out)
    torch.testing.assert_close(enc.encode(images[:1]), out[:1], atol=1e-5, rtol=1e-5)  # batch-independent
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(torch.rand(2, 16, 16, 3))


def test_config_round_trip_and_unknown_type():
    enc = ConvEncoder(dim=16, image_size=8, widths=(8, 8, 8), head_channels=8)
    again = encoder_from_config(enc.config_dict(), enc.state_dict())
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    torch.testing.assert_close(again.encode(images), enc.encode(images))
    with pytest.raises(ValueError, match="Unknown snippet encoder type"):
        encoder_from_config({"type": "clip"}, {})
    with pytest.raises(ValueError, match="do not match"):
        encoder_from_config(enc.config_dict(), {})


def test_training_separates_digit_classes():
    from gmem_explore.data import load_digits

    train, held = load_digits(16, "train"), load_digits(16, "held_out")  # 16 px: the 3 stages end at 2x2
    enc, log = train_conv_encoder(train.images, train.labels, 10, steps=60, batch_size=64, dim=32, progress=False,
                                  log_every=10)
    assert log[-1]["ce"] < 0.6 * log[0]["ce"]  # about 1.8 after 10 steps, 0.6 after 60
    assert log[-1]["recon"] < log[0]["recon"]
    acc = knn_accuracy(enc.encode(train.images), train.labels, enc.encode(held.images), held.labels, k=5)
    assert acc > 0.85  # chance 0.1


def test_knn_accuracy_on_a_toy_case():
    train = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.01], [0.01, 1.0]])
    assert knn_accuracy(train, labels, query, torch.tensor([0, 1]), k=1) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([1, 1]), k=1) == 0.5
    # k = 5: the 3 label-0 rows outvote the 2 label-1 rows for every query
    assert knn_accuracy(train, labels, query, torch.tensor([0, 0]), k=5) == 1.0
    with pytest.raises(ValueError, match="k must lie"):
        knn_accuracy(train, labels, query, torch.tensor([0, 1]), k=6)


def test_frechet_distance_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    assert frechet_distance(a, shifted) == pytest.approx(4.0, rel=1e-6)  # covariances equal: |mean shift|^2
    scaled = a * 2  # covariance 4I vs I: tr(I + 4I - 2 * 2I) = 3 per the formula
    assert frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.05)


def test_precision_recall_and_nearest():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 2, generator=g)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = real + 100
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    collapsed = real[:1].repeat(50, 1) + 1e-4 * torch.randn(50, 2, generator=g)  # precise, no diversity
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.1
    train = torch.eye(4)
    sims, idx = nearest_training(torch.stack([train[2] * 5, train[0] + 0.1 * train[1]]), train, k=1)
    assert idx[:, 0].tolist() == [2, 0]
    assert sims[0, 0].item() == pytest.approx(1.0) and sims[1, 0].item() < 1.0


def test_downscaling_for_the_encoder_low_passes():
    """Images larger than the encoder's input are resized with an antialiasing filter, so fine detail averages out
    instead of aliasing into coarse patterns. At 128 -> 32, antialiased bilinear weighs about 37 pixels into each
    output (pixel-noise std / 6), plain bilinear reads only 4 of every 16 (std / 2)."""
    noise = torch.randint(0, 256, (1, 128, 128, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = to_model_input(noise, 32)
    assert x.shape == (1, 3, 32, 32)
    assert x.std() < 0.3 * from_uint8(noise).std()


def test_an_encoder_config_without_its_sizes_is_named_not_a_key_error():
    from gmem_explore.encoders.conv import ConvEncoder

    enc = ConvEncoder(16, image_size=8)
    cfg = {k: v for k, v in enc.config_dict().items() if k != "widths"}
    with pytest.raises(ValueError, match=r"the snippet encoder's config lacks \['widths'\].*copy or save the checkpoint again"):
        ConvEncoder.from_config(cfg, enc.state_dict())
