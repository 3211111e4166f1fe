"""emoji-64's targets (issue 23), measured in the checkpoint's own snippet encoder's space; `python
benchmarks/quality.py --emoji64 --checkpoint FOLDER` runs it and writes benchmarks/results/quality_emoji64.{json,md}.

1. speed: seconds for 16 images with the checkpoint's default sampler on the torch threads given (3 runs).
2. variety with identity: --rows bank rows x --seeds seeds each. Features are L2-normalised. Within-row spread =
   mean distance of a row's samples to their centroid, averaged over rows; between-row spread = mean distance of
   the row centroids to their centroid. Target: within >= 0.2 x between. Own emoji: the share of samples whose
   nearest neighbour among all training renderings (both styles) is one of their row's two renderings; target 0.8.
3. FD against the held-out emojis (both styles): --fd-samples samples from rows drawn at random, next to the
   training set's own FD to them (all training renderings). Target: samples below the training set.
4. snippet vs label vs nothing: the checkpoint's layout at ABLATION width/depth trained --ablation-steps on the
   same images with each condition and 3 seeds; FD of --ablation-samples samples against the training renderings.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from gmem_explore.emoji_styles import load_emoji_pairs
from gmem_explore.evaluation.metrics import frechet_distance
from gmem_explore.train.trainer import TrainConfig, Trainer

ABLATION = dict(hidden_size=96, depth=3, num_heads=3)


def pair_sets(pipe, limit=None):
    """Training and held-out pairs the checkpoint's bank was built from (its names pick the training rows)."""
    from gmem_explore.data import split_key, split_mask
    pairs = load_emoji_pairs(pipe.model.config.input_size, "all", limit=limit)
    keys = [split_key(n) for n in pairs.names]
    train, held = pairs.subset(split_mask(keys, "train")), pairs.subset(split_mask(keys, "held_out"))
    names = pipe.bank.meta.get("names")
    if names:  # the bank's row order
        where = {n: i for i, n in enumerate(train.names)}
        train = train.subset(torch.tensor([where[n] for n in names]))
    return train, held


def speed(pipe) -> list[float]:
    times = []
    for rep in range(3):
        tick = time.perf_counter()
        pipe.generate(16, seeds=range(rep * 16, rep * 16 + 16))
        times.append(round(time.perf_counter() - tick, 2))
    return times


def variety(pipe, train, rows: int, seeds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(pipe.bank), generator=g)[:rows]
    snippets = pipe.bank.rows[picks].float().repeat_interleave(seeds, 0)
    gen = pipe.generate(snippets=snippets, seeds=range(len(snippets)), batch_size=128)
    feats = F.normalize(pipe.encoder.encode(gen.images), dim=1).view(rows, seeds, -1)
    centroids = feats.mean(1)
    within = (feats - centroids[:, None]).norm(dim=-1).mean().item()
    between = (centroids - centroids.mean(0)).norm(dim=-1).mean().item()
    refs = F.normalize(torch.cat([pipe.encoder.encode(train.twemoji), pipe.encoder.encode(train.noto)]), dim=1)
    nearest = (feats.flatten(0, 1) @ refs.T).argmax(1) % len(train)  # rendering -> emoji index
    own = (nearest == picks.repeat_interleave(seeds)).float().mean().item()
    return {"rows": rows, "seeds": seeds, "within_row_spread": within, "between_row_spread": between,
            "ratio": within / between, "target_ratio": 0.2, "nearest_is_own_emoji": own, "target_own": 0.8,
            "images": gen.images}


def fd_held_out(pipe, train, held, n: int) -> dict:
    g = torch.Generator().manual_seed(1)
    picks = torch.randint(0, len(pipe.bank), (n,), generator=g)
    gen = pipe.generate(snippets=pipe.bank.rows[picks].float(), seeds=range(n), batch_size=128)
    feats = pipe.encoder.encode(gen.images)
    held_feats = torch.cat([pipe.encoder.encode(held.twemoji), pipe.encoder.encode(held.noto)])
    train_feats = torch.cat([pipe.encoder.encode(train.twemoji), pipe.encoder.encode(train.noto)])
    return {"samples": n, "held_out_images": len(held_feats), "fd_samples_vs_held_out": frechet_distance(feats, held_feats),
            "fd_train_vs_held_out": frechet_distance(train_feats, held_feats)}


