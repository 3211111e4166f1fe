"""GMem v2's LightningDiT: upstream's state_dict layout (LINs-lab/GMem models/lightningdit.py), its file formats
loaded strictly, and the time convention converted at the model's edge."""
from __future__ import annotations

import math

import pytest
import torch

from gmem_explore import build_model
from gmem_explore.models import LightningDiT, LightningDiTConfig, config_from_dict, load_upstream_checkpoint, model_config
from gmem_explore.models.lightningdit import rope_tables
from gmem_explore.sampling import sample

# depth 2, width 64, 4 heads (head width 16), patch 1 on 8 x 4 x 4 latents: 16 tokens.
TINY_V2 = dict(backbone="lightningdit", input_size=4, patch_size=1, in_channels=8, hidden_size=64, depth=2, num_heads=4)


def tiny(seed=0, **overrides):
    """The tiny network with a narrow REPA head (upstream's is 2048 wide: 4M weights, slow to draw)."""
    torch.manual_seed(seed)
    return build_model(**{**TINY_V2, "projector_dim": 32, "repa_dim": 16, **overrides}).eval()


def expected_tiny_layout() -> dict:
    """What upstream's LightningDiT(input_size=4, patch_size=1, in_channels=8, hidden_size=64, depth=2, num_heads=4,
    use_swiglu=True, use_rope=True, use_rmsnorm=True) holds, read off its source: timm PatchEmbed `x_embedder.proj`;
    `pos_embed` (1, T, D); FeatureEmbedder(768, D) `condition_projection.linear`; VisionRotaryEmbeddingFast(16 / 2)
    buffers (T, head width); blocks with RMSNorm weights, qkv with bias, SwiGLUFFN(64, int(2/3 * 256) = 170) as w12
    (2 x 170) and w3, adaLN Linear(D, 6D); projector = ModuleList([build_mlp(D, 2048, 768)]); final RMSNorm, Linear(D,
    p * p * C), adaLN Linear(D, 2D)."""
    d, tokens, swiglu = 64, 16, 170
    layout = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, 8, 1, 1), "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
        "condition_projection.linear.weight": (d, 768), "condition_projection.linear.bias": (d,),
        "feat_rope.freqs_cos": (tokens, 16), "feat_rope.freqs_sin": (tokens, 16),
        "projector.0.0.weight": (2048, d), "projector.0.0.bias": (2048,),
        "projector.0.2.weight": (2048, 2048), "projector.0.2.bias": (2048,),
        "projector.0.4.weight": (768, 2048), "projector.0.4.bias": (768,),
        "final_layer.norm_final.weight": (d,),
        "final_layer.linear.weight": (8, d), "final_layer.linear.bias": (8,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(2):
        layout.update({
            f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
            f"blocks.{i}.attn.qkv.weight": (3 * d, d), f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d), f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.mlp.w12.weight": (2 * swiglu, d), f"blocks.{i}.mlp.w12.bias": (2 * swiglu,),
            f"blocks.{i}.mlp.w3.weight": (d, swiglu), f"blocks.{i}.mlp.w3.bias": (d,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d), f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
        })
    return layout


def test_tiny_state_dict_is_upstreams_layout():
    got = {k: tuple(v.shape) for k, v in tiny(projector_dim=2048, repa_dim=768).state_dict().items()}
    assert got == expected_tiny_layout()


def test_xl1_is_gmem_v2s_network():
    with torch.device("meta"):
        model = build_model("LightningDiT-XL/1")
    c = model.config
    assert (c.input_size, c.patch_size, c.in_channels, c.hidden_size, c.depth, c.num_heads) == (16, 1, 32, 1152, 28, 16)
    assert (c.use_swiglu, c.use_rope, c.use_rmsnorm, c.use_qknorm, c.wo_shift) == (True, True, True, False, False)
    assert c.encoder_depth == 4 and c.condition_dropout == 0.4
    state = model.state_dict()
    assert len(state) == 358  # 28 blocks x 12 + 22 others, as upstream's XL/1 with GMem's switches
    assert tuple(state["blocks.27.mlp.w12.weight"].shape) == (6144, 1152)
    assert tuple(state["feat_rope.freqs_cos"].shape) == (256, 72)
    weights = sum(v.numel() for k, v in state.items() if k != "pos_embed" and not k.startswith("feat_rope."))
    assert weights == 682_825_888  # the count of upstream's module built the same way


def test_other_sizes_and_custom_sizes():
    with torch.device("meta"):
        b2 = build_model("LightningDiT-B/2", input_size=32)
    assert (b2.config.depth, b2.config.hidden_size, b2.config.num_heads, b2.config.patch_size) == (12, 768, 12, 2)
    assert tuple(b2.state_dict()["feat_rope.freqs_cos"].shape) == (256, 64)
    assert isinstance(config_from_dict(tiny().config.to_dict()), LightningDiTConfig)
    assert model_config("SiT-XL/2").depth == 28  # the SiT family is built by the same build_model
    with pytest.raises(ValueError, match="LightningDiT-XL/1"):
        build_model("LightningDiT-XXL/1")
    with pytest.raises(ValueError, match="is a lightningdit model, not backbone='sit'"):
        build_model("LightningDiT-XL/1", backbone="sit")
    with pytest.raises(ValueError, match="multiple of 4"):  # head width 6: RoPE cannot split it in pairs per axis
        build_model(**{**TINY_V2, "hidden_size": 24})
    with pytest.raises(ValueError, match="Unknown LightningDiT config keys"):
        build_model(**TINY_V2, use_swiglo=True)


