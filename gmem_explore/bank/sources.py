"""Where a bank's rows came from: the image folder a bank was built from, row by row.

    source = ImageFolderSource("/data/imagenet/train")
    found = source.row(12345)      # SourceRow: path, class_index, synset, name (from a synset list)
    image = source.image(12345)    # uint8 (H, W, 3) via images.load_rgb: a bad file is an ImageError naming it
    source.check_rows(len(bank))   # the warning's text (also warned) when rows and files differ in number, else None

v2's `full` bank has one row per ImageNet training image (1,281,167), in the order of upstream's bank builder
(LINs-lab/GMem, datasets/construct_memory_bank.py): every entry of every folder directly inside the train folder
(os.listdir, with no filter on extensions, symlinked folders followed), the full paths sorted as strings. All files
of a class share the prefix "<class>/", so that order is: classes sorted by "<name>/" (ImageNet's synsets, all
"n" + 8 digits, sort the same by name), and each class's entries sorted by name. A row's class index is its
folder's place among the sorted folder names, as torchvision's ImageFolder numbers classes (0 = n01440764, tench).
Human-readable class names come from a synset list found in the folder or up to 4 folders above it
(LOC_synset_mapping.txt of the Kaggle download, Caffe's synset_words.txt, or words.txt), or `names_file`.

Listing 1.28M files takes seconds on a local disk and minutes on a network one, so only counts are kept: a small
JSON per folder under $GMEM_CACHE/sources (~40 KB for 1,000 classes: each class folder's count and modification
time), read back and trusted per class while the class folder's time is unchanged (adding or removing a file
changes it; a folder changed in the 2 s before it was counted is counted again, as its clock may not have moved).
A row's file comes from listing its one class folder (~1,300 entries); a listing whose length is not the count
(the folder changed since) makes the whole folder counted again.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..images import load_rgb
from ..safefiles import write_bytes_atomic
from ..values import as_whole

NAMES_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
NAMES_LEVELS = 4  # folders above the train folder searched: Kaggle's ILSVRC/Data/CLS-LOC/train is 4 below its list
LISTINGS_KEPT = 16  # class folders' sorted listings kept in memory (~1,300 names each)
CACHE_VERSION = 1
RACY_NS = 2_000_000_000  # class folders changed less than 2 s before they were counted are counted again next time


def default_cache_dir() -> Path:
    root = os.environ.get("GMEM_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "gmem-explore") / "sources"


@dataclass(frozen=True)
class SourceRow:
    row: int
    path: Path
    class_index: int  # place among the sorted class folder names (ImageFolder's label)
    synset: str  # the class folder's name
    name: str | None  # from the synset list, when one was found

    def caption(self) -> str:
        """'n01443537 · goldfish, Carassius auratus (class 1)'."""
        return f"{self.synset}{f' · {self.name}' if self.name else ''} (class {self.class_index})"


def find_names_file(folder: Path) -> Path | None:
    for place in [folder, *list(folder.parents)[:NAMES_LEVELS]]:
        for name in NAMES_FILES:
            if (place / name).is_file():
                return place / name
    return None


def read_names(path: Path) -> dict[str, str]:
    """{synset: name} from lines 'n01440764 tench, Tinca tinca' (a space or a tab after the synset)."""
    names = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2:
                names[parts[0]] = parts[1]
    return names


class ImageFolderSource:
    """An image folder of class folders, row by row in the order a bank built from it has (the module docstring).

    folder: the train folder (the one holding n01440764/ ...). names_file: a synset list, when none lies beside
    the folder. cache_dir: where the counts are kept (None: default_cache_dir(); False: not kept). progress: a
    tqdm bar while class folders are counted."""

    def __init__(self, folder, names_file=None, cache_dir=None, progress: bool = False):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "not there"
            raise FileNotFoundError(f"{folder} is {what}: give ImageNet's training folder, the one that holds a folder "
                                    f"per class (n01440764/, n01443537/, ...)")
        self.folder = folder.resolve()
        self.classes = sorted(e.name for e in os.scandir(self.folder) if e.is_dir())
        if not self.classes:
            raise ValueError(f"{self.folder} holds no class folders: give ImageNet's training folder, the one that "
                             f"holds a folder per class (n01440764/, n01443537/, ...), not a class folder itself")
        self.order = sorted(self.classes, key=lambda c: c + os.sep)  # the sorted full paths' order of classes
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        if names_file is not None and not Path(names_file).is_file():
            raise FileNotFoundError(f"no synset list at {names_file}: give a file of lines such as "
                                    f"'n01440764 tench, Tinca tinca' (ImageNet's LOC_synset_mapping.txt)")
        self.names_file = Path(names_file) if names_file is not None else find_names_file(self.folder)
        self.names = read_names(self.names_file) if self.names_file else {}
        self.cache_dir = (None if cache_dir is False else Path(cache_dir).expanduser() if cache_dir is not None
                          else default_cache_dir())
        self.progress = progress
        self._counts: list[int] | None = None  # per class, in self.order
        self._starts: list[int] = []  # the first row of each class, in self.order
        self._listings: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()
        self._warned: set[int] = set()

    def __repr__(self) -> str:
        counted = f", {len(self):,} files" if self._counts is not None else ""
        return f"ImageFolderSource({str(self.folder)!r}: {len(self.classes):,} classes{counted})"

    # ---- counting -------------------------------------------------------------------------------------------
    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]}.json"

    def _read_cache(self) -> dict:
        path = self._cache_path()
        try:
            kept = json.loads(path.read_text()) if path is not None and path.is_file() else {}
            if kept.get("version") == CACHE_VERSION and kept.get("folder") == str(self.folder):
                return {k: tuple(v) for k, v in kept["classes"].items()}
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            pass  # a damaged or foreign file: counted again, and rewritten
        return {}

    def _count(self) -> None:
        from tqdm.auto import tqdm

        kept, counts, fresh = self._read_cache(), [], {}
        for name in tqdm(self.order, desc="counting class folders", unit="class", disable=not self.progress):
            path = self.folder / name
            mtime = path.stat().st_mtime_ns
            known = kept.get(name)
            count = known[1] if known and known[0] == mtime else sum(1 for _ in os.scandir(path))
            # a folder changed within the last RACY_NS may change again within the same tick of its clock (ext4's
            # times move in jiffies): its count is kept as untrusted (time -1) and counted again next time
            fresh[name] = (mtime if time.time_ns() - mtime > RACY_NS else -1, count)
            counts.append(count)
        self._counts = counts
        self._starts = [0]
        for count in counts:
            self._starts.append(self._starts[-1] + count)
        path = self._cache_path()
        if path is not None and fresh != kept:
            try:
                write_bytes_atomic(path, json.dumps({"version": CACHE_VERSION, "folder": str(self.folder),
                                                     "classes": fresh}).encode())
            except OSError as e:
                warnings.warn(f"cannot keep the file counts of {self.folder} in {path} ({e}); they are counted "
                              f"again next time", stacklevel=3)

    def __len__(self) -> int:
        """Files in the folder (every entry of every class folder)."""
        with self._lock:
            if self._counts is None:
                self._count()
            return self._starts[-1]

    def check_rows(self, rows: int) -> str | None:
        """None when a bank of `rows` rows has one row per file here; else the mismatch in words (warned once)."""
        files = len(self)
        if rows == files:
            return None
        message = (f"the bank has {rows:,} rows but {self.folder} holds {files:,} files: rows may not line up with "
                   f"the files (v2's full bank has one row per ImageNet training image, 1,281,167, in the sorted "
                   f"order of their paths; another bank, or files added or missing, puts other images beside the "
                   f"rows)" + (f"; rows from {files:,} on have no file here" if rows > files else ""))
        if rows not in self._warned:
            self._warned.add(rows)
            warnings.warn(message, stacklevel=2)
        return message

    # ---- rows -----------------------------------------------------------------------------------------------
    def _listing(self, name: str) -> list[str]:
        listing = self._listings.get(name)
        if listing is None:
            listing = sorted(os.listdir(self.folder / name))
            self._listings[name] = listing
            while len(self._listings) > LISTINGS_KEPT:
                self._listings.popitem(last=False)
        self._listings.move_to_end(name)
        return listing

    def row(self, row) -> SourceRow:
        """The file of bank row `row` and its class. A row beyond the folder's files is an IndexError."""
        files = len(self)
        r = as_whole(row, 0)
        if r is None:
            raise ValueError(f"a row must be a whole number >= 0; got {row!r}")
        if r >= files:
            raise IndexError(f"row {r:,} has no source image: {self.folder} holds {files:,} files (rows 0 to "
                             f"{files - 1:,})")
        with self._lock:
            for attempt in range(2):
                i = bisect.bisect_right(self._starts, r) - 1
                name = self.order[i]
                listing = self._listing(name)
                if len(listing) == self._counts[i]:
                    break
                # the class folder changed since it was counted: count again (the rows after it move too)
                self._listings.clear()
                self._count()
                if r >= self._starts[-1]:
                    raise IndexError(f"row {r:,} has no source image: {self.folder} now holds "
                                     f"{self._starts[-1]:,} files")
            if r - self._starts[i] >= len(listing):
                raise RuntimeError(f"{self.folder / name} keeps changing while it is read; try again when it is not")
            file = listing[r - self._starts[i]]
        return SourceRow(r, self.folder / name / file, self.class_index[name], name, self.names.get(name))

    def image(self, row, max_side: int | None = None) -> torch.Tensor:
        """uint8 (H, W, 3) of the row's file (shrunk to at most `max_side` px a side when given); a file that is not
        a readable image is an images.ImageError naming it."""
        return load_rgb(self.row(row).path, max_side=max_side)
