"""How word importance looks: an HTML heat-map for notebooks and coloured text for a terminal."""

from __future__ import annotations

import html
from collections.abc import Sequence

# The colour of importance 1; importance 0 is white.
_HOT = (220, 38, 38)


def _shade(score: float) -> tuple[int, int, int]:
    """White at 0 to ``_HOT`` at 1 (clamped)."""
    t = min(max(score, 0.0), 1.0)
    return tuple(round(255 + (hot - 255) * t) for hot in _HOT)  # type: ignore[return-value]


def heat_map_html(words: Sequence[str], scores: Sequence[float], caption: str) -> str:
    """The words as ``<span>`` s whose background deepens with their score; all text escaped.

    Each span's tooltip (``title``) gives the score to three decimals.
    """
    spans = []
    for word, score in zip(words, scores, strict=True):
        red, green, blue = _shade(score)
        spans.append(
            f'<span style="background-color: rgb({red}, {green}, {blue}); color: #111; '
            f'padding: 1px 3px; border-radius: 3px" title="{score:.3f}">'
            f"{html.escape(word)}</span>"
        )
    return (
        '<div class="emovec-importance" style="line-height: 1.9; font-family: sans-serif">'
        f'<div style="font-size: smaller; color: #555">{html.escape(caption)}</div>'
        f"{' '.join(spans)}</div>"
    )


def heat_map_ansi(words: Sequence[str], scores: Sequence[float]) -> str:
    """The words on 24-bit ANSI backgrounds that deepen with their score, black text."""
    out = []
    for word, score in zip(words, scores, strict=True):
        red, green, blue = _shade(score)
        out.append(f"\x1b[38;2;0;0;0;48;2;{red};{green};{blue}m{word}\x1b[0m")
    return " ".join(out)