def test_rope_tables_turn_row_pairs_then_column_pairs():
    cos, sin = rope_tables(head_dim=8, grid=3)
    freqs = [1.0, 10000 ** -0.5]  # theta^(-2k / 4) for the two pairs of each 4-wide half
    for r in range(3):
        for c in range(3):
            angles = [r * f for f in freqs for _ in (0, 1)] + [c * f for f in freqs for _ in (0, 1)]
            torch.testing.assert_close(cos[r * 3 + c], torch.tensor(angles).cos())
            torch.testing.assert_close(sin[r * 3 + c], torch.tensor(angles).sin())


def test_upstream_files_load_strictly(tmp_path):
    source = tiny(seed=1)
    state = source.state_dict()
    x, t, s = torch.randn(2, 8, 4, 4), torch.rand(2), torch.randn(2, 768)
    want = source(x, t, s)
    # upstream's training checkpoint ({"model", "ema", "config"}, the sampler reads "ema") and a bare state_dict
    torch.save({"model": state, "ema": state, "config": {"model": {"model_type": "LightningDiT-XL/1"}}},
               tmp_path / "train.pt")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("train.pt", "bare.pth"):
        fresh = tiny(seed=2)
        assert not torch.equal(fresh(x, t, s), want)
        load_upstream_checkpoint(fresh, tmp_path / name)
        assert torch.equal(fresh(x, t, s), want)

    torch.save({k: v for k, v in state.items() if k != "feat_rope.freqs_sin"}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys: feat_rope\.freqs_sin"):
        load_upstream_checkpoint(tiny(), tmp_path / "missing.pth")
    torch.save({**state, "blocks.0.mlp.w3.weight": torch.zeros(64, 171)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.w3\.weight: checkpoint \(64, 171\) vs model \(64, 170\)"):
        load_upstream_checkpoint(tiny(), tmp_path / "shape.pth")
    torch.save({"ema": {**state, "y_embedder.embedding_table.weight": torch.zeros(1001, 64)}}, tmp_path / "label.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: y_embedder\.embedding_table\.weight"):
        load_upstream_checkpoint(tiny(), tmp_path / "label.pth")  # hustvl's class-conditional LightningDiT
    sit = build_model(input_size=4, patch_size=1, in_channels=8, hidden_size=64, depth=2, num_heads=4).state_dict()
    for v1 in ({"network": sit, "memorybank": torch.zeros(2, 768)}, sit):
        torch.save(v1, tmp_path / "v1.pth")
        with pytest.raises(ValueError, match="looks like a GMem v1 file"):
            load_upstream_checkpoint(tiny(), tmp_path / "v1.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="Not a LightningDiT checkpoint.*found list"):
        load_upstream_checkpoint(tiny(), tmp_path / "list.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "bare.pth").read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated one must be downloaded again"):
        load_upstream_checkpoint(tiny(), tmp_path / "cut.pth")


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_pickle_with_code_is_refused(tmp_path):
    torch.save({"ema": tiny().state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="needs code to unpickle is refused"):
        load_upstream_checkpoint(tiny(), tmp_path / "evil.pth")


def test_time_runs_the_other_way_than_upstream():
    """v_ours(x, t) = -v_upstream(x, 1 - t): the same point of the path, the opposite direction of time."""
    model = tiny(seed=3)
    x, t, s = torch.randn(3, 8, 4, 4), torch.tensor([0.1, 0.5, 0.93]), torch.randn(3, 768)
    ours = model(x, t, s)
    torch.testing.assert_close(ours, -model.forward_upstream(x, 1 - t, s))
    assert (ours + model.forward_upstream(x, t, s)).abs().max() > 1e-3  # the flip of t is not a no-op

    # Euler from noise to data in both conventions lands on the same latents: ours steps t 1 -> 0 through the
    # project's sampler, upstream's steps s = 1 - t from 0 -> 1 with x += ds * v_upstream(x, s).
    noise, steps = torch.randn(3, 8, 4, 4), 6
    with torch.no_grad():
        got = sample(model, noise, s, method="euler", steps=steps)
        up = noise.double()
        grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        for s0, s1 in zip(grid[:-1], grid[1:]):
            up = up + (s1 - s0) * model.forward_upstream(up.float(), s0.float().expand(3), s).double()
    torch.testing.assert_close(got, up.float(), atol=1e-5, rtol=1e-5)


def test_projection_tap_and_snippet_dropout():
    model = tiny(seed=4, depth=5)
    x, t, s = torch.randn(2, 8, 4, 4), torch.rand(2), torch.randn(2, 768)
    v, z = model.forward_with_projection(x, t, s)
    assert torch.equal(v, model(x, t, s)) and z.shape == (2, 16, 16) and model.config.encoder_depth == 4
    assert model.projectors is model.projector  # the trainer's name for the REPA head
    # training: dropout on the snippet's elements before the Linear (upstream's FeatureEmbedder), a given mask wins
    model.train()
    embed = model.condition_projection
    embed.mask = torch.zeros(2, 768)
    assert torch.equal(embed(s), embed.linear.bias.expand(2, -1))
    embed.mask = None
    dropped = (embed(s) - embed.linear(s)).abs().amax(dim=1)
    assert (dropped > 0).all() and math.isclose(embed.dropout.p, 0.4)


def test_config_is_an_upstream_shaped_json():
    c = tiny().config
    d = c.to_dict()
    assert d["backbone"] == "lightningdit" and d["use_swiglu"] is True
    assert config_from_dict(d) == c
    assert isinstance(LightningDiT(c), LightningDiT)
