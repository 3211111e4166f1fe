"""Packaging: pins agree across requirements files and environment.yml (README and CI: tests/test_docs.py)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pins(path):
    out = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            out[name.lower()] = version
    return out


def test_environment_yml_matches_the_requirements():
    wanted = {**pins("requirements.txt"), **pins("requirements-dev.txt")}
    text = (ROOT / "environment.yml").read_text()
    in_env = dict(re.findall(r"^\s*- ([A-Za-z0-9_.\-]+)==([^\s]+)\s*$", text, re.M))
    assert {k.lower(): v for k, v in in_env.items()} == wanted
    assert "python=3.11" in text


def test_every_requirement_is_pinned_and_torch_is_the_cpu_wheel_version():
    for path in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / path).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or line.startswith("-r") or "==" in line, f"{path}: unpinned {line!r}"
    assert pins("requirements.txt")["torch"] == "2.13.0"
    forbidden = {"timm", "torchvision", "open_clip_torch"}  # they replace torch with a CUDA build
    assert not forbidden & (set(pins("requirements.txt")) | set(pins("requirements-dev.txt")))



def test_building_the_package_gives_no_setuptools_warning(tmp_path):
    """`make app` installs the package (pip install -e .): `license = { text = "MIT" }` made setuptools (77 and
    later) print a deprecation warning on every install. The metadata is built here, with this environment's
    setuptools, from a copy of pyproject.toml: no warning, and the licence is an SPDX expression."""
    import shutil
    import subprocess
    import sys

    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "gmem_explore").mkdir()
    (tmp_path / "meta").mkdir()
    (tmp_path / "gmem_explore" / "__init__.py").write_text("")
    code = ("import sys, warnings; warnings.simplefilter('always')\n"
            "from setuptools import build_meta\n"
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "meta")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "deprecat" not in out.stderr.lower(), out.stderr
    metadata = (tmp_path / "meta" / out.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: MIT" in metadata
