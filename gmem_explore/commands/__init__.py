"""Subcommands of the `gmem` command line (see gmem_explore/cli.py)."""
