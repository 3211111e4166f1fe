"""The `gmem` command. Each subcommand lives in gmem_explore/commands/<name>.py with two functions:
`add_arguments(parser)` and `run(args) -> int`, plus a module docstring whose first line is the help text."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommands in the order `gmem --help` lists them; a module that fails to import is reported, not hidden.
COMMANDS = ["sample", "sample-fid", "convert", "bank", "build-bank", "train", "evaluate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmem",
        description="Run, inspect and train GMem models (Generative Modeling with Explicit Memory).\n\n"
                    "sample, build-bank and train default to the embedded model 'emoji-32' and work offline; bank\n"
                    "takes a checkpoint or bank file as its argument (e.g. `gmem bank stats emoji-32`). sample-fid\n"
                    "defaults to the released gmem-v1-xl, downloaded once from the Hugging Face Hub (offline, give\n"
                    "it a local .pth or folder), and convert turns that released .pth into a checkpoint folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `gmem COMMAND --help` for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gmem_explore.commands.{name.replace('-', '_')}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, OSError, RuntimeError, IndexError) as e:
        print(f"gmem {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
