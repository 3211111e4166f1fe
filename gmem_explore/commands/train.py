"""Train (or fine-tune) a GMem model on images and write a checkpoint folder the pipeline and the app load.

Examples:
  gmem train --data my_pictures/ --out my-model --steps 500             # fine-tune the default on a folder
  gmem train --data digits --out digits-model --steps 300 --from-scratch
  gmem train --data twemoji --out run --steps 6000 --resume             # continue an interrupted run exactly
  accelerate launch -m gmem_explore train --data twemoji --out run      # many GPUs (or torchrun -m ...)

The snippet encoder (and, unless --from-scratch, the network's weights) come from --init (default 'emoji-32');
the bank of the new checkpoint holds one row per training image. Images are resized to the model's input size.
The training state (weights, EMA, optimizer, RNG, step) is saved to OUT/train-state.safetensors every
--checkpoint-every steps (0: only at the end) and when training ends; --resume continues from it and gives the
same weights as an uninterrupted run.
"""
from __future__ import annotations

import argparse


def non_negative_int(text: str) -> int:
    """argparse type for --checkpoint-every: a count of steps where 0 means "never"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no periodic saves) or a positive number of steps, got {value}")
    return value


def add_arguments(p):
    p.add_argument("--data", required=True, help="image folder, or 'twemoji' / 'twemoji-skin' / 'digits'")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--init", default=None, help="checkpoint to start from and take the encoder of (default: emoji-32)")
    p.add_argument("--from-scratch", action="store_true", help="re-initialise the network (keep its architecture)")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per optimizer step, split across processes when launched on several (default 32)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3 from scratch, 2e-4 fine-tuning)")
    p.add_argument("--condition", choices=["snippet", "label", "none"], default="snippet",
                   help="what the network is conditioned on: snippet = the image's bank row (GMem; default), "
                        "label = its sub-folder / class label (SiT-style, for comparison), none = unconditional")
    p.add_argument("--snippet-dropout", type=float, default=0.1,
                   help="probability (0 to 1) that an image's condition is dropped in a step; trains the "
                        "unconditional branch that guidance (gmem sample --guidance) needs (default 0.1)")
    p.add_argument("--repa-weight", type=float, default=0.0,
                   help="weight of the REPA-style alignment loss (default 0: off)")
    p.add_argument("--split", choices=["train", "held_out", "all"], default="all",
                   help="which images to train on: held_out is about 10%% of them, chosen by a hash of the name, "
                        "train the rest (default: all)")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=200, metavar="STEPS",
                   help="save the training state for --resume every STEPS steps (default 200); 0: no periodic "
                        "saves, only the final state at the end")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train-state.safetensors")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the batches drawn, their noise, times and condition dropout, and of the weights "
                        "with --from-scratch; the same seed repeats the run (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and batch jobs)")


def run(args) -> int:
    from pathlib import Path

    import torch

    from gmem_explore.bank import MemoryBank
    from gmem_explore.checkpoint import load_checkpoint
    from gmem_explore.data import load_dataset
    from gmem_explore.hub import resolve_checkpoint
    from gmem_explore.model import GMemSiT
    from gmem_explore.train import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be at least 1")
    ckpt = load_checkpoint(resolve_checkpoint(args.init))
    if ckpt.autoencoder.get("type", "pixels") != "pixels":
        raise ValueError("`gmem train` trains pixel-space models; this checkpoint works in a latent space")
    if ckpt.encoder is None:
        raise ValueError("the --init checkpoint has no snippet encoder, so training images cannot be turned into snippets")
    model = ckpt.model
    if args.from_scratch:
        torch.manual_seed(args.seed)
        model = GMemSiT(model.config)
    data = load_dataset(args.data, model.config.input_size, args.split)
    rows = ckpt.encoder.encode(data.images)
    bank = MemoryBank(rows, torch.ones(len(rows)), data.labels, data.label_names, data.images,
                      {"source": args.data, "names": data.names})
    lr = args.lr or (1e-3 if args.from_scratch else 2e-4)
    out = Path(args.out)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, warmup=min(200, args.steps // 5 + 1),
                         snippet_dropout=args.snippet_dropout, condition=args.condition, repa_weight=args.repa_weight,
                         seed=args.seed,
                         progress=not args.no_progress)
    conditions = rows if args.condition == "snippet" else data.labels
    trainer = Trainer(model, data.images, conditions, config, encoder=ckpt.encoder)
    state = out / "train-state.safetensors"
    if args.resume:
        if not state.is_file():
            raise FileNotFoundError(f"--resume: no training state at {state}; start without --resume")
        trainer.load_state(state)
        print(f"resumed at step {trainer.step}")
    if args.checkpoint_every:  # 0: no periodic saves (as TrainConfig.checkpoint_every); the final save_state stays
        every = args.checkpoint_every
        trainer.on("on_step", lambda tr, ev: tr.save_state(state) if ev["step"] % every == 0 else None)
    trainer.fit()
    trainer.save_state(state)
    info = {"name": out.name, "description": f"trained with `gmem train` on {args.data} ({len(data)} images)",
            "data": {"source": args.data, "images": len(data)}}
    trainer.export(out, bank, ckpt.encoder, sampler=ckpt.sampler, info=info, bank_dtype=torch.float16)
    last = trainer.history[-1]["loss"] if trainer.history else float("nan")
    print(f"wrote {out} after {trainer.step} steps (last loss {last:.4f})")
    return 0
