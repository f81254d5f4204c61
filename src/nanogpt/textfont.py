"""Text in pictures: a font that draws every character of the labels, or a readable escape.

Token labels can be Japanese, emoji or any other script. matplotlib's default font covers Latin,
Greek and Cyrillic; for anything else it draws empty boxes and warns once per missing glyph.
So, decided once for every picture: use the default font if it has every character, else the
first installed font that has them all (Debian: ``apt-get install fonts-noto-cjk`` brings CJK),
else the default font with each character it lacks written as ``\\uXXXX``.
"""

from __future__ import annotations

import functools
from typing import Sequence


@functools.lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # an unreadable font file: it covers nothing
        return frozenset()


def _fonts() -> list[tuple[str, str]]:
    """(family, file) of the default font first, then every other installed font."""
    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())
    # "Last Resort" fonts map every code point to a box showing its number: they cover nothing
    others = sorted({(f.name, f.fname) for f in font_manager.fontManager.ttflist
                     if f.fname != default and "last resort" not in f.name.lower()})
    return [(font_manager.FontProperties(fname=default).get_name(), default), *others]


def _escape(text: str, covered: frozenset[int]) -> str:
    return "".join(c if ord(c) in covered or c.isspace() else f"\\u{ord(c):04x}" for c in text)


def readable(labels: Sequence[str]) -> tuple[list[str], str]:
    """``labels`` as they can be drawn, and the font family to draw them with."""
    needed = {ord(c) for text in labels for c in text if not c.isspace()}
    fonts = _fonts()
    for family, path in fonts:
        if needed <= _charmap(path):
            return list(labels), family
    family, path = fonts[0]
    return [_escape(text, _charmap(path)) for text in labels], family
