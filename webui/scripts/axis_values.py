"""Parsing X/Y/Z plot axis values (pure): CSV with quotes, and A1111's range forms.

    "1, 2, 5"          three values              "1-5"          1, 2, 3, 4, 5
    "1-10 (+3)"        1, 4, 7, 10               "10-1 (-3)"    10, 7, 4, 1
    "1-10 [4]"         4 values spread evenly: 1, 4, 7, 10 (whole numbers are truncated, as A1111 does)
    "0.5-1.5 (+0.25)"  0.5, 0.75, 1, 1.25, 1.5   "1-2 [3]"      1.0, 1.5, 2.0 (float axes)
    '"a, b", c'        two values: "a, b" and "c"

Errors are ValueError with a message naming the bad item; the script turns them into InvalidField.
"""
from __future__ import annotations

import csv
import io
import math
import re
from itertools import permutations

_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
_INT = r"[+-]?\s*\d+"
RANGE_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(\s*([+-]?\s*\d+)\s*\))?\s*")
COUNT_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]\s*")
RANGE_FLOAT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(\s*([+-]?\s*\d+(?:\.\d*)?)\s*\))?\s*")
COUNT_FLOAT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*\[\s*(\d+)\s*\]\s*")
MAX_RANGE = 10_000


def split_csv(text: str) -> list[str]:
    """The comma-separated items of ``text`` (quotes group commas), stripped; '' -> []."""
    if not str(text or "").strip():
        return []
    try:
        rows = list(csv.reader(io.StringIO(str(text)), skipinitialspace=True))
    except csv.Error as e:
        raise ValueError(f"cannot read the values as CSV: {e}") from None
    return [item.strip() for row in rows for item in row]


def to_csv(items: list) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(items)
    return out.getvalue().strip()


def _num(text: str) -> float:
    return float(text.replace(" ", ""))


def _count_values(start: float, end: float, count: int) -> list[float]:
    if count < 1:
        raise ValueError("a count in [N] must be 1 or more")
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def _step_values(start: float, end: float, step: float, item: str) -> list[float]:
    if step == 0:
        raise ValueError(f"{item!r}: the step is zero")
    n = math.floor((end - start) / step + 1e-9) + 1
    if n < 1:
        raise ValueError(f"{item!r}: a step of {step:g} never goes from {start:g} to {end:g}")
    if n > MAX_RANGE:
        raise ValueError(f"{item!r}: the range has {n} values (at most {MAX_RANGE})")
    return [start + i * step for i in range(n)]


def parse_ints(items: list[str]) -> list[int]:
    out: list[int] = []
    for item in items:
        if m := COUNT_INT.fullmatch(item):
            out += [int(v) for v in _count_values(_num(m[1]), _num(m[2]), int(m[3]))]
        elif m := RANGE_INT.fullmatch(item):
            start, end = int(_num(m[1])), int(_num(m[2]))
            step = int(_num(m[3])) if m[3] else (1 if end >= start else -1)
            out += [int(v) for v in _step_values(start, end, step, item)]
        else:
            try:
                out.append(int(item))
            except ValueError:
                raise ValueError(f"{item!r} is not a whole number or a range such as 1-5, 1-10 (+2), "
                                 "1-10 [5]") from None
    return out


def parse_floats(items: list[str]) -> list[float]:
    out: list[float] = []
    for item in items:
        if m := COUNT_FLOAT.fullmatch(item):
            out += _count_values(_num(m[1]), _num(m[2]), int(m[3]))
        elif m := RANGE_FLOAT.fullmatch(item):
            start, end = _num(m[1]), _num(m[2])
            step = _num(m[3]) if m[3] else (1.0 if end >= start else -1.0)
            out += _step_values(start, end, step, item)
        else:
            try:
                out.append(float(item))
            except ValueError:
                raise ValueError(f"{item!r} is not a number or a range such as 0.5-1.5 (+0.25), 1-2 [5]") from None
    return [round(v, 8) for v in out]


def parse_size(item: str) -> tuple[int, int]:
    """"512x768" -> (512, 768); "512" -> (512, 512)."""
    w, sep, h = item.lower().replace(" ", "").partition("x")
    try:
        return (int(w), int(h)) if sep else (int(w), int(w))
    except ValueError:
        raise ValueError(f"{item!r} is not a size such as 512x768") from None


def parse_values(kind: str, text: str | None, dropdown: list | None = None) -> list:
    """The values of one axis: ``kind`` is int, float, str, size or permutations; ``dropdown`` (the
    multiselect of axes with choices) wins over ``text`` when it is not empty."""
    items = [str(x).strip() for x in dropdown] if dropdown else split_csv(text or "")
    if not items:
        raise ValueError("no values given")
    if kind == "int":
        return parse_ints(items)
    if kind == "float":
        return parse_floats(items)
    if kind == "size":
        return [parse_size(i) for i in items]
    if kind == "permutations":
        return [list(p) for p in permutations(items)]
    return items
