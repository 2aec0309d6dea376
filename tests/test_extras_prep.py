"""Extras' options for preparing training pictures (A1111's "Split oversized images" and "Create flipped
copies"): where a long picture is cut, what each piece holds, the flipped copies, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.core.errors import InvalidField
from webui.core.extras import ExtrasRequest
from webui.engine import extras as extras_engine
from webui.engine import saving
from webui.engine.extras import split_boxes


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def bands(w: int, h: int) -> Image.Image:
    """Red, green and blue thirds along the long side, a white dot in the first third's corner (for the flips)."""
    im = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(im)
    tall = h > w
    for k, colour in enumerate([(220, 20, 20), (20, 200, 20), (20, 20, 220)]):
        box = (0, k * h // 3, w, (k + 1) * h // 3) if tall else (k * w // 3, 0, (k + 1) * w // 3, h)
        d.rectangle(box, fill=colour)
    d.rectangle((2, 2, 12, 12), fill=(255, 255, 255))
    return im


def test_split_boxes_cover_the_long_side_with_overlap():
    scaled, boxes = split_boxes(100, 300, 64, 64, 0.5, 0.2)
    assert scaled == (64, 192)
    assert boxes == [(0, 0, 64, 64), (0, 43, 64, 107), (0, 85, 64, 149), (0, 128, 64, 192)]
    scaled, boxes = split_boxes(300, 100, 64, 64, 0.5, 0.2)          # landscape: cut along
    assert scaled == (192, 64) and boxes[-1] == (128, 0, 192, 64)
    for a, b in zip(boxes, boxes[1:]):
        assert a[2] - b[0] >= 0.2 * 64                               # neighbours share at least 20 %
    assert split_boxes(100, 150, 64, 64, 0.5, 0.2) is None           # not long enough for the threshold
    assert split_boxes(100, 150, 64, 64, 0.7, 0.2) is not None       # ... unless it is raised
    assert split_boxes(64, 64, 64, 64, 1.0, 0.2) is None             # the target's own shape is never cut


def test_a_long_picture_becomes_target_sized_pieces_in_order_with_flips(engine, data_dir):
    src = bands(100, 300)
    req = ExtrasRequest(resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64, upscaler_1="Lanczos",
                        split_oversized=True, flipped_copies=["Horizontal"])
    res = extras_engine.extras(engine, req, [("long.png", src)], save=True)
    assert len(res.images) == 8 and all(im.size == (64, 64) for im in res.images)
    pieces, mirrors = res.images[0::2], res.images[1::2]
    whole = src.resize((64, 192), Image.Resampling.LANCZOS)
    for piece, box in zip(pieces, split_boxes(100, 300, 64, 64, 0.5, 0.2)[1]):
        assert np.abs(arr(piece) - arr(whole.crop(box))).max() <= 1
    red, blue = arr(pieces[0]).mean((0, 1)), arr(pieces[-1]).mean((0, 1))
    assert red[0] > 150 > red[2] and blue[2] > 150 > blue[0]          # top piece red, bottom piece blue
    for piece, mirror in zip(pieces, mirrors):
        assert np.array_equal(arr(mirror), arr(piece)[:, ::-1])
    assert "Postprocess split: 4" in res.infotexts[0]
    assert len(res.saved) == 8 and len(set(res.saved)) == 8
    _, chunks = saving.read_infotext(res.saved[0])
    assert "Postprocess split: 4" in str(chunks["extras"])


def test_flips_of_an_upscaled_picture(engine):
    src = bands(40, 30)
    req = ExtrasRequest(upscaling_resize=2, upscaler_1="Nearest", flipped_copies=["Vertical", "Both"])
    res = extras_engine.extras(engine, req, [("", src)], save=False)
    big = arr(res.images[0])
    assert res.images[0].size == (80, 60) and len(res.images) == 3
    assert np.array_equal(arr(res.images[1]), big[::-1])
    assert np.array_equal(arr(res.images[2]), big[::-1, ::-1])


@pytest.mark.parametrize("fields, name", [
    ({"split_oversized": True}, "split_oversized"),                        # needs "Scale to"
    ({"flipped_copies": ["Sideways"]}, "flipped_copies"),
    ({"resize_mode": 1, "split_overlap_ratio": 0.95}, "split_overlap_ratio"),
])
def test_bad_options_are_refused_before_any_work(engine, fields, name):
    with pytest.raises(InvalidField) as err:
        extras_engine.extras(engine, ExtrasRequest(upscaler_1="Lanczos", **fields), [("", bands(40, 30))],
                             save=False)
    assert err.value.field == name