def ablation(pipe, train, steps: int, batch: int, samples: int, seeds=(0, 1, 2)) -> dict:
    cfg_model = {**pipe.model.config.to_dict(), **ABLATION}
    cfg_model.pop("backbone", None)
    from gmem_explore.models.registry import build_model
    images = torch.cat([train.twemoji, train.noto])
    rows = pipe.bank.rows.float()
    train_feats = pipe.encoder.encode(images)
    picks = torch.randint(0, len(train), (samples,), generator=torch.Generator().manual_seed(2))
    out = {"model": ABLATION, "steps": steps, "batch_size": batch, "samples": samples}
    for condition in ("snippet", "label", "none"):
        conds = {"snippet": torch.cat([rows, rows]), "label": torch.cat([train.labels, train.labels]),
                 "none": torch.zeros(len(images), dtype=torch.long)}[condition]
        fds = []
        for seed in seeds:
            torch.manual_seed(seed)
            config = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, warmup=min(200, steps // 4 + 1),
                                 condition=condition, seed=seed, progress=False)
            trainer = Trainer(build_model(**cfg_model), images, conds, config, use_accelerate=False)
            trainer.fit()
            imgs = trainer.sample(samples, seeds=range(samples), conditions=conds[picks], method=pipe.sampler["method"],
                                  steps=pipe.sampler["steps"])
            fds.append(frechet_distance(pipe.encoder.encode(imgs), train_feats))
        out[condition] = {"fd": fds, "mean": sum(fds) / len(fds)}
        print(f"ablation {condition}: FD {fds}", flush=True)
    return out


def run(pipe, args) -> dict:
    train, held = pair_sets(pipe, args.limit)
    res = {"checkpoint": args.checkpoint, "sampler": pipe.sampler, "threads": torch.get_num_threads(),
           "training_emojis": len(train), "held_out_emojis": len(held)}
    res["seconds_for_16_images"] = speed(pipe)
    v = variety(pipe, train, args.rows, args.seeds)
    images = v.pop("images")
    res["variety"] = v
    res["fd"] = fd_held_out(pipe, train, held, args.fd_samples)
    if not args.skip_ablation:
        res["ablation"] = ablation(pipe, train, args.ablation_steps, args.ablation_batch, args.ablation_samples)
    res["_grid"] = images
    return res


def markdown(res: dict) -> str:
    v, f = res["variety"], res["fd"]
    lines = [f"# Quality of {res['checkpoint']} (benchmarks/quality.py --emoji64)", "",
             f"{res['training_emojis']} training and {res['held_out_emojis']} held-out emojis, 2 styles each; sampler "
             f"{res['sampler']}; CPU, {res['threads']} torch threads (shared machine).", "",
             "| measure | value | target |", "|---|---|---|",
             f"| seconds for 16 images (3 runs) | {res['seconds_for_16_images']} | <= 3 |",
             f"| within-row / between-row spread ({v['rows']} rows x {v['seeds']} seeds) | {v['within_row_spread']:.3f} / "
             f"{v['between_row_spread']:.3f} = {v['ratio']:.3f} | >= 0.2 |",
             f"| samples nearest to a rendering of their own emoji | {v['nearest_is_own_emoji']:.3f} | >= 0.8 |",
             f"| FD vs held-out: samples ({f['samples']}) / training set | {f['fd_samples_vs_held_out']:.3f} / "
             f"{f['fd_train_vs_held_out']:.3f} | samples lower |"]
    a = res.get("ablation")
    if a:
        lines += ["", f"Snippet vs label vs nothing: width {a['model']['hidden_size']}, depth {a['model']['depth']}, "
                  f"{a['steps']} steps at batch {a['batch_size']}, FD of {a['samples']} samples vs the training "
                  f"renderings, seeds 0, 1, 2:", "", "| condition | FD per seed | mean |", "|---|---|---|"]
        lines += [f"| {c} | {', '.join(f'{x:.3f}' for x in a[c]['fd'])} | {a[c]['mean']:.3f} |"
                  for c in ("snippet", "label", "none")]
    return "\n".join(lines) + "\n"
