"""What a researcher plausibly passes by mistake from a notebook: each case either works and gives the right result,
or is refused with a ValueError / TypeError that says what was wrong and what to do (never a deep torch error, a
silently wrong row, or an unconditional image in place of the snippet given). A refused edit changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gmem_explore import GMemPipeline, MemoryBank, build_model, index_from_noise, mix, normalize
from gmem_explore.encoders.conv import ConvEncoder
from gmem_explore.models.sit import ModelConfig
from gmem_explore.viz import image_grid
from gmem_explore.images import ImageError, as_uint8_batch, load_rgb
from gmem_explore.sampling import check_guidance, sample

EULER = dict(method="euler", steps=2)


def bank_state(bank):
    return [None if t is None else t.clone() for t in (bank.rows, bank.freq, bank.labels, bank.thumbnails)]


def same_state(bank, before):
    return all((a is None and b is None) or torch.equal(a, b) for a, b in zip(bank_state(bank), before))


# ---- bank rows given as fractions, masks, meta tensors ---------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda b: b.snippets([1.5]),
    lambda b: b.replace(1.5, torch.randn(16)),
    lambda b: b.remove([1.7]),
    lambda b: b.remove(torch.tensor([0.5])),
])
def test_a_fractional_row_number_is_refused_not_cut_to_another_row(tiny_bank, call):
    before = bank_state(tiny_bank)
    with pytest.raises(ValueError, match=r"whole numbers.*fraction is not cut"):
        call(tiny_bank)
    assert same_state(tiny_bank, before) and len(tiny_bank) == 20  # remove([1.7]) used to drop row 1


def test_whole_valued_float_rows_still_work(tiny_bank):
    assert torch.equal(tiny_bank.snippets([2.0]), tiny_bank.snippets([2]))


def test_a_boolean_mask_selects_the_rows_it_marks(tiny_bank):
    mask = tiny_bank.labels == 1  # rows 1, 4, 7, ...: used to become rows [0, 1, 0, 0, 1, ...]
    assert torch.equal(tiny_bank.snippets(mask), tiny_bank.snippets(mask.nonzero().flatten()))
    kept = tiny_bank.copy()
    kept.remove(mask)
    assert len(kept) == 20 - int(mask.sum()) and not (kept.labels == 1).any()
    with pytest.raises(ValueError, match=r"one entry per row \(20\)"):
        tiny_bank.snippets(torch.tensor([True, False]))


def test_label_of_a_row_outside_the_bank_is_refused(tiny_bank):
    with pytest.raises(IndexError, match=r"rows 0\.\.19"):
        tiny_bank.label_of(-1)  # used to answer the last row's label
    assert tiny_bank.label_of(4) == "b"


@pytest.mark.parametrize("call", [
    lambda b, m: b.add(m),
    lambda b, m: b.nearest(m),
    lambda b, m: mix(m, b.rows[:1], 0.5),
    lambda b, m: MemoryBank(m),
])
def test_meta_tensors_are_refused_by_name(tiny_bank, call):
    before = bank_state(tiny_bank)
    with pytest.raises(ValueError, match="'meta' device"):
        call(tiny_bank, torch.randn(1, 16, device="meta"))
    assert same_state(tiny_bank, before)


def test_labels_given_as_names_are_refused_with_the_way_to_their_number(tiny_bank):
    before = bank_state(tiny_bank)
    with pytest.raises(ValueError, match=r"label_names\.index\(name\)"):
        tiny_bank.add(torch.randn(1, 16), labels=["a"])
    assert same_state(tiny_bank, before)


# ---- snippets that normalize would silently turn into the unconditional zero vector ----------------------------
@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_snippets_too_long_or_short_for_float32_are_refused_not_made_unconditional(tiny_pipeline, scale):
    x = torch.full((1, 16), scale)
    assert normalize(x).abs().max() == 0  # what generate used to condition on: no snippet at all
    with pytest.raises(ValueError, match=r"no usable direction.*rescale"):
        tiny_pipeline.generate(snippets=x, seeds=[0], **EULER)
    before = bank_state(tiny_pipeline.bank)
    with pytest.raises(ValueError, match="no usable direction"):
        tiny_pipeline.bank.add(x)
    assert same_state(tiny_pipeline.bank, before)


def test_a_stored_row_too_long_for_float32_is_refused_by_number(tiny_bank):
    rows = tiny_bank.rows.clone()
    rows[3] = 1e20
    with pytest.raises(ValueError, match=r"rows \[3\] have no usable direction"):
        MemoryBank(rows).snippets([2, 3])


# ---- noise and frequencies for the released row choice ---------------------------------------------------------
@pytest.mark.parametrize("noise, problem", [
    (torch.full((1, 3, 4, 4), float("nan")), "NaN"),
    (torch.zeros(0, 3, 4, 4), "non-empty batch"),
    (torch.randn(48), r"got shape \(48,\)"),
    (torch.tensor(1.0), r"got shape \(\)"),
    (torch.randn(1, 3, 4, 4, device="meta"), "'meta' device"),
])
def test_unusable_noise_is_refused_before_a_row_is_chosen(tiny_bank, noise, problem):
    with pytest.raises(ValueError, match=problem):
        tiny_bank.from_noise(noise)  # NaN noise used to pick the last row; 1-D noise one row per value


def test_index_from_noise_takes_a_list_of_counts_and_refuses_negative_ones():
    noise = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(index_from_noise(noise, [1, 2, 3]), index_from_noise(noise, torch.tensor([1.0, 2.0, 3.0])))
    with pytest.raises(ValueError, match="non-negative"):
        index_from_noise(noise, torch.tensor([1.0, -2.0, 3.0]))


# ---- mix --------------------------------------------------------------------------------------------------------
def test_mix_takes_numpy_seeds_and_refuses_fractional_ones(tiny_bank):
    a, b = tiny_bank.snippets([0]), tiny_bank.snippets([1])
    assert torch.equal(mix(a, b, 0.5, "mask", np.int64(3)), mix(a, b, 0.5, "mask", 3))
    with pytest.raises(ValueError, match="seed.*integer"):
        mix(a, b, 0.5, "mask", 1.5)


def test_pipeline_mix_takes_bank_rows_as_interpolate_does(tiny_pipeline):
    bank = tiny_pipeline.bank
    out = tiny_pipeline.mix(0, 5, 0.5)  # used to mix the numbers 0 and 5 into a 0-d tensor
    assert out.shape == (1, 16) and torch.allclose(out, mix(bank.snippets([0]), bank.snippets([5]), 0.5))
    with pytest.raises(ValueError, match="vectors"):
        mix(torch.tensor(0.0), torch.tensor(5.0), 0.5)


def test_normalize_takes_lists_and_arrays():
    assert torch.allclose(normalize([3.0, 4.0]), torch.tensor([0.6, 0.8]))
    assert torch.allclose(normalize(np.array([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))


# ---- generate / interpolate / sample --------------------------------------------------------------------------
def test_a_numpy_or_tensor_image_count_works_like_an_int(tiny_pipeline):
    want = tiny_pipeline.generate(2, seeds=[3, 4], **EULER).images
    assert torch.equal(tiny_pipeline.generate(np.int64(2), seeds=[3, 4], **EULER).images, want)
    assert torch.equal(tiny_pipeline.generate(torch.tensor(2), seeds=[3, 4], **EULER).images, want)


def test_empty_snippets_are_refused_by_name(tiny_pipeline):
    with pytest.raises(ValueError, match="snippets is empty"):
        tiny_pipeline.generate(snippets=torch.zeros(0, 16), **EULER)


@pytest.mark.parametrize("interval", [0.5, (0.0, 0.5, 1.0), (0.5,), "ab"])
def test_a_guidance_interval_that_is_not_a_pair_is_refused(tiny_pipeline, interval):
    with pytest.raises(ValueError, match=r"guidance_interval must be a pair \(low, high\)"):
        tiny_pipeline.generate(1, seeds=[0], guidance=2.0, guidance_interval=interval, **EULER)


def test_settings_not_given_come_from_the_checkpoints_recipe(tiny_pipeline):
    """None means "the pipeline's own" (pipe.sampler), for guidance and its interval as for method and steps."""
    from gmem_explore.sampling import RECIPES

    pipe = tiny_pipeline
    saved = pipe.sampler
    try:
        pipe.sampler = RECIPES["gmem-v2-cfg"].replace(steps=3)
        out = pipe.generate(1, seeds=[0])
        assert out.settings["method"] == "sde-heun" and out.settings["guidance"] == 7.75
        assert out.settings["guidance_interval"] == (0.0, 0.11)
        assert pipe.generate(1, seeds=[0], guidance=1.0).settings["guidance"] == 1.0
        pipe.sampler = RECIPES["gmem-v2-ode"].replace(steps=3)
        assert pipe.generate(1, seeds=[0]).settings["time_shift"] == 0.3
        assert pipe.generate(1, seeds=[0], method="sde").settings["time_shift"] == 1.0  # no shift on a fixed grid
        with pytest.raises(ValueError, match="time_shift applies to the ODE methods"):
            pipe.generate(1, seeds=[0], method="sde", time_shift=0.3)
    finally:
        pipe.sampler = saved


def test_guidance_interval_low_above_high_is_refused_before_sampling(tiny_pipeline):
    calls = []
    with pytest.raises(ValueError, match=r"0 <= low <= high <= 1"):
        tiny_pipeline.generate(1, seeds=[0], guidance=2.0, guidance_interval=(0.8, 0.2),
                               callback=lambda *a: calls.append(a), **EULER)
    assert not calls


def test_tensor_guidance_and_interval_work_and_are_recorded_as_numbers(tiny_pipeline):
    want = tiny_pipeline.generate(1, seeds=[0], guidance=2.0, guidance_interval=(0.2, 0.9), **EULER)
    got = tiny_pipeline.generate(1, seeds=[0], guidance=torch.tensor(2.0), guidance_interval=torch.tensor([0.2, 0.9]),
                                 **EULER)
    assert torch.equal(got.images, want.images)
    assert got.settings["guidance"] == 2.0 and type(got.settings["guidance"]) is float
    assert got.settings["guidance_interval"] == pytest.approx((0.2, 0.9))
    assert all(type(v) is float for v in got.settings["guidance_interval"])
    assert check_guidance(np.float32(1.5), [0, 1]) == (1.5, (0.0, 1.0))


def test_interpolate_refuses_a_float_row_and_a_float_seed_by_name(tiny_pipeline):
    with pytest.raises(ValueError, match="bank row must be a whole number"):
        tiny_pipeline.interpolate(0.0, 5, k=2, **EULER)
    with pytest.raises(ValueError, match="seeds must be integers"):
        tiny_pipeline.interpolate(0, 5, k=2, seed=1.5, **EULER)  # slerp: no 'mask' seed message


def test_interpolate_mask_takes_a_numpy_seed(tiny_pipeline):
    a = tiny_pipeline.interpolate(0, 5, k=2, mix="mask", seed=np.int64(3), **EULER)
    b = tiny_pipeline.interpolate(0, 5, k=2, mix="mask", seed=3, **EULER)
    assert torch.equal(a.images, b.images) and a.seeds == [3, 3]


def test_sample_refuses_arrays_meta_tensors_and_seeds_for_generators(tiny_model):
    noise, snip = torch.randn(2, 3, 8, 8), normalize(torch.randn(2, 16))
    with pytest.raises(TypeError, match=r"noise must be a torch\.Tensor"):
        sample(tiny_model, noise.numpy(), snip, steps=2)
    with pytest.raises(ValueError, match="'meta' device"):
        sample(tiny_model, torch.randn(2, 3, 8, 8, device="meta"), snip, steps=2)
    with pytest.raises(TypeError, match="make_generators"):
        sample(tiny_model, noise, snip, steps=2, generators=[0, 1])


def test_an_unavailable_device_is_refused_before_loading(tiny_model, tiny_bank, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'cuda:7' is not available.*device='cpu'"):
        GMemPipeline.from_pretrained(device="cuda:7")
    with pytest.raises(ValueError, match="meta"):
        GMemPipeline(tiny_model, tiny_bank, device="meta")


# ---- bank files -------------------------------------------------------------------------------------------------
def test_unserialisable_meta_is_refused_and_the_old_file_survives(tiny_bank, tmp_path):
    path = tmp_path / "b.safetensors"
    tiny_bank.save(path)
    bad = tiny_bank.copy()
    bad.meta = {"made_by": torch.tensor(1)}
    with pytest.raises(ValueError, match=r"meta\['made_by'\] is not JSON-serialisable"):
        bad.save(path)
    back = MemoryBank.load(path)
    assert torch.equal(back.rows, tiny_bank.rows) and back.meta == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]  # no temporary file left


def test_a_meta_key_cannot_overwrite_the_label_names(tiny_bank, tmp_path):
    bank = tiny_bank.copy()
    bank.meta = {"label_names": ["zz"], "note": "x"}
    bank.save(tmp_path / "b.safetensors")
    back = MemoryBank.load(tmp_path / "b.safetensors")
    assert back.label_names == ["a", "b", "c"] and back.meta["note"] == "x"


def test_saving_to_a_folder_names_the_folder(tiny_bank, tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder: give the bank a file name"):
        tiny_bank.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fp16_round_trip_then_edits(tiny_bank, tmp_path):
    tiny_bank.save(tmp_path / "h.safetensors", dtype=torch.float16)
    half = MemoryBank.load(tmp_path / "h.safetensors")
    assert half.rows.dtype == torch.float16 and (half.snippets(range(20)) - tiny_bank.snippets(range(20))).abs().max() < 1e-3
    before = bank_state(half)
    with pytest.raises(ValueError, match="do not fit in torch.float16"):
        half.add(torch.full((1, 16), 1e5))
    assert same_state(half, before)
    half.remove(range(20))  # every row: an empty bank, which saves, loads and says it is empty when used
    half.save(tmp_path / "h.safetensors")
    empty = MemoryBank.load(tmp_path / "h.safetensors")
    assert len(empty) == 0 and empty.dim == 16 and empty.rows.dtype == torch.float16
    with pytest.raises(IndexError, match="the bank is empty"):
        empty.choose(1)
    assert empty.add(torch.randn(2, 16)).tolist() == [0, 1] and empty.freq.tolist() == [1.0, 1.0]


# ---- images and encoders ----------------------------------------------------------------------------------------
def test_float_mode_images_in_0_1_are_not_black():
    img = Image.fromarray(np.full((6, 6), 0.5, dtype=np.float32))  # mode 'F'
    assert img.mode == "F" and load_rgb(img, 4).float().mean() == pytest.approx(128, abs=1)


def test_bfloat16_and_channels_first_tensors():
    assert load_rgb(torch.full((4, 4, 3), 0.5).bfloat16()).float().mean() == pytest.approx(128, abs=1)
    with pytest.raises(ImageError, match=r"channels first.*permute\(1, 2, 0\)"):
        load_rgb(torch.rand(3, 8, 8))
    with pytest.raises(ImageError, match="'meta' device"):
        load_rgb(torch.rand(8, 8, 3, device="meta"))


@pytest.mark.parametrize("size", [0, -1, 32.0, True, 100_000])
def test_a_bad_size_is_refused_by_name(size):
    with pytest.raises(ValueError, match=r"size must be a whole number of pixels in \[1, 1024\]"):
        load_rgb(Image.new("RGB", (4, 4)), size)


def test_one_image_a_generator_and_an_empty_list():
    img = Image.new("RGB", (10, 6), (200, 10, 10))
    one = as_uint8_batch(img, 8)
    assert one.shape == (1, 8, 8, 3) and torch.equal(as_uint8_batch((x for x in [img]), 8), one)
    with pytest.raises(ValueError, match="no images given"):
        as_uint8_batch([], 8)


def test_encoder_on_odd_inputs():
    enc = ConvEncoder(dim=16, image_size=8).eval()
    img = Image.new("RGB", (10, 6), (200, 10, 10))
    assert torch.equal(enc.encode(img), enc.encode([img]))
    assert enc.encode(torch.zeros(0, 8, 8, 3, dtype=torch.uint8)).shape == (0, 16)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        enc.encode([img], batch_size=0)
    with pytest.raises(ImageError, match="No image file at nope.png"):
        enc.encode("nope.png")


# ---- model config -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, named", [
    (dict(num_heads=0), "num_heads=0"), (dict(patch_size=0), "patch_size=0"), (dict(input_size=8.0), "input_size=8.0"),
    (dict(snippet_dim=0), "snippet_dim=0"), (dict(mlp_ratio=0.0), "mlp_ratio"),
])
def test_model_sizes_that_are_not_positive_integers_are_named(bad, named):
    sizes = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, snippet_dim=16)
    with pytest.raises(ValueError, match=f"Invalid model config: .*{named}"):
        build_model(**{**sizes, **bad})


def test_numpy_model_sizes_become_plain_ints():
    model = build_model(input_size=np.int64(8), patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                        snippet_dim=16)
    assert type(model.config.input_size) is int and model.config.to_dict()["input_size"] == 8


def test_grids_refuse_scales_and_rows_that_are_not_whole_numbers():
    from gmem_explore.viz import image_grid, to_pil

    images = torch.zeros(5, 8, 8, 3, dtype=torch.uint8)
    assert image_grid(images, nrow=5, pad=0, scale=2).size == (80, 16)
    assert image_grid(images).size == (32, 22)  # 3 per row (about sqrt(5)), two rows, 2 px padding
    for bad in (dict(scale=0), dict(scale=2.5), dict(scale=True)):
        with pytest.raises(ValueError, match="scale is a whole upscaling factor >= 1"):
            image_grid(images, **bad)
    with pytest.raises(ValueError, match="scale is a whole upscaling factor"):
        to_pil(images, scale=0)
    with pytest.raises(ValueError, match="nrow is the number of images per row"):
        image_grid(images, nrow=-1)


# ---- whole numbers given as 0-d tensors ------------------------------------------------------------------------
FLOAT_TENSOR = torch.tensor(2.7)  # int() would cut it to 2; it has __index__, which raises when called


@pytest.mark.parametrize("call", [
    lambda bank: bank.choose(FLOAT_TENSOR),
    lambda bank: bank.nearest(bank.rows[:1], chunk=FLOAT_TENSOR),
    lambda bank: mix(bank.rows[0], bank.rows[1], 0.5, method="mask", seed=FLOAT_TENSOR),
    lambda bank: image_grid(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), scale=FLOAT_TENSOR),
    lambda bank: image_grid(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), nrow=FLOAT_TENSOR),
    lambda bank: ConvEncoder(16, image_size=8).encode(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), batch_size=FLOAT_TENSOR),
    lambda bank: ModelConfig(depth=FLOAT_TENSOR, encoder_depth=1),
], ids=["choose", "nearest_chunk", "mask_seed", "grid_scale", "grid_nrow", "encode_batch", "model_depth"])
def test_a_float_tensor_is_refused_where_a_whole_number_goes(tiny_bank, call):
    with pytest.raises(ValueError):
        call(tiny_bank)


def test_integer_tensors_still_count_as_whole_numbers(tiny_bank):
    assert len(tiny_bank.choose(torch.tensor(3))) == 3
    assert image_grid(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), nrow=torch.tensor(4), pad=0).size == (32, 8)
    assert ModelConfig(depth=np.int64(2), encoder_depth=torch.tensor(1)).depth == 2
