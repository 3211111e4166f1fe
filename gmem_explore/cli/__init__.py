"""The `gmem` command: main.py builds the parser; each subcommand is a module here with add_arguments(parser),
run(args) -> int and a docstring whose first line is its help. checks.py holds the argument types. Nothing heavy
is imported at the top of any of them: `gmem --help` does not import torch."""
from .main import main

__all__ = ["main"]
