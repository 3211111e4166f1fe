"""Quality of the embedded default (emoji-32), measured in its own snippet encoder's feature space.

    python benchmarks/quality.py                        # both parts, writes benchmarks/results/quality.{json,md}
    python benchmarks/quality.py --skip-ablation        # only part 1 (about 2 minutes on 2 CPU cores)
    python benchmarks/quality.py --emoji64 --checkpoint FOLDER   # emoji-64's targets (benchmarks/quality_emoji64.py)

Part 1, the shipped model: 2,000 generated images (default sampler, rows chosen from the noise, seeds 0..1999)
against the 1,697 training emojis: Frechet distance (FD) next to two references, the floor (FD between two random
halves of the training set) and the held-out emojis (real images the model never saw); improved precision /
recall (k = 3); how often a sample's nearest training image is the very emoji whose snippet conditioned it; the
CPU seconds for 16 images. A grid of samples beside the training emojis they were conditioned on goes to
docs/images/emoji32_samples.png.

Part 1b, unseen emojis: each of the 187 held-out emojis is encoded to a snippet and one image drawn from it.
How close (cosine in encoder space) each sample is to its unseen source, next to what retrieval gives (the
nearest training emoji to the source), and how often the sample's nearest training image is exactly that
neighbour (the model answering an unseen snippet with the closest emoji it knows). Grid: held-out | sample |
nearest training emoji, docs/images/emoji32_held_out.png.

Part 2, the paper's claim at small scale: the same network (the default's layout at width 96 and depth 3, see
ABLATION_MODEL) trained for the same number of steps (--ablation-steps, far fewer than the default's) with the
same seed, conditioned on snippets (GMem), on group labels (a learned embedding in the snippet slot, SiT-style),
or on nothing; FD of --ablation-samples samples at five points along training. FD of a few hundred samples is
biased upwards; the floor at the same sample size is given.
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

from gmem_explore import GMemPipeline, build_model  # noqa: E402
from gmem_explore.data import load_twemoji  # noqa: E402
from gmem_explore.evaluation.metrics import frechet_distance, nearest_training, precision_recall  # noqa: E402
from gmem_explore.train.trainer import TrainConfig, Trainer  # noqa: E402
from gmem_explore.viz import image_grid  # noqa: E402


# The ablation's network: the default's layout (32x32 pixels, patch 4) at a smaller width and depth, so three
# runs fit beside everything else on a shared 2-core CPU.
ABLATION_MODEL = dict(hidden_size=96, depth=3, num_heads=3)


def floor(features, n_a, n_b, seed=0):
    perm = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    return frechet_distance(features[perm[:n_a]], features[perm[n_a:n_a + n_b]])


def shipped_model(args, pipe, train_feats, held_feats) -> dict:
    start = time.perf_counter()
    gen = pipe.generate(args.samples, seeds=range(args.samples), batch_size=250, progress=True)
    sample_seconds = time.perf_counter() - start
    feats = pipe.encoder.encode(gen.images)
    precision, recall = precision_recall(train_feats, feats, k=3)
    _, nearest = nearest_training(feats, train_feats, k=1)
    own = (nearest[:, 0] == torch.tensor(gen.indices)).float().mean().item()
    half = len(train_feats) // 2
    t16 = []
    for rep in range(3):
        tick = time.perf_counter()
        pipe.generate(16, seeds=range(rep * 16, rep * 16 + 16))
        t16.append(time.perf_counter() - tick)

    rows = 8
    picks = list(range(rows * 4))
    real = pipe.bank.thumbnails[torch.tensor([gen.indices[i] for i in picks])]
    pairs = torch.stack([torch.cat([real[i], gen.images[i]], dim=1) for i in picks])  # real | generated
    image_grid(pairs, nrow=4, scale=3).save(ROOT / "docs/images/emoji32_samples.png")
    image_grid(gen.images[:64], nrow=16, scale=2).save(ROOT / "docs/images/emoji32_grid.png")
    return {
        "samples": args.samples, "sampler": pipe.sampler, "training_images": len(train_feats),
        "fd_generated_vs_train": frechet_distance(feats, train_feats),
        "fd_floor_half_vs_half": frechet_distance(train_feats[:half], train_feats[half:]),
        "fd_floor_random_halves": floor(train_feats, half, len(train_feats) - half),
        "fd_held_out_vs_train": frechet_distance(held_feats, train_feats),
        "precision_k3": precision, "recall_k3": recall,
        "nearest_training_is_own_row": own,
        "seconds_for_2000": round(sample_seconds, 1),
        "seconds_for_16_images": [round(s, 2) for s in t16],
    }


def unseen_snippets(args, pipe, held, train_feats, held_feats) -> dict:
    snippets = pipe.snippets_from_images(held.images)
    gen = pipe.generate(snippets=snippets, seeds=range(len(held)), batch_size=250)
    feats = pipe.encoder.encode(gen.images)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=1)  # noqa: E731
    _, neighbour = nearest_training(held_feats, train_feats, k=1)  # retrieval: the closest emoji the model knows
    _, sample_nearest = nearest_training(feats, train_feats, k=1)
    neighbour = neighbour[:, 0]
    picks = torch.arange(0, len(held), max(1, len(held) // 24))[:24]
    triples = torch.stack([torch.cat([torch.as_tensor(held.images[i]), gen.images[i], pipe.bank.thumbnails[neighbour[i]]], dim=1)
                           for i in picks.tolist()])
    image_grid(triples, nrow=4, scale=3).save(ROOT / "docs/images/emoji32_held_out.png")
    return {"held_out_images": len(held),
            "cosine_sample_to_source": cos(feats, held_feats).mean().item(),
            "cosine_retrieval_to_source": cos(train_feats[neighbour], held_feats).mean().item(),
            "sample_nearest_is_source_neighbour": (sample_nearest[:, 0] == neighbour).float().mean().item(),
            "fd_samples_vs_held_out": frechet_distance(feats, held_feats),
            "fd_train_vs_held_out": frechet_distance(train_feats, held_feats)}


def ablation(args, pipe, train, train_feats) -> dict:
    cfg_model = {**pipe.model.config.to_dict(), **ABLATION_MODEL}
    rows = pipe.bank.rows.float()
    points = [round(args.ablation_steps * (i + 1) / 5) for i in range(5)]
    g = torch.Generator().manual_seed(1)
    picks = torch.randint(0, len(train), (args.ablation_samples,), generator=g)  # same rows / labels for all
    results = {"model": ", ".join(f"{k} {v}" for k, v in ABLATION_MODEL.items()), "steps": args.ablation_steps,
               "points": points, "samples": args.ablation_samples, "batch_size": args.ablation_batch, "sampler": pipe.sampler,
               "fd_floor_same_n": floor(train_feats, args.ablation_samples, len(train_feats) - args.ablation_samples)}
    for condition in ("snippet", "label", "none"):
        conditions = rows if condition == "snippet" else train.labels
        config = TrainConfig(steps=args.ablation_steps, batch_size=args.ablation_batch, lr=1e-3, warmup=200,
                             snippet_dropout=0.1, condition=condition, seed=0, progress=False)
        torch.manual_seed(0)
        trainer = Trainer(build_model(**cfg_model), train.images, conditions, config,
                          eval_conditions=conditions[picks] if condition != "none" else None)
        curve, start = [], time.perf_counter()
        for point in points:
            trainer.fit(point - trainer.step)
            images = torch.cat([trainer.sample(len(chunk), seeds=chunk.tolist(), conditions=trainer.eval_conditions[chunk]
                                               if condition != "none" else torch.zeros(len(chunk), dtype=torch.long),
                                               steps=pipe.sampler["steps"], method=pipe.sampler["method"])
                                for chunk in torch.arange(args.ablation_samples).split(250)])
            fd = frechet_distance(pipe.encoder.encode(images), train_feats)
            curve.append({"step": point, "fd": fd, "loss": sum(h["mse"] for h in trainer.history[-50:]) / 50})
            print(f"{condition:8s} step {point:5d}  FD {fd:8.3f}", flush=True)
            if point == points[-1]:
                image_grid(images[:32], nrow=16, scale=2).save(ROOT / f"docs/images/ablation_{condition}.png")
        results[condition] = {"curve": curve, "train_seconds": round(time.perf_counter() - start, 1)}
    return results


def markdown(res: dict) -> str:
    lines = ["# Quality of emoji-32 (written by benchmarks/quality.py)", ""]
    s = res.get("shipped")
    if s:
        lines += [f"Shipped model, {s['samples']} samples ({s['sampler']['method']}, {s['sampler']['steps']} steps), "
                  f"features of the model's own snippet encoder:", "",
                  "| measure | value |", "|---|---|",
                  f"| FD generated vs training set | {s['fd_generated_vs_train']:.3f} |",
                  f"| FD floor: two random halves of the training set | {s['fd_floor_random_halves']:.3f} |",
                  f"| FD held-out emojis vs training set | {s['fd_held_out_vs_train']:.3f} |",
                  f"| precision / recall (k=3) | {s['precision_k3']:.3f} / {s['recall_k3']:.3f} |",
                  f"| nearest training image = the conditioning emoji | {s['nearest_training_is_own_row']:.3f} |",
                  f"| seconds for 16 images (CPU, 3 runs) | {s['seconds_for_16_images']} |", ""]
    u = res.get("unseen")
    if u:
        lines += [f"Unseen emojis: one sample from the snippet of each of the {u['held_out_images']} held-out emojis:", "",
                  "| measure | value |", "|---|---|",
                  f"| cosine, sample to its unseen source | {u['cosine_sample_to_source']:.3f} |",
                  f"| cosine, nearest training emoji to the source (retrieval) | {u['cosine_retrieval_to_source']:.3f} |",
                  f"| sample's nearest training image = the source's nearest | {u['sample_nearest_is_source_neighbour']:.3f} |",
                  f"| FD samples vs held-out / training set vs held-out | {u['fd_samples_vs_held_out']:.3f} / "
                  f"{u['fd_train_vs_held_out']:.3f} |", ""]
    a = res.get("ablation")
    if a:
        lines += [f"Ablation: same network ({a.get('model', '')}), {a['steps']} steps at batch {a['batch_size']}, FD of {a['samples']} "
                  f"samples (floor at that size: {a['fd_floor_same_n']:.3f}):", "",
                  "| step | " + " | ".join(str(p) for p in a["points"]) + " |",
                  "|---|" + "---|" * len(a["points"])]
        for c in ("snippet", "label", "none"):
            curve = a.get(c, {}).get("curve", [])  # a run cut short leaves a partial curve
            cells = [f"{p['fd']:.3f}" for p in curve] + ["not run"] * (len(a["points"]) - len(curve))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        if a.get("note"):
            lines += ["", a["note"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint name or folder (default: emoji-32)")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--ablation-steps", type=int, default=1500)
    p.add_argument("--ablation-batch", type=int, default=32)
    p.add_argument("--ablation-samples", type=int, default=500)
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--skip-shipped", action="store_true")
    p.add_argument("--skip-unseen", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--emoji64", action="store_true", help="emoji-64's targets instead (two styles, 64 px)")
    p.add_argument("--rows", type=int, default=32, help="--emoji64: bank rows for the variety measure")
    p.add_argument("--seeds", type=int, default=8, help="--emoji64: seeds per row")
    p.add_argument("--fd-samples", type=int, default=2000, help="--emoji64: samples for FD against the held-out set")
    p.add_argument("--limit", type=int, default=None, help="--emoji64: the --limit the checkpoint was trained with")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.emoji64:
        return emoji64(args)
    (ROOT / "docs/images").mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "quality.json"
    res = json.loads(json_path.read_text()) if json_path.is_file() else {}
    pipe = GMemPipeline.from_pretrained(args.checkpoint)
    train, held = load_twemoji(32, "train"), load_twemoji(32, "held_out")
    train_feats, held_feats = pipe.encoder.encode(train.images), pipe.encoder.encode(held.images)
    res["device"] = f"CPU, torch threads {torch.get_num_threads()} (machine shared with other jobs)"
    if not args.skip_shipped:
        res["shipped"] = shipped_model(args, pipe, train_feats, held_feats)
    if not args.skip_unseen:
        res["unseen"] = unseen_snippets(args, pipe, held, train_feats, held_feats)
    if not args.skip_ablation:
        res["ablation"] = ablation(args, pipe, train, train_feats)
    json_path.write_text(json.dumps(res, indent=1))
    (out / "quality.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def emoji64(args) -> int:
    import quality_emoji64
    if not args.checkpoint:
        raise SystemExit("--emoji64 needs --checkpoint FOLDER (a scripts/train_emoji64.py export)")
    res = quality_emoji64.run(GMemPipeline.from_pretrained(args.checkpoint), args)
    grid = res.pop("_grid")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "quality_emoji64"
    image_grid(grid[:8 * args.seeds], nrow=args.seeds, scale=1).save(out / f"{name}_rows.png")  # a row per bank row
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    (out / f"{name}.md").write_text(quality_emoji64.markdown(res))
    print(quality_emoji64.markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
