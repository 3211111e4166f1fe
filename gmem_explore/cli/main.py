"""The `gmem` command. Each subcommand lives in gmem_explore/cli/<name>.py with two functions:
`add_arguments(parser)` and `run(args) -> int`, plus a module docstring whose first paragraph, one sentence, is
the command's line in `gmem --help` (the whole docstring is `gmem COMMAND --help`'s description).

Command modules import torch and the package's heavy modules inside `run`, never at their top: building the
parser imports every command module, and `gmem --help` should take a fraction of a second, not torch's seconds
(tests/test_cli.py checks that no --help imports torch).

An error ends the command with one paragraph on stderr, `gmem COMMAND: error: ...`, and exit status 1 (2 for a
misuse of the options, from argparse; 130 for Ctrl-C). `gmem --debug COMMAND ...` shows the traceback instead."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Errors whose message is written for the person at the keyboard (what is wrong and what to do).
EXPECTED = (ValueError, OSError, RuntimeError, IndexError, ImportError, FloatingPointError)  # the last: a NaN loss
DEBUG_HELP = "on an error, show the Python traceback instead of the one-paragraph message, for bug reports " \
             "(default: off)"

# Subcommands in the order `gmem --help` lists them; a module that fails to import is reported, not hidden.
COMMANDS = ["sample", "sample-fid", "convert", "info", "bank", "build-bank", "train", "evaluate"]


class Parser(argparse.ArgumentParser):
    """An option misused: the message and where to read about the options (argparse prints the whole usage
    first, a dozen lines above the one that matters). Exit status 2, as argparse. The command's parsers are made
    by add_subparsers, which uses this class too."""

    def error(self, message):
        what = ("the commands" if self.prog == "gmem" else "the actions") if subparsers(self) \
            else "the options and their defaults"
        self.exit(2, f"{self.prog}: error: {message}. Run `{self.prog} --help` for {what}.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gmem",
        description="Run, inspect and train GMem models (Generative Modeling with Explicit Memory).\n\n"
                    "sample, build-bank and train default to the embedded model 'emoji-32' and work offline; bank\n"
                    "takes a checkpoint or bank file as its argument (e.g. `gmem bank stats emoji-32`). sample-fid\n"
                    "defaults to the released gmem-v1-xl, downloaded once from the Hugging Face Hub (offline, give\n"
                    "it a local .pth or folder), and convert turns that released .pth into a checkpoint folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `gmem COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gmem_explore.cli.{name.replace('-', '_')}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=summary(doc), description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
        for q in [p, *subparsers(p)]:  # `gmem sample --debug` works as well as `gmem --debug sample`
            # SUPPRESS: a subcommand's default must not overwrite a --debug given before the command
            q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def summary(doc: str) -> str | None:
    """A command's line in `gmem --help`: its docstring's first paragraph, joined (its first line alone cut a
    sentence that ran on to the next line)."""
    return " ".join(doc.split("\n\n")[0].split()) or None


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of a command's actions (`gmem bank stats` ...), empty for a command without actions."""
    return [q for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for q in action.choices.values()]


def command_name(args) -> str:
    """'sample', or 'bank stats' for a command with actions: the prefix of its error messages."""
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if action else args.command


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    name, debug = command_name(args), getattr(args, "debug", False)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\ngmem {name}: interrupted. Files are written whole or not at all, so none is left half-written; "
              f"`gmem train --resume` continues from the last saved training state and `gmem sample-fid` run "
              f"again skips the images it finished", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gmem bank nearest ... | head`: the reader left; not an error of ours
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured, or closed)
            pass
        return 1  # as Python itself on a broken pipe; no message: the reader has gone
    except EXPECTED as e:
        if debug:
            raise
        print(f"gmem {name}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001  (one paragraph, not a traceback; --debug shows it)
        if debug:
            raise
        print(f"gmem {name}: error: {type(e).__name__}: {e}. gmem did not expect this error (an input may be "
              f"damaged: a checkpoint's config.json, a bank or image file named in the command; or it is a bug). "
              f"Check those files; to see where it happened, run the command again with --debug "
              f"(gmem --debug {name} ...) and report its output.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
