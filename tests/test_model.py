"""The SiT backbone: released v1 layout, call convention, strict loading with errors that name keys."""
import pytest
import torch

from gmem_explore import build_model, load_network_state
from gmem_explore.models.sit import (ModelConfig, TimestepEmbedder, model_config, modulate, sincos_2d,
                                 timestep_frequencies)

from conftest import TINY


def test_xl2_has_the_released_layout_and_size():
    with torch.device("meta"):
        model = build_model("SiT-XL/2")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # names and shapes of the released `network` state_dict (timm PatchEmbed/Attention/Mlp, REPA projector)
    expected = {
        "pos_embed": (1, 256, 1152),
        "x_embedder.proj.weight": (1152, 4, 2, 2),
        "x_embedder.proj.bias": (1152,),
        "t_embedder.mlp.0.weight": (1152, 256),
        "t_embedder.mlp.2.weight": (1152, 1152),
        "condition_projection.linear.weight": (1152, 768),
        "condition_projection.linear.bias": (1152,),
        "blocks.0.attn.qkv.weight": (3456, 1152),
        "blocks.0.attn.qkv.bias": (3456,),
        "blocks.0.attn.proj.weight": (1152, 1152),
        "blocks.27.mlp.fc1.weight": (4608, 1152),
        "blocks.27.mlp.fc2.weight": (1152, 4608),
        "blocks.13.adaLN_modulation.1.weight": (6912, 1152),
        "projectors.0.0.weight": (2048, 1152),
        "projectors.0.2.weight": (2048, 2048),
        "projectors.0.4.weight": (768, 2048),
        "final_layer.linear.weight": (16, 1152),
        "final_layer.adaLN_modulation.1.weight": (2304, 1152),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert len(shapes) == 7 + 28 * 10 + 6 + 6  # top level + 10 tensors per block + projector + final layer
    assert not any("y_embedder" in k or "norm1.weight" in k for k in shapes)  # no label embedder, no LN affine
    total = sum(v.numel() for v in model.parameters())
    without_projector = total - sum(v.numel() for v in model.projectors.parameters())
    assert 682e6 < total < 684e6
    assert 674e6 < without_projector < 676e6


@pytest.mark.parametrize("name,depth,hidden,heads,patch", [("SiT-S/8", 12, 384, 6, 8), ("SiT-B/4", 12, 768, 12, 4),
                                                           ("SiT-L/2", 24, 1024, 16, 2)])
def test_named_sizes(name, depth, hidden, heads, patch):
    c = model_config(name)
    assert (c.depth, c.hidden_size, c.num_heads, c.patch_size) == (depth, hidden, heads, patch)


def test_unknown_name_and_bad_config_are_explained():
    with pytest.raises(ValueError, match="SiT-XL/2"):
        build_model("SiT-XXL/2")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ModelConfig(input_size=10, patch_size=4)
    with pytest.raises(ValueError, match="Unknown model config keys"):
        build_model(hiden_size=3)


def test_call_convention_and_projection(tiny_model):
    x, t, s = torch.randn(3, 3, 8, 8), torch.rand(3), torch.randn(3, 16)
    v = tiny_model(x, t, s)
    assert v.shape == x.shape and torch.isfinite(v).all()
    v2, z = tiny_model.forward_with_projection(x, t, s)
    assert torch.equal(v, v2)
    assert z.shape == (3, 16, 16)  # (N, tokens, repa_dim)


def test_fresh_model_predicts_zero_velocity():
    model = build_model(**TINY).eval()
    assert torch.count_nonzero(model(torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 16))) == 0


def test_snippet_changes_output(tiny_model):
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([0.5])
    assert not torch.allclose(tiny_model(x, t, torch.randn(1, 16)), tiny_model(x, t, torch.randn(1, 16)))


@pytest.mark.parametrize("bad,match", [
    ((torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 768)), r"snippet must have shape \(2, 16\)"),
    ((torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 16)), r"x must have shape"),
    ((torch.randn(2, 3, 8, 8), torch.rand(3), torch.randn(2, 16)), r"t must have shape"),
])
def test_wrong_shapes_are_named(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(*bad)


def test_strict_loading_names_missing_unexpected_and_misshaped_keys(tiny_model):
    state = dict(tiny_model.state_dict())
    state.pop("blocks.1.mlp.fc2.bias")
    state["y_embedder.embedding_table.weight"] = torch.zeros(3, 32)
    state["final_layer.linear.weight"] = torch.zeros(5, 32)
    fresh = build_model(**TINY)
    with pytest.raises(ValueError) as err:
        load_network_state(fresh, state)
    msg = str(err.value)
    assert "blocks.1.mlp.fc2.bias" in msg and "y_embedder.embedding_table.weight" in msg
    assert "final_layer.linear.weight" in msg and "(5, 32)" in msg


def test_strict_loading_round_trip_and_nan_refused(tiny_model):
    fresh = build_model(**TINY)
    load_network_state(fresh, tiny_model.state_dict())
    x, t, s = torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 16)
    assert torch.equal(fresh.eval()(x, t, s), tiny_model(x, t, s))
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        load_network_state(build_model(**TINY), state)


