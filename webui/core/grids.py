"""Grid layout math (pure): how many rows and columns a grid of N images gets."""

from __future__ import annotations

import math


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
