"""The `gmem` command line as a user meets it: fast help, and bad input answered with one clear error line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every command and `gmem bank` action, as typed before --help.
HELP_COMMANDS = [[], ["sample"], ["sample-fid"], ["convert"], ["bank"], ["bank", "stats"], ["bank", "nearest"],
                 ["bank", "compress"], ["build-bank"], ["train"], ["evaluate"]]

# Runs `python -m gmem_explore ARGS` in this interpreter, then says whether torch was imported on the way.
NO_TORCH = """
import runpy, sys
sys.argv = ["gmem", *sys.argv[1:]]
try:
    runpy.run_module("gmem_explore", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
print("TORCH-IMPORTED" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
sys.exit(code)
"""


def run_python(*argv, code=None):
    """A fresh interpreter (its own sys.modules) in the repository root."""
    args = [sys.executable, "-c", code, *argv] if code else [sys.executable, *argv]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "gmem")
def test_help_does_not_import_torch(command):
    """`gmem [COMMAND] --help` must not import torch (seconds of start-up for a page of text): heavy modules are
    imported inside the functions that run a command. Fails if someone adds a top-level torch import again."""
    result = run_python(*command, "--help", code=NO_TORCH)
    assert result.returncode == 0, result.stderr
    assert "usage: gmem" in result.stdout
    assert "NO-TORCH" in result.stderr, f"`gmem {' '.join(command)} --help` imported torch"


def test_importing_the_package_does_not_import_torch_until_a_public_name_is_used():
    result = run_python(code="import sys, gmem_explore\n"
                             "assert 'torch' not in sys.modules, 'import gmem_explore imported torch'\n"
                             "from gmem_explore import GMemPipeline\n"
                             "assert 'torch' in sys.modules and GMemPipeline.__name__ == 'GMemPipeline'\n"
                             "print('ok')")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_lazy_public_names_behave_like_the_eager_ones():
    import gmem_explore
    from gmem_explore.bank import MemoryBank
    from gmem_explore.pipeline import GMemPipeline

    assert gmem_explore.MemoryBank is MemoryBank and gmem_explore.GMemPipeline is GMemPipeline
    assert set(gmem_explore.__all__) <= set(dir(gmem_explore))
    for name in gmem_explore.__all__:
        assert getattr(gmem_explore, name) is not None, name
    namespace = {}
    exec("from gmem_explore import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} == set(gmem_explore.__all__)
    assert gmem_explore.bank.MemoryBank is MemoryBank  # submodules it used to load stay reachable
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        gmem_explore.no_such_name
    assert not hasattr(gmem_explore, "no_such_name")