def test_embeddings_match_the_reference_formulas():
    # sin-cos positions: token (row r, col c) of the grid, first half encodes the column, second the row
    emb = sincos_2d(8, 3)
    col, row = 2, 1
    token = row * 3 + col
    assert torch.allclose(emb[token, 0], torch.sin(torch.tensor(float(col))))
    assert torch.allclose(emb[token, 4], torch.sin(torch.tensor(float(row))))
    assert torch.allclose(emb[token, 2], torch.cos(torch.tensor(float(col))))
    f = timestep_frequencies(torch.tensor([0.5]), dim=4)
    assert torch.allclose(f, torch.tensor([[0.5, 0.01 * 0.5, 0.5, 0.005]]).new_tensor(
        [[torch.cos(torch.tensor(0.5)), torch.cos(torch.tensor(0.005)), torch.sin(torch.tensor(0.5)), torch.sin(torch.tensor(0.005))]]))


def test_timestep_embedding_is_of_t_not_one_minus_t():
    # t = 0.5 cannot tell t from 1 - t; 0.25 and 0.9 can
    t = torch.tensor([0.25, 0.9])
    dim = 8
    freqs = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    args = t[:, None] * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    assert torch.allclose(timestep_frequencies(t, dim=dim), expected, atol=1e-6)
    embedder = TimestepEmbedder(16, freq_dim=dim)
    with torch.no_grad():
        assert torch.allclose(embedder(t), embedder.mlp(expected), atol=1e-6)


def test_modulate_scales_by_one_plus_scale():
    # adaLN-Zero: a zero scale must leave x as it is (x * (1 + scale) + shift), per sample, broadcast over tokens
    g = torch.Generator().manual_seed(0)
    x, shift, scale = torch.randn(2, 5, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    assert torch.allclose(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])
    assert torch.equal(modulate(x, torch.zeros(2, 4), torch.zeros(2, 4)), x)


def reference_unpatchify(tokens, p, ch):
    """DiT's unpatchify: (N, T, p*p*C) -> (N, C, H, W) with einsum 'nhwpqc->nchpwq'."""
    n, t, _ = tokens.shape
    side = int(t ** 0.5)
    x = tokens.reshape(n, side, side, p, p, ch)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, ch, side * p, side * p)


def reference_patchify(x, p):
    """The inverse of reference_unpatchify: token (row h, col w) holds pixels [h*p + i, w*p + j] in (i, j, c) order."""
    n, ch, hh, ww = x.shape
    x = x.reshape(n, ch, hh // p, p, ww // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (hh // p) * (ww // p), p * p * ch)


@pytest.mark.parametrize("patch", [2, 4])
def test_unpatchify_follows_dits_pixel_layout(patch):
    model = build_model(**{**TINY, "patch_size": patch})
    x = torch.randn(2, 3, 8, 8)
    tokens = reference_patchify(x, patch)
    assert torch.equal(reference_unpatchify(tokens, patch, 3), x)  # the reference pair is a round trip
    assert torch.equal(model.unpatchify(tokens), x)
    # and the other way round: arbitrary tokens land on the pixels DiT puts them on (rows vs columns in a patch)
    tokens = torch.randn(2, (8 // patch) ** 2, patch * patch * 3)
    assert torch.equal(model.unpatchify(tokens), reference_unpatchify(tokens, patch, 3))


def test_a_shallow_custom_model_builds_without_naming_its_repa_block():
    """The example in docs/architecture.md: depth 2 with the default REPA tap (block 8) takes its last block instead."""
    model = build_model(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4)
    assert model.config.encoder_depth == 2
    assert build_model(input_size=8, patch_size=2, hidden_size=64, depth=12, num_heads=4).config.encoder_depth == 8
    with pytest.raises(ValueError, match="encoder_depth 3 must lie in"):  # an explicit value is still checked
        build_model(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, encoder_depth=3)


def test_snippet_dropout_acts_in_training_only(tiny_model):
    """GMEM.md: v1 applies dropout (p 0.2) after the snippet projection in training only. An eval model is
    deterministic, also when the trainer's dropout mask was left on the module; a model in training mode drops."""
    g = torch.Generator().manual_seed(5)
    x, t, s = torch.randn(3, 3, 8, 8, generator=g), torch.rand(3, generator=g), torch.randn(3, 16, generator=g)
    reference = tiny_model(x, t, s)
    projection = tiny_model.condition_projection
    projection.mask = torch.zeros(3, 32)  # a mask that drops everything: visible wherever it is applied
    try:
        assert torch.equal(tiny_model(x, t, s), reference)
        tiny_model.train()
        assert not torch.equal(tiny_model(x, t, s), reference)  # the given mask applies in training
        projection.mask = None
        torch.manual_seed(0)
        dropped = tiny_model(x, t, s)  # nn.Dropout's own draw, p = 0.2
        assert not torch.equal(dropped, reference) and not torch.equal(dropped, tiny_model(x, t, s))
    finally:
        projection.mask = None
        tiny_model.eval()
