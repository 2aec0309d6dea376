"""The shapes checker must be right on drawn images before it judges the bundled model."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from tool_modules import load_tool

import shape_checker as sc

ROOT = Path(__file__).resolve().parents[1]


ds = load_tool("shapes_dataset")


def _draw(shape, colour, position, size="large", background="blue", blur=0.0, noise=0.0, seed=0):
    ax, ay = ds.ANCHORS[position]
    spec = ds.ShapeSpec(shape, colour, size, position, ax, ay, ds.RADIUS[size], ds.COLOURS[colour])
    img = ds.render(ds.COLOURS[background], [spec])
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    if noise:
        rng = np.random.default_rng(seed)
        img = np.clip(img.astype(np.float32) + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return img


def test_named_colours_name_themselves():
    for name, rgb in sc.NAMED_COLOURS.items():
        assert sc.name_colour(rgb) == name
    assert sc.NAMED_COLOURS == ds.COLOURS


@pytest.mark.parametrize("colour", ds.COLOUR_NAMES)
def test_every_colour_shape_position_on_clean_drawings(colour):
    background = "white" if colour != "white" else "black"
    for shape, position, size in itertools.product(ds.SHAPES, ds.POSITIONS, ds.SIZES):
        a = sc.analyse(_draw(shape, colour, position, size, background))
        got = (a.background, a.colour, a.shape, a.position)
        assert got == (background, colour, shape, position), (shape, position, size, a.as_dict())


def test_blurred_and_noisy_drawings():
    """Generated images are softer than drawings: blur (sigma 1.5) and noise must not change the verdict."""
    rng = np.random.default_rng(7)
    wrong = []
    n = 0
    for colour, shape, position, size in itertools.product(ds.COLOUR_NAMES, ds.SHAPES, ds.POSITIONS, ds.SIZES):
        background = ds.COLOUR_NAMES[int(rng.integers(8))]
        if background == colour:
            continue
        img = _draw(shape, colour, position, size, background, blur=1.5, noise=6.0, seed=n)
        a = sc.analyse(img)
        n += 1
        if (a.background, a.colour, a.shape, a.position) != (background, colour, shape, position):
            wrong.append(((background, colour, shape, position, size), a.as_dict()))
    print(f"checker on {n} blurred+noisy drawings: {n - len(wrong)} right")
    assert len(wrong) <= n // 100, wrong[:5]


def test_dataset_samples_single_shape():
    """Over many dataset samples (random jitter of place, size and colour) the checker agrees with the labels."""
    n = right = 0
    for i in range(600):
        s = ds.sample(i, seed=99)
        if len(s.shapes) != 1:
            continue
        sh = s.shapes[0]
        a = sc.analyse(s.image)
        n += 1
        right += (a.background, a.colour, a.shape, a.position) == (s.background, sh.colour, sh.shape, sh.position)
    print(f"checker on {n} dataset samples: {right} right")
    assert right == n


def test_largest_blob_is_the_one_analysed():
    big = ds.ShapeSpec("star", "yellow", "large", "left", 34, 64, 28, ds.COLOURS["yellow"])
    small = ds.ShapeSpec("circle", "red", "small", "right", 96, 64, 12, ds.COLOURS["red"])
    a = sc.analyse(ds.render(ds.COLOURS["purple"], [big, small]))
    assert (a.background, a.colour, a.shape, a.position) == ("purple", "yellow", "star", "left")


def test_plain_image_has_no_shape():
    img = np.full((128, 128, 3), ds.COLOURS["green"], np.uint8)
    a = sc.analyse(img)
    assert a.background == "green" and a.shape is None and a.colour is None and a.position is None


def test_pil_input_and_position_boundaries():
    from PIL import Image

    a = sc.analyse(Image.fromarray(_draw("square", "red", "top")))
    assert a.shape == "square" and a.position == "top"
    assert sc.position_of(64, 64, 128, 128) == "centre"
    assert sc.position_of(10, 60, 128, 128) == "left"
    assert sc.position_of(120, 70, 128, 128) == "right"
    assert sc.position_of(60, 5, 128, 128) == "top"
    assert sc.position_of(70, 125, 128, 128) == "bottom"


def test_edge_iou():
    # small circles: two large ones on the left and right touch in the middle of a 128-px image
    img = _draw("circle", "red", "left", size="small", background="white")
    e = sc.edge_map(img)
    assert e.sum() > 50
    assert sc.edge_iou(e, e) == pytest.approx(1.0)
    moved = sc.edge_map(_draw("circle", "red", "right", size="small", background="white"))
    assert sc.edge_iou(e, moved) < 0.05
    shifted = np.roll(e, 1, axis=1)
    assert sc.edge_iou(e, shifted) > 0.7
    assert sc.edge_iou(np.zeros_like(e), np.zeros_like(e)) == 0.0
