"""Train (or fine-tune) a GMem model on images and write a checkpoint folder the pipeline and the app load.

Examples:
  gmem train --data my_pictures/ --out my-model --steps 500             # fine-tune the default on a folder
  gmem train --data digits --out digits-model --steps 300 --from-scratch
  gmem train --data twemoji --out run --steps 6000 --resume             # continue an interrupted run exactly
  accelerate launch -m gmem_explore train --data twemoji --out run      # many GPUs (or torchrun -m ...)

The snippet encoder (and, unless --from-scratch, the network's weights) come from --init (default 'emoji-32');
the bank of the new checkpoint holds one row per training image. Images are resized to the model's input size.
The training state (weights, EMA, optimizer, RNG, step) is saved to OUT/train-state.safetensors every
--checkpoint-every steps (0: only at the end), when training ends, and at Ctrl-C (after the step under way; a
second Ctrl-C stops at once, keeping the last saved state). --resume continues from it with the saved run's
settings and gives the same weights as an uninterrupted run. --steps may extend it; the warm-up stays that of the
first --steps (min(200, steps / 5 + 1)), so a run under 1,000 steps, extended, differs from one started with the
larger --steps. It refuses other images or another snippet encoder than the saved run's (the state records --data,
--split and --init and the fingerprints of the images and the encoder; a moved folder with the same images resumes).
--condition label / none train baselines to compare GMem with: they write the training state only, no checkpoint
folder (the pipeline would condition their network on bank rows); sample them with gmem_explore.train.trainer.Trainer.
"""
from __future__ import annotations

# The package's modules are imported inside run(), not here: `gmem --help` must not wait for torch (cli/main.py).
import sys
from pathlib import Path

from gmem_explore.cli.checks import DATASET_NAMES, float_in, image_source, int_in, output_folder, positive_int

# --checkpoint-every: a count of steps where 0 means "never"
every_steps = int_in(0, unit="steps", wanted="0 (no periodic saves) or a positive number of")

# The settings that shape the training itself: a resumed run that changed one would not continue the saved run.
RESUME_MUST_MATCH = {"batch_size": "--batch-size", "lr": "--lr", "condition": "--condition",
                     "snippet_dropout": "--snippet-dropout", "repa_weight": "--repa-weight", "seed": "--seed"}
# compared only when given: their defaults are None (--lr's depends on --from-scratch, which a resume does not need)
ONLY_WHEN_GIVEN = ("lr", "seed")


def add_arguments(p):
    p.add_argument("--data", required=True, help="image folder (its sub-folders become labels), or 'twemoji' / 'twemoji-skin' / 'digits' (required)")
    p.add_argument("--out", required=True, help="output checkpoint folder (required; created, or replaced as a whole)")
    p.add_argument("--init", default=None, help="checkpoint to start from and take the encoder of (default: emoji-32)")
    p.add_argument("--from-scratch", action="store_true", help="re-initialise the network, keeping its architecture (default: off, fine-tune --init's weights)")
    p.add_argument("--steps", type=positive_int, default=1000, help="total optimizer steps, 1 or more (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per optimizer step, split across processes when launched on several (default 32)")
    p.add_argument("--lr", type=float_in(0, low_open=True), default=None,
                   help="AdamW learning rate, more than 0 (default: 1e-3 from scratch, 2e-4 fine-tuning)")
    p.add_argument("--condition", choices=["snippet", "label", "none"], default="snippet",
                   help="what the network is conditioned on: snippet = the image's bank row (GMem; default), "
                        "label = its sub-folder / class label (SiT-style), none = unconditional. label and none are "
                        "baselines for comparison: OUT gets their training state only, no checkpoint to sample")
    p.add_argument("--snippet-dropout", type=float_in(0, 1), default=0.1,
                   help="probability (0 to 1) that an image's condition is dropped in a step; trains the "
                        "unconditional branch that guidance (gmem sample --guidance) needs (default 0.1)")
    p.add_argument("--repa-weight", type=float_in(0), default=0.0,
                   help="weight (0 or more) of the REPA-style alignment loss beside the flow loss (default 0: off)")
    p.add_argument("--split", choices=["train", "held_out", "all"], default="all",
                   help="which images to train on: held_out is about 10%% of them, chosen by a hash of the name, "
                        "train the rest (default: all)")
    p.add_argument("--checkpoint-every", type=every_steps, default=200, metavar="STEPS",
                   help="save the training state for --resume every STEPS steps (default 200); 0: no periodic "
                        "saves, only the final state at the end (and at Ctrl-C)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/train-state.safetensors with the settings saved there (--steps may "
                        "extend the run; other flags that change training must match the saved ones)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed (a whole number) of the batches drawn, their noise, times and condition dropout, and of the "
                        "weights with --from-scratch; the same seed repeats the run (default 0)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads, 1 or more (default: torch's choice, usually one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, for logs and batch jobs (default: off)")


