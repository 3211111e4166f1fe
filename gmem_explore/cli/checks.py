"""Checks the commands make before anything slow happens: argparse types for counts, rates and sizes, the output
paths (written at the end of seconds to hours of work, so tried first) and the torch device.

Only the standard library and gmem_explore.values are imported here (torch inside check_device): `gmem --help`
must not wait for torch.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from gmem_explore.values import as_whole


def int_in(low: int, high: int | None = None, unit: str = "", wanted: str | None = None):
    """argparse type: a whole number in [low, high] (no upper bound when high is None), the values.as_whole test
    on the number typed. `wanted` says the range in other words ("0 (never) or a positive number of")."""
    unit = f" {unit}" if unit else ""
    wanted = wanted or (f"at least {low}" if high is None else f"from {low} to {high}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number{' of' if unit else ''}{unit}, got {text!r}") from None
        if as_whole(value, low, high) is None:
            raise argparse.ArgumentTypeError(f"must be {wanted}{unit}, got {value}")
        return value

    return parse


def float_in(low: float, high: float | None = None, low_open: bool = False):
    """argparse type: a finite number >= low (> low when low_open), <= high when given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = value != value or value in (float("inf"), float("-inf")) or value < low or (low_open and value == low) \
            or (high is not None and value > high)
        if bad:
            if high is not None:
                wanted = f"between {low:g} and {high:g}"
            else:
                wanted = f"{'more than' if low_open else 'at least'} {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {wanted}, got {text}")
        return value

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)


def _existing_ancestor(path: Path) -> Path:
    """The path itself when it exists, else the nearest folder above it that does (what would be created under)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _try_writing_in(folder: Path, option: str, path) -> None:
    """A real write (and removal) of an empty temporary file: os.access says yes to root even on /proc."""
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is a file, not a folder; choose a path in an existing or new "
                         f"folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".gmem-write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {folder} ({e.strerror or e}); choose a folder you can "
                         f"write to") from None


def output_file(path, option: str = "--out", suffixes: tuple[str, ...] = (), kind: str = "",
                example: str = "") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder at its place, a file where a folder
    of its path should be, an unwritable place, or (with `suffixes`) the wrong extension. The file's own folder may
    be new (the writers create it); a missing folder above it is refused: `--out smaples/run1/grid.png` made the
    whole mistyped tree without a word."""
    path = Path(path).expanduser()
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: {kind or 'the output'} must be a {' or '.join(suffixes)} file; end the "
                         f"name in {suffixes[0]}")
    if path.is_dir():
        example = path / (example or f"out{suffixes[0] if suffixes else '.png'}")
        raise ValueError(f"{option} {path} is a folder; give a file name, e.g. {example}")
    _try_writing_in(_existing_ancestor(path.parent), option, path)
    above = path.parent.parent
    if not path.parent.exists() and not above.is_dir():
        raise ValueError(f"{option} {path}: the folder {above} does not exist, and only the file's own folder "
                         f"({path.parent.name}) is created; check the path, or create the folders first: "
                         f"mkdir -p {path.parent}")
    return path


def output_folder(path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written: an existing file at its place or
    on its path, or an unwritable place. An existing folder is fine (resumed, or replaced as a whole)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; give the name of a new or existing folder")
    _try_writing_in(_existing_ancestor(path), option, path)
    return path


# sampling.METHODS, spelt here: sampling imports torch (--help must not); a test keeps the two equal
SAMPLER_METHODS = ("sde", "euler", "heun", "sde-heun")
DATASET_NAMES = ("twemoji", "twemoji-skin", "digits")  # data.DATASET_NAMES, spelt here: data imports torch (--help)


def image_source(value: str, option: str) -> str:
    """A dataset name or an existing image folder (said now, not after the model has loaded)."""
    if value in DATASET_NAMES:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        raise ValueError(f"{option} {value} is a file; give a folder of images (sub-folders become labels) or one "
                         f"of {', '.join(DATASET_NAMES)}")
    if not path.is_dir():
        raise FileNotFoundError(f"{option} {value}: no such folder; give a folder of images or one of "
                                f"{', '.join(DATASET_NAMES)}")
    return value


def check_device(spec: str, option: str = "--device", allow_auto: bool = False) -> str:
    """The device, refused at once when torch cannot use it (instead of an AssertionError deep in a model load)."""
    if allow_auto and spec == "auto":
        return spec
    from gmem_explore.devices import check_device as check  # imports torch: only when a command runs

    check(spec, option, cpu_hint=f"{option} cpu")
    return spec
