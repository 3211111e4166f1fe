"""Named checkpoints and where their files come from.

- "emoji-32": the embedded default, shipped inside the package (gmem_explore/weights/emoji-32), no download.
- a local folder in our checkpoint format (see checkpoint.py).
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_NAME = "emoji-32"
EMBEDDED = {"emoji-32": WEIGHTS / "emoji-32"}


def available() -> list[str]:
    return sorted(EMBEDDED)


def resolve_checkpoint(name_or_path: str | None = None, **kwargs) -> Path:
    """A local checkpoint folder for a name or a path."""
    name = name_or_path or DEFAULT_NAME
    if name in EMBEDDED:
        folder = EMBEDDED[name]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"The embedded checkpoint {name!r} is missing from {folder}; reinstall gmem-explore")
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"{name_or_path!r} is neither a known checkpoint name {available()} nor a checkpoint folder")