STATE_NAME = "train-state.safetensors"  # in --out; the Trainer's periodic saves (checkpoint_every) go there too


def new_run_config(args):
    """The TrainConfig of a run started now from the command line. The periodic saves are the Trainer's own
    (config.checkpoint_every): its loop runs on every process, where an on_step callback runs on the main one only,
    and a save waits for all processes (the others would go on into the next step's all-reduce: a hang)."""
    from gmem_explore.train.trainer import TrainConfig

    lr = args.lr if args.lr is not None else (1e-3 if args.from_scratch else 2e-4)
    every = args.checkpoint_every
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, warmup=min(200, args.steps // 5 + 1),
                       snippet_dropout=args.snippet_dropout, condition=args.condition, repa_weight=args.repa_weight,
                       seed=args.seed or 0, progress=not args.no_progress, checkpoint_every=every,
                       out_dir=str(Path(args.out).expanduser()) if every else None)


def data_source(args) -> dict:
    """What decides which images a run trains on, as the flags that say it: --data (a folder as an absolute path,
    so another working directory names the same one), --split, and --init (its encoder makes the snippets and its
    input size the image size). The train state records it; a refused --resume names both."""
    from gmem_explore.checkpoints.hub import checkpoint_name

    def where(value):
        path = Path(value).expanduser()
        return str(path.resolve()) if path.is_dir() else value

    data = args.data if args.data in DATASET_NAMES else where(args.data)
    return {"--data": data, "--split": args.split, "--init": where(checkpoint_name(args.init))}


def resumed_config(state, args):
    """The config saved in the training state, with the --steps and progress bar asked now. The saved one wins
    because the schedule must go on as it began: the warm-up is derived from --steps, so extending a run with a
    larger --steps would otherwise restart part of the warm-up mid-run. Flags that change the training itself and
    differ from the saved run are refused rather than silently dropped; --lr only when given (its default depends
    on --from-scratch, which a resumed run does not need), --seed likewise only when given."""
    from gmem_explore.safefiles import read_header
    from gmem_explore.train.trainer import TrainConfig

    asked = new_run_config(args)
    must_match = {k: flag for k, flag in RESUME_MUST_MATCH.items()
                  if not (k in ONLY_WHEN_GIVEN and getattr(args, k) is None)}
    saved = read_header(state)[1].get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {state} holds no training config, so it is not a `gmem train` state; "
                         f"start without --resume, or give another --out")
    changed = [f"{flag} {asked_value} (the saved run used {saved[key]})"
               for key, flag in must_match.items()
               if key in saved and (asked_value := getattr(asked, key)) != saved[key]]
    if changed:
        raise ValueError(f"--resume continues the run saved in {state}, but this command changes " + "; ".join(changed)
                         + ". Give the saved values, or a new --out to start a new run")
    now = {k: getattr(asked, k) for k in ("steps", "progress", "checkpoint_every", "out_dir")}
    return TrainConfig.from_dict({**saved, **now})


