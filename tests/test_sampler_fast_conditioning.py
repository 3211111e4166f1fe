"""The fast path's precomputed conditioning (fast_conditioning.Modulation) in bf16: what it rounds and what not."""
import torch

from gmem_explore.sampling import fast
from gmem_explore.sampling import time_grid


def test_bf16_fast_path_embeds_each_step_time_unrounded(tiny_model, monkeypatch):
    """Near t = 1 the released 250-step SDE grid is 0.0039 apart (0.96 / 249), as coarse as bf16 is there (2^-8):
    t rounded to bf16 before its embedding would move most steps' times by up to half a step, an error the 2% image
    tolerance does not show. The fast path embeds the float64 grid's times in the model's float32, as the reference
    does (ones * t in the model's dtype), and rounds only the resulting modulation to bf16."""
    seen = []
    embed = tiny_model.t_embedder.forward

    def record(t):
        seen.append(t.detach().clone())
        return embed(t)

    monkeypatch.setattr(tiny_model.t_embedder, "forward", record)
    grid = time_grid("sde", 250)[:250]
    net = fast.network_for(tiny_model, torch.bfloat16)
    blocks, final = fast.Modulation(tiny_model, torch.randn(2, 16), grid.tolist(), net).get(0)
    assert blocks.dtype == final.dtype == torch.bfloat16
    times = torch.cat(seen)
    assert times.dtype == torch.float32 and torch.equal(times, grid[:len(times)].float())
    assert len(times) == 250 and len(torch.unique(times.bfloat16())) < 250  # bf16 would have merged some steps
