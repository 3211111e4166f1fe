"""Which backbone and patch size for emoji-64, per CPU second (scripts/train_emoji64.py's MODEL comes from this).

    python benchmarks/emoji64_arch.py --seconds 60     # writes benchmarks/results/emoji64_arch.json

For each candidate at 64 x 64 pixels: parameters; seconds for 16 images with the default sampler's 15 network
evaluations (heun, 8 steps) on 2 threads; and a short training run of --seconds on 2 threads (Trainer, batch 32,
the same 512 Twemoji/Noto images and snippets of a random projection), scored by the flow-matching loss on a
fixed held-out batch (fixed t and noise) at the end. Lower loss after the same CPU time = better per CPU second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gmem_explore.models.registry import build_model  # noqa: E402
from gmem_explore.train.trainer import TrainConfig, Trainer  # noqa: E402

BASE = dict(input_size=64, in_channels=3, snippet_dim=768, mlp_ratio=4.0)
# At 64 px, patch 4 is 256 tokens: 4x the attention-free cost of patch 8's 64 at equal width, which the 3 s budget
# for 16 images on 2 cores cannot pay (emoji-32's width 192, depth 6 at 64 tokens took 1.4 s). The 40 MB budget
# leaves about 5M parameters for the network, so both families are compared at patch 8, width 192, depth 6.
SMALL = dict(patch_size=8, hidden_size=192, depth=6, num_heads=3, encoder_depth=2, projector_dim=256, condition_dropout=0.0)
CANDIDATES = {
    "sit-p8-w192-d6": SMALL,
    "lightningdit-p8-w192-d6": dict(backbone="lightningdit", **SMALL),
}


def held_loss(model, x, s, seed=123):
    g = torch.Generator().manual_seed(seed)
    t = torch.sigmoid(torch.randn(len(x), generator=g))
    eps = torch.randn(x.shape, generator=g)
    t4 = t[:, None, None, None]
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(((1 - t4) * x + t4 * eps), t, s), eps - x).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--only", nargs="*", default=list(CANDIDATES))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from gmem_explore.emoji_styles import load_emoji_pairs
    pairs = load_emoji_pairs(64, "train").subset(torch.arange(0, 3300, 5)[:512 + 64])
    images = torch.cat([pairs.twemoji, pairs.noto])
    proj = torch.randn(64 * 64 * 3, 768, generator=torch.Generator().manual_seed(0)) / 110
    flat = images.float().flatten(1) / 127.5 - 1
    snippets = torch.nn.functional.normalize(flat @ proj, dim=1)
    train_idx = torch.cat([torch.arange(512), torch.arange(512) + len(pairs)])
    held_idx = torch.cat([torch.arange(512, 576), torch.arange(512, 576) + len(pairs)])
    x_held = flat[held_idx].view(-1, 64, 64, 3).permute(0, 3, 1, 2)
    results = {}
    for name in args.only:
        torch.manual_seed(0)
        model = build_model(**BASE, **CANDIDATES[name])
        params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("projector"))
        model.eval()
        x = torch.randn(16, 3, 64, 64)
        s = snippets[:16]
        t16 = []
        with torch.no_grad():
            for _ in range(2):
                tick = time.perf_counter()
                for i in range(15):
                    model(x, torch.full((16,), 1 - i / 15), s)
                t16.append(time.perf_counter() - tick)
        cfg = TrainConfig(steps=10**6, batch_size=32, lr=1e-3, warmup=50, ema_decay=0.0, progress=False, seed=0)
        trainer = Trainer(model, images[train_idx], snippets[train_idx], cfg, use_accelerate=False)
        tick = time.perf_counter()
        while time.perf_counter() - tick < args.seconds:
            trainer.fit(steps=5)
        seconds = time.perf_counter() - tick
        net = trainer.network.eval()
        results[name] = {"parameters_M": round(params / 1e6, 2), "seconds_16_images_15_evals": round(min(t16), 2),
                         "train_steps": trainer.step, "seconds_per_step_batch32": round(seconds / trainer.step, 3),
                         "held_loss": round(held_loss(net, x_held, snippets[held_idx]), 4),
                         "weights_MB_fp32": round(sum(p.numel() for p in model.parameters()) * 4 / 2**20, 1)}
        print(name, results[name], flush=True)
    out = ROOT / "benchmarks/results/emoji64_arch.json"
    out.write_text(json.dumps({"seconds_each": args.seconds, "threads": 2, "results": results}, indent=1))


if __name__ == "__main__":
    main()
