"""GMem explorer: browse a memory bank, swap in your own images, interpolate snippets, generate live.

    python app.py                       # the embedded emoji-32 model on http://127.0.0.1:7860, offline
    python app.py --checkpoint gmem-v1-xl --device cuda
    python app.py --host 0.0.0.0 --port 8080
    python app.py --checkpoint gmem-v2-xl-160ep --imagenet-train /data/imagenet/train   # rows beside their sources

Also the entry point of the Hugging Face Space (README front matter: sdk gradio, app_file app.py).
The app itself lives in gmem_explore/app/; this file only reads flags and launches it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not already say what the default is, and not to on/off
    flags, whose "(default: False)" adds nothing; otherwise --port read "(default: ...) (default: None)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def env_int(parser: argparse.ArgumentParser, name: str, default: int) -> int:
    """The integer in environment variable `name`, else `default`; a non-integer is a usage error naming it."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if not value.strip().isdigit():
        parser.error(f"${name} is {value!r}, not a whole number: unset it or fix it")
    return int(value)


def parse_args(argv=None) -> argparse.Namespace:
    env_host = os.environ.get("GRADIO_SERVER_NAME")  # set by Hugging Face Spaces (0.0.0.0) and docker setups
    env_port = os.environ.get("GRADIO_SERVER_PORT")
    p = argparse.ArgumentParser(
        prog="python app.py", description=__doc__.split("\n\n")[0],
        epilog="Tabs: Generate (random / row / group / uploaded image, live previews), Bank (map, rows, "
               "neighbours, statistics), Swap (your image into this session's copy of the bank, download it), "
               "Interpolate (two snippets, lerp/slerp/concat/mask, strip and GIF). Stop with Ctrl+C.",
        formatter_class=HelpFormatter)
    # A Space passes no flags: its variables GMEM_CHECKPOINT / GMEM_REVISION choose (and pin) the model instead
    p.add_argument("--checkpoint", default=os.environ.get("GMEM_CHECKPOINT") or "emoji-32",
                   help="a named checkpoint (emoji-32 is built in; gmem-v1-xl downloads from the Hub), a local "
                        "checkpoint folder or a released-format .pth file (default: $GMEM_CHECKPOINT if set, else "
                        "emoji-32)")
    p.add_argument("--revision", default=os.environ.get("GMEM_REVISION") or None,
                   help="version of a Hub checkpoint: a branch, tag or commit hash (a hash pins the app to one "
                        "version, and loads from the cache without asking the Hub) (default: $GMEM_REVISION if set, "
                        "else the newest)")
    p.add_argument("--host", default=env_host or "127.0.0.1",
                   help="address to listen on; 0.0.0.0 makes the app reachable from other machines")
    p.add_argument("--port", type=int, default=int(env_port) if env_port and env_port.isdigit() else None,
                   help="port to listen on (default: $GRADIO_SERVER_PORT if set, else the first free one from 7860 up)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    # A Space runs `python app.py` with no flags: these five also read GMEM_<NAME> (e.g. GMEM_MAX_STEPS=100), set
    # as the Space's variables, to lower what one anonymous request may cost. --max-frames: an interpolation's frames
    # are images too (48 by default, three times --max-images), and lowering --max-images left them as they were.
    for flag, default, text in (("--concurrency", 1, "model calls served at once (more only helps on a large GPU)"),
                                ("--max-queue", 32, "requests that may wait; later ones are refused"),
                                ("--max-images", 16, "images per request"),
                                ("--max-frames", 48, "frames per interpolation request (at least 2)"),
                                ("--max-steps", 500, "sampler steps per request")):
        env = "GMEM_" + flag[2:].upper().replace("-", "_")
        p.add_argument(flag, type=int, default=env_int(p, env, default),
                       help=f"{text} (default: ${env} if set, else {default})")
    # also from the environment, as the limits above: a Space cannot pass flags
    p.add_argument("--max-file-size", default=os.environ.get("GMEM_MAX_FILE_SIZE") or "10mb",
                   help="largest upload accepted, e.g. 500kb or 10mb (default: $GMEM_MAX_FILE_SIZE if set, else 10mb)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument("--imagenet-train", default=os.environ.get("GMEM_IMAGENET_TRAIN") or None, metavar="DIR",
                   help="ImageNet's training folder (a folder per class): the Bank tab shows each row's source image "
                        "and class, for a bank built from it in sorted file order, such as v2's full bank (default: "
                        "$GMEM_IMAGENET_TRAIN if set, else none)")
    p.add_argument("--allow-local-checkpoints", action="store_true",
                   help="let the Model panel load checkpoint folders or .pth files by server-side path "
                        "(off by default: a visitor could otherwise make the server read any path)")
    args = p.parse_args(argv)
    if env_port and not env_port.isdigit() and "--port" not in (argv if argv is not None else sys.argv):
        p.error(f"$GRADIO_SERVER_PORT is {env_port!r}, not a port number: unset it, fix it or pass --port")
    for name in ("concurrency", "max_queue", "max_images", "max_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_frames < 2:  # an interpolation has its two ends at least
        p.error("--max-frames must be at least 2")
    # gradio reads the size only at launch, after the model has loaded, and fails there with a traceback
    if not re.fullmatch(r"\d+\s*(b|kb|mb|gb|tb)", args.max_file_size.strip(), re.IGNORECASE):
        from_env = args.max_file_size == os.environ.get("GMEM_MAX_FILE_SIZE")
        source = "$GMEM_MAX_FILE_SIZE" if from_env else "--max-file-size"
        p.error(f"{source} is {args.max_file_size!r}: give a whole number and a unit, e.g. 500kb or 10mb")
    if args.port is not None and not 0 < args.port < 65536:
        p.error("--port must be between 1 and 65535")
    if args.imagenet_train and not os.path.isdir(os.path.expanduser(args.imagenet_train)):
        from_env = not any(a.startswith("--imagenet-train") for a in (argv if argv is not None else sys.argv))
        p.error(f"{'$GMEM_IMAGENET_TRAIN' if from_env else '--imagenet-train'} is {args.imagenet_train!r}, which is "
                f"not a folder: give ImageNet's training folder (the one holding a folder per class, n01440764/ ...)")
    from gmem_explore.checkpoints.hub import check_revision  # light: huggingface_hub is imported only when a download starts

    try:
        check_revision(args.checkpoint, args.revision)  # before the model loads, not after
    except ValueError as e:
        from_env = args.revision == os.environ.get("GMEM_REVISION")
        p.error(str(e).replace("(--revision)", "($GMEM_REVISION)").replace("drop --revision", "unset GMEM_REVISION")
                if from_env else str(e))
    return args


def load_error(checkpoint: str, device: str, error: Exception) -> int:
    """Print why the start-up checkpoint could not be loaded, as `gmem` prints its errors; the exit status."""
    from gmem_explore.checkpoints.hub import available

    message = f"python app.py: error: could not load checkpoint {checkpoint!r} on device {device!r}: {error}"
    if isinstance(error, (ValueError, OSError)):
        # Loader messages may suggest `gmem sample-fid --checkpoint PATH`; say that the app takes the same PATH.
        message += (f"\nFor the app, pass it as: python app.py --checkpoint <folder or .pth file> (or a name: "
                    f"{', '.join(available())})")
    print(message, file=sys.stderr)
    return 2


class FlagHints:
    """sys.stdout while gradio launches: gradio's "To create a public link, set `share=True` in `launch()`" names a
    Python argument, where this app's user passes the --share flag."""

    HINTS = {"set `share=True` in `launch()`": "run python app.py --share"}

    def __init__(self, out):
        self.out = out

    def write(self, text: str) -> int:
        for said, meant in self.HINTS.items():
            text = text.replace(said, meant)
        return self.out.write(text)

    def __getattr__(self, name):  # flush, isatty, encoding, ...: the real stream's
        return getattr(self.out, name)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no telemetry calls
    import torch

    from gmem_explore.app.server import build_app, launch
    from gmem_explore.app.common import Limits

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    limits = Limits(max_images=args.max_images, max_steps=args.max_steps, max_frames=args.max_frames,
                    concurrency=args.concurrency, allow_local_checkpoints=args.allow_local_checkpoints)
    try:
        demo = build_app(checkpoint=args.checkpoint, limits=limits, device=device, revision=args.revision,
                         imagenet_train=args.imagenet_train)
    except (ValueError, OSError, RuntimeError) as e:
        # The loaders' messages already say what to do; a traceback would bury them. Exit status 2 as for a bad
        # flag, since the cause is the command line (a wrong --checkpoint or --device), not the app.
        sys.exit(load_error(args.checkpoint, device, e))
    with contextlib.redirect_stdout(FlagHints(sys.stdout)):  # only while gradio prints its start-up lines
        launch(demo, host=args.host, port=args.port, share=args.share, max_queue=args.max_queue,
               max_file_size=args.max_file_size, inbrowser=args.open, prevent_thread_lock=True)
    demo.block_thread()  # serves until Ctrl+C, as launch() itself would


if __name__ == "__main__":
    main()
