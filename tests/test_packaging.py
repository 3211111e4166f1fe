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