def run(args) -> int:
    import torch

    from gmem_explore.bank.memory import MemoryBank
    from gmem_explore.checkpoints.folder import load_checkpoint
    from gmem_explore.data import load_dataset
    from gmem_explore.checkpoints.hub import resolve_checkpoint
    from gmem_explore.models.sit import GMemSiT
    from gmem_explore.safefiles import read_header
    from gmem_explore.train.trainer import StopRequested, Trainer, baseline_refusal
    from gmem_explore.train.checks import describe_source

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be at least 1")
    out = output_folder(args.out)  # before the data loads and training runs: the state is saved at the end
    image_source(args.data, "--data")
    state = out / STATE_NAME
    if args.resume and not state.is_file():
        raise FileNotFoundError(f"--resume: no training state at {state}; start without --resume")
    config = resumed_config(state, args) if args.resume else new_run_config(args)
    ckpt = load_checkpoint(resolve_checkpoint(args.init))
    if ckpt.autoencoder.get("type", "pixels") != "pixels":
        raise ValueError("`gmem train` trains pixel-space models; this checkpoint works in a latent space")
    if ckpt.encoder is None:
        raise ValueError("the --init checkpoint has no snippet encoder, so training images cannot be turned into snippets")
    model = ckpt.model
    if args.from_scratch:
        torch.manual_seed(config.seed)
        model = GMemSiT(model.config)
    data = load_dataset(args.data, model.config.input_size, args.split)
    rows = ckpt.encoder.encode(data.images)
    bank = MemoryBank(rows, torch.ones(len(rows)), data.labels, data.label_names, data.images,
                      {"source": args.data, "names": data.names})
    is_baseline = config.condition != "snippet"
    conditions = rows if config.condition == "snippet" else data.labels
    source = data_source(args)
    trainer = Trainer(model, data.images, conditions, config, encoder=ckpt.encoder, data_source=source)
    trainer.state_name = STATE_NAME
    say = print if trainer.is_main else (lambda *a, **k: None)  # once, not once per process
    if is_baseline:  # said before training, not after minutes of it
        say(f"--condition {config.condition} trains a baseline for comparison: {out} will hold its training state "
            f"only, no checkpoint folder")
    if args.resume:
        saved = (read_header(state)[1].get("data") or {}).get("source")
        trainer.load_state(state)  # refuses other images or another encoder, naming the saved and the given flags
        moved = f" (the saved run's {describe_source(saved)} holds the same images)" if saved and saved != source else ""
        say(f"resumed at step {trainer.step}{moved}")
    try:
        trainer.fit()
    except StopRequested:  # Ctrl-C, honoured between two steps (a second one stops at once, mid-step, unsaved)
        trainer.save_state_unless_current(state)
        say(f"stopped at step {trainer.step} of {config.steps}; the training state is saved in {state}: the same "
            f"command with --resume continues it", file=sys.stderr)
        raise
    trainer.save_state_unless_current(state)
    last = trainer.history[-1]["loss"] if trainer.history else float("nan")
    if is_baseline:
        say(f"wrote {state} after {trainer.step} steps (last loss {last:.4f}); no checkpoint folder: "
            f"{baseline_refusal(config.condition)}")
        return 0
    info = {"name": out.name, "description": f"trained with `gmem train` on {args.data} ({len(data)} images)",
            "data": {"source": args.data, "split": args.split, "images": len(data)}}
    trainer.export(out, bank, ckpt.encoder, sampler=ckpt.sampler, info=info, bank_dtype=torch.float16)
    # measured against what it learnt from, or, after --split train, against the images it never saw
    against = {"all": "", "held_out": " --split held_out", "train": " --split held_out"}[args.split]
    which = " on the images it did not train on" if args.split == "train" else ""
    say(f"wrote {out} after {trainer.step} steps (last loss {last:.4f}); try it: gmem sample --checkpoint {out}; "
        f"measure it{which}: gmem evaluate --checkpoint {out} --data {args.data}{against}")
    return 0
