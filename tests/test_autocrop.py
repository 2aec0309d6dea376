"""Extras' "Auto focal point crop" and "Auto-sized crop" (webui/engine/autocrop.py): where the focal point lands on
pictures whose interesting part is known, the sizes the auto-sized crop picks, and both through the Extras job."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.core.errors import InvalidField
from webui.core.extras import ExtrasRequest
from webui.engine import autocrop
from webui.engine import extras as extras_engine


def busy_right(w: int = 256, h: int = 128) -> Image.Image:
    """Black, with a checkerboard of white squares in the right quarter (corners and entropy there)."""
    im = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(im)
    for y in range(32, 96, 8):
        for x in range(196, 244, 8):
            if (x // 8 + y // 8) % 2:
                d.rectangle((x, y, x + 7, y + 7), fill=(255, 255, 255))
    return im


def patch_share(im: Image.Image) -> float:
    return float((np.asarray(im.convert("L")) > 128).mean())


@pytest.mark.parametrize("weights", [autocrop.FocalWeights(0, 0, 1), autocrop.FocalWeights(0, 1, 0),
                                     autocrop.FocalWeights()])
def test_the_crop_goes_to_where_the_picture_is_busy(weights):
    src = busy_right()
    out, debug = autocrop.focal_crop(src, 128, 128, weights)
    whole = patch_share(src.crop((128, 0, 256, 128)))
    print(f"{weights}: patch share in the crop {patch_share(out):.2f} (right half {whole:.2f})")
    assert out.size == (128, 128) and debug is None
    assert patch_share(out) == pytest.approx(whole, abs=0.02)   # the whole patch is in the crop
    mirrored, _ = autocrop.focal_crop(src.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 128, 128, weights)
    assert patch_share(mirrored) == pytest.approx(whole, abs=0.02)   # on the left now: followed there


def test_nothing_found_crops_the_top_left_and_the_debug_picture_shows_the_crop():
    flat = Image.new("RGB", (200, 100), (90, 90, 90))
    out, _ = autocrop.focal_crop(flat, 100, 100, autocrop.FocalWeights(0, 0, 0))
    assert out.size == (100, 100)
    _, debug = autocrop.focal_crop(busy_right(), 128, 128, autocrop.FocalWeights(0, 0, 1), debug=True)
    px = np.asarray(debug)
    green = (px[..., 1] == 255) & (px[..., 0] == 0) & (px[..., 2] == 0)
    assert debug.size == (256, 128) and green[:, 127:129].any()   # the crop's frame, from x 128


def test_the_scale_before_the_crop_covers_the_target():
    """A landscape picture is scaled to the target's height, a portrait one to its width."""
    out, debug = autocrop.focal_crop(busy_right(512, 256), 128, 128, autocrop.FocalWeights(0, 0, 1), debug=True)
    assert debug.size == (256, 128) and out.size == (128, 128)
    tall = busy_right(256, 128).transpose(Image.Transpose.ROTATE_90)   # 128 x 256, the patch near the top
    out, debug = autocrop.focal_crop(tall, 64, 96, autocrop.FocalWeights(0, 1, 1), debug=True)
    assert debug.size == (64, 128) and out.size == (64, 96)
    assert patch_share(out) > patch_share(tall.resize((64, 128)).crop((0, 32, 64, 128)))


def test_autosized_crop_picks_sizes_as_a1111():
    # 1000 x 560 (1.786): the largest area within 640^2 and 10 % of the shape, or the closest shape
    assert autocrop.autosized_size(1000, 560, 384, 768, 64 * 64, 640 * 640, "Maximize area", 0.1) == (768, 448)
    assert autocrop.autosized_size(1000, 560, 384, 768, 64 * 64, 640 * 640, "Minimize error", 0.1) == (704, 384)
    assert autocrop.autosized_size(100, 1000, 384, 768, 64 * 64, 640 * 640, "Maximize area", 0.1) is None
    cropped = autocrop.centre_crop(Image.new("RGB", (1000, 560)), 768, 448)
    assert cropped.size == (768, 448)


def test_extras_job_applies_the_crops_then_the_flips(engine):
    req = ExtrasRequest(resize_mode=1, upscaling_resize_w=128, upscaling_resize_h=128, upscaling_crop=False,
                        upscaler_1="Lanczos", focal_crop=True, focal_crop_debug=True,
                        flipped_copies=["Horizontal"])
    res = extras_engine.extras(engine, req, [("busy.png", busy_right())], save=False)
    crop, crop_flip, debug, debug_flip = res.images
    assert crop.size == (128, 128) and debug.size == (256, 128)
    assert patch_share(crop) == pytest.approx(24 * 64 / 128 ** 2, abs=0.01)   # the whole patch (half white)
    assert np.array_equal(np.asarray(crop_flip), np.asarray(crop)[:, ::-1])
    auto = ExtrasRequest(upscaling_resize=1, upscaler_1="None", autosized_crop=True)
    res = extras_engine.extras(engine, auto, [("wide.png", Image.new("RGB", (1000, 560), (10, 20, 30)))],
                               save=False)
    assert [im.size for im in res.images] == [(768, 448)]
    with pytest.raises(InvalidField) as err:
        extras_engine.extras(engine, ExtrasRequest(upscaler_1="None", autosized_crop=True,
                                                   autosized_crop_objective="Biggest"),
                             [("", busy_right())], save=False)
    assert err.value.field == "autosized_crop_objective"


def test_entropy_finds_the_detail_on_flat_grey_too():
    """The studio's entropy is the greyscale window's (Shannon): flat grey is not busy. (A1111's, over a dithered
    1-bit picture, reads flat grey as noise.)"""
    src = busy_right()
    grey = Image.new("RGB", src.size, (128, 128, 128))
    grey.paste(src.crop((192, 28, 248, 100)), (192, 28))
    out, _ = autocrop.focal_crop(grey, 128, 128, autocrop.FocalWeights(0, 1, 0))
    assert patch_share(out) == pytest.approx(patch_share(grey.crop((128, 0, 256, 128))), abs=0.01)
