"""Grid layout math (pure): how many rows and columns a grid of N images gets; legend text layout."""

from __future__ import annotations

import math
from dataclasses import dataclass


def grid_shape(count: int, rows: int | None = None, *, batch_size: int = 1,
               prevent_empty_spots: bool = False) -> tuple[int, int]:
    """(rows, cols) for ``count`` images, following A1111's "Grid row count" setting (n_rows).

    ``rows`` > 0: that many rows. ``rows`` == 0: one row per image of a batch (``batch_size`` rows).
    ``rows`` None or < 0 (A1111's default, -1): round(sqrt(count)) rows, or with ``prevent_empty_spots``
    the largest row count <= sqrt(count) that divides ``count``. Rows never exceed ``count``;
    cols = ceil(count / rows).
    """
    if count < 1:
        raise ValueError("a grid needs at least one image")
    if rows is not None and rows > 0:
        n_rows = rows
    elif rows == 0:
        n_rows = max(1, batch_size)
    elif prevent_empty_spots:
        n_rows = math.isqrt(count)
        while count % n_rows:
            n_rows -= 1
    else:
        n_rows = max(1, round(math.sqrt(count)))
    n_rows = min(n_rows, count)
    return n_rows, math.ceil(count / n_rows)


@dataclass(frozen=True)
class GridAnnotation:
    """One line of a grid's header or row label; inactive ones are drawn struck through (prompt matrix)."""

    text: str = ""
    is_active: bool = True


def label_font_size(cell_width: int, cell_height: int) -> int:
    """Legend font size: A1111's (width + height) / 25, but never below 12 px so small cells stay readable."""
    return max(12, (cell_width + cell_height) // 25)


def wrap_text(text: str, max_width: int, measure) -> list[str]:
    """Words of ``text`` in lines no wider than ``max_width`` (by ``measure(str) -> px``); a word wider than
    that gets a line of its own."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and measure(candidate) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines
