"""X/Y/Z axis values: CSV with quotes and A1111's range forms (pure, no model)."""
from __future__ import annotations

import pytest

from webui.scripts.axis_values import parse_values, split_csv


@pytest.mark.parametrize("text, kind, expected", [
    ("1, 2, 5", "int", [1, 2, 5]),
    ("1-5", "int", [1, 2, 3, 4, 5]),
    ("1-10 (+2)", "int", [1, 3, 5, 7, 9]),
    ("1-10 (+3)", "int", [1, 4, 7, 10]),
    ("10-1 (-3)", "int", [10, 7, 4, 1]),
    ("5-1", "int", [5, 4, 3, 2, 1]),
    ("1-10 [5]", "int", [1, 3, 5, 7, 10]),
    ("1-10 [4]", "int", [1, 4, 7, 10]),
    ("-1, -5", "int", [-1, -5]),
    ("-5--3", "int", [-5, -4, -3]),
    ("1-3, 7, 10-12 (+2)", "int", [1, 2, 3, 7, 10, 12]),
    ("0.5-1.5 (+0.25)", "float", [0.5, 0.75, 1.0, 1.25, 1.5]),
    ("1-2 [5]", "float", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("1-3", "float", [1.0, 2.0, 3.0]),
    ("7, 7.5, 1e1", "float", [7.0, 7.5, 10.0]),
    ("0.1-0.3 (+0.1)", "float", [0.1, 0.2, 0.3]),
    ('"a, b", c', "str", ["a, b", "c"]),
    ("cat,  dog ,bird", "str", ["cat", "dog", "bird"]),
    ("512x768, 640", "size", [(512, 768), (640, 640)]),
    ("a, b, c", "permutations", [["a", "b", "c"], ["a", "c", "b"], ["b", "a", "c"], ["b", "c", "a"],
                                 ["c", "a", "b"], ["c", "b", "a"]]),
])
def test_ranges_and_lists(text, kind, expected):
    assert parse_values(kind, text) == expected


def test_dropdown_wins_over_text():
    assert parse_values("str", "Euler", ["DDIM", "Heun"]) == ["DDIM", "Heun"]
    assert parse_values("str", "Euler", []) == ["Euler"]


@pytest.mark.parametrize("text, kind, words", [
    ("1-5 (+0)", "int", "step is zero"),
    ("1.0-2.0 (+0)", "float", "step is zero"),
    ("1-10 (-2)", "int", "never goes"),
    ("1-10 [0]", "int", "1 or more"),
    ("abc", "int", "'abc' is not a whole number"),
    ("1.5", "int", "'1.5' is not a whole number"),
    ("seven", "float", "'seven' is not a number"),
    ("", "int", "no values"),
    ("1,,2", "int", "'' is not a whole number"),
    ("axb", "size", "not a size"),
    ("1-100000", "int", "at most"),
])
def test_bad_values_name_the_item(text, kind, words):
    with pytest.raises(ValueError) as e:
        parse_values(kind, text)
    assert words in str(e.value)


def test_csv_quotes():
    assert split_csv('"x, y", "z"') == ["x, y", "z"]
    assert split_csv("  ") == []
