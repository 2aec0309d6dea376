"""SD upscale (tiled upscaling): sizes, seams, denoising 0 = plain upscale, bounded tiles, the Ultimate options,
the img2img script "SD upscale" through the Script API and the HTTP API, and bad input."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from webui.core.errors import InvalidField
from webui.core.request import Img2ImgRequest
from webui.engine import tiled_upscale as tiled
from webui.scripts import default_runner

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def picture(w=48, h=40) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 / w, y * 255 / h, 128 + 0 * x], -1).astype(np.uint8)
    im = Image.fromarray(a)
    ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(220, 40, 40))
    return im


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def request(**kw) -> Img2ImgRequest:
    base = dict(prompt="a red circle", steps=4, width=64, height=64, seed=3, denoising_strength=0.5,
                override_settings=CKPT)
    return Img2ImgRequest(**{**base, **kw})


def step_at(a: np.ndarray, x: int, axis: int, k: int = 3) -> float:
    """The mean jump of the k-px local mean across the line before column (axis 1) or row (axis 0) ``x``: a seam
    is a jump of the local mean; texture averages out."""
    if axis == 1:
        return float(np.abs(a[:, x:x + k].mean(1) - a[:, x - k:x].mean(1)).mean())
    return float(np.abs(a[x:x + k].mean(0) - a[x - k:x].mean(0)).mean())


def seam_report(image: Image.Image, plan: tiled.TiledPlan) -> tuple[float, float]:
    """(the largest jump on any line where a tile starts or ends, the 90th percentile of jumps elsewhere)."""
    a = arr(image).mean(-1)
    lines = {1: set(), 0: set()}
    for axis, starts, size, length in ((1, plan.xs, plan.tile_w, image.width), (0, plan.ys, plan.tile_h, image.height)):
        for s in starts:
            for edge in (s, s + size):
                if 3 <= edge <= length - 3:
                    lines[axis].add(edge)
    seams = [step_at(a, x, axis) for axis, xs in lines.items() for x in xs]
    other = [step_at(a, x, axis) for axis, length in ((1, image.width), (0, image.height))
             for x in range(3, length - 3) if all(abs(x - s) > 4 for s in lines[axis])]
    return max(seams), float(np.percentile(other, 90))


def offset_redraw(calls: list):
    """A redraw whose tiles come back brighter or darker by seed (what a real model does to a tile's overall
    tone, exaggerated), recording each call's size: the blending alone must hide the difference."""
    def redraw(tile, w, h, seed, denoise):
        calls.append((tile.size, (w, h), seed, denoise))
        shift = 45.0 if seed % 2 else -45.0
        return Image.fromarray(np.clip(arr(tile) + shift, 0, 255).astype(np.uint8))
    return redraw


# -- the tiling and blending (engine/tiled_upscale.py) ------------------------------------------------------------
def test_blending_hides_tile_offsets_that_a_hard_paste_shows():
    big = picture(48, 48).resize((192, 192), Image.Resampling.LANCZOS)
    hard = tiled.plan_tiles(192, 192, 64, 64, tiled.TiledUpscaleOptions(overlap=0))
    assert hard.xs == [0, 64, 128]
    calls: list = []
    out = tiled.tiled_redraw(big, hard, 0.5, 1, offset_redraw(calls))
    seam, elsewhere = seam_report(out.image, hard)
    assert seam > 5 * elsewhere, "the control: a hard paste of offset tiles must show seams"
    for order in ("Linear", "Chess"):
        soft = tiled.plan_tiles(192, 192, 64, 64, tiled.TiledUpscaleOptions(overlap=32, redraw=order))
        out = tiled.tiled_redraw(big, soft, 0.5, 1, offset_redraw(calls))
        seam, elsewhere = seam_report(out.image, soft)
        assert seam <= 1.5 * elsewhere + 1.0, (order, seam, elsewhere)
    # every redraw saw at most one tile: memory is bounded by the tile
    assert all(size[0] <= 64 and size[1] <= 64 and gen == (64, 64) for size, gen, _, _ in calls)


def test_seams_fix_passes_soften_hard_seams():
    """Hard seams (no overlap) and a seams pass whose redraw smooths what it is given (as repainting at a low
    denoise does): the passes must land on the seams to take them away."""
    big = picture(48, 48).resize((128, 128), Image.Resampling.LANCZOS)
    calls: list = []
    offset = offset_redraw(calls)

    def redraw(tile, w, h, seed, denoise):
        if denoise != 0.3:
            return offset(tile, w, h, seed, denoise)
        calls.append((tile.size, (w, h), seed, denoise))
        return tile.filter(ImageFilter.GaussianBlur(6))

    results, counts = {}, {}
    for fix in tiled.SEAMS_FIX_MODES:
        o = tiled.TiledUpscaleOptions(overlap=0, seams_fix=fix, seams_fix_denoise=0.3, seams_fix_padding=8)
        plan = tiled.plan_tiles(128, 128, 64, 64, o)
        calls.clear()
        out = tiled.tiled_redraw(big, plan, 0.5, 0, redraw)
        results[fix], counts[fix] = seam_report(out.image, plan)[0], len(calls)
        assert [c[3] for c in calls[:4]] == [0.5] * 4 and all(c[3] == 0.3 for c in calls[4:])
        assert all(gen[0] <= 64 and gen[1] <= 64 for _, gen, _, _ in calls)
    assert counts == {"None": 4, "Band pass": 8, "Half tile offset pass": 8,
                      "Half tile offset pass + intersections": 9}
    assert results["None"] > 40
    for fix in tiled.SEAMS_FIX_MODES[1:]:
        assert results[fix] < 0.5 * results["None"], (fix, results)


def test_chess_order_and_seeds_count_up():
    plan = tiled.plan_tiles(192, 128, 64, 64, tiled.TiledUpscaleOptions(overlap=0, redraw="Chess"))
    assert plan.main[:3] == [(0, 0), (0, 2), (1, 1)] and len(plan.main) == 6
    calls: list = []
    tiled.tiled_redraw(Image.new("RGB", (192, 128)), plan, 0.4, 100, offset_redraw(calls))
    assert [c[2] for c in calls] == list(range(100, 106))
    none = tiled.plan_tiles(192, 128, 64, 64, tiled.TiledUpscaleOptions(redraw="None"))
    calls.clear()
    out = tiled.tiled_redraw(Image.new("RGB", (192, 128), "red"), none, 0.4, 0, offset_redraw(calls))
    assert calls == [] and out.runs == 0


def test_padding_gives_context_within_the_tile_size():
    o = tiled.TiledUpscaleOptions(overlap=16, padding=24, mask_blur=4)
    plan = tiled.plan_tiles(160, 96, 64, 64, o)
    big = Image.new("RGB", (160, 96), (0, 0, 200))
    ImageDraw.Draw(big).rectangle((70, 0, 79, 95), fill=(0, 255, 0))    # right of the first tile, within padding
    seen: list = []
    calls: list = []
    offset = offset_redraw(calls)

    def redraw(tile, w, h, seed, denoise):
        seen.append(arr(tile))
        return offset(tile, w, h, seed, denoise)

    out = tiled.tiled_redraw(big, plan, 0.5, 0, redraw)
    assert out.image.size == (160, 96)
    assert seen[0][..., 1].max() > 200, "the first tile's crop should reach the green band through its padding"
    assert all(gen[0] <= 64 and gen[1] <= 64 and size[0] <= 64 for size, gen, _, _ in calls)
    no_pad = tiled.plan_tiles(160, 96, 64, 64, tiled.TiledUpscaleOptions(overlap=16))
    seen.clear()
    tiled.tiled_redraw(big, no_pad, 0.5, 0, redraw)
    assert seen[0][..., 1].max() < 50


# -- through the engine (tiny model, 64x64 tiles) -----------------------------------------------------------------
def test_sd_upscale_size_seams_and_infotext(engine):
    src = picture(48, 40)
    o = tiled.TiledUpscaleOptions(scale=2, upscaler="Lanczos", overlap=32)
    res = tiled.sd_upscale(engine, request(), src, o, save=False)
    out = res.images[0]
    assert out.size == (96, 80)
    plan = tiled.plan_tiles(96, 80, 64, 64, o)
    assert len(plan.main) == 4
    seam, elsewhere = seam_report(out, plan)
    assert seam <= 1.5 * elsewhere + 1.0, (seam, elsewhere)
    text = res.infotexts[0]
    assert "SD upscale overlap: 32" in text and "SD upscale upscaler: Lanczos" in text
    assert "Size: 64x64" in text and "Denoising strength: 0.5" in text and "Seed: 3" in text
    # the tiles were really redrawn: the result is not the plain upscale
    assert np.abs(arr(out) - arr(src.resize((96, 80), Image.Resampling.LANCZOS))).mean() > 2


def test_denoising_zero_with_lanczos_is_a_plain_lanczos_upscale(engine):
    src = picture(40, 36)
    res = tiled.sd_upscale(engine, request(denoising_strength=0.0), src,
                           tiled.TiledUpscaleOptions(scale=2.5, upscaler="Lanczos", overlap=16), save=False)
    assert np.array_equal(arr(res.images[0]), arr(src.resize((100, 90), Image.Resampling.LANCZOS)))
    assert any("not redrawn" in n for n in res.notes)


def test_saved_like_an_img2img_sample(engine, data_dir):
    src = picture(32, 32)
    res = tiled.sd_upscale(engine, request(denoising_strength=0.0), src,
                           tiled.TiledUpscaleOptions(scale=2, upscaler="Nearest", overlap=16), save=True)
    assert len(res.saved) == 1 and res.saved[0].is_file() and "img2img-images" in str(res.saved[0])
    with Image.open(res.saved[0]) as saved:
        assert saved.size == (64, 64) and "SD upscale upscaler: Nearest" in saved.text["parameters"]


@pytest.mark.parametrize("options,kw,field,words", [
    ({"upscaler": "Superres 9000"}, {}, "upscaler", "valid: None, Lanczos, Nearest"),
    ({"scale": 400}, {}, "scale_factor", "between 1 and 8"),
    ({"scale": 8}, {}, "scale_factor", "upscale_max_side"),
    ({"overlap": 64}, {}, "overlap", "less than the tile size"),
    ({"redraw": "Spiral"}, {}, "redraw", "Linear, Chess, None"),
    ({"seams_fix": "Glue"}, {}, "seams_fix", "Band pass"),
    ({"tile_width": 60}, {}, "tile_width", "multiple of 8"),
    ({}, {"denoising_strength": 3}, "denoising_strength", "between 0 and 1"),
])
def test_bad_input_fails_before_any_work(engine, options, kw, field, words):
    engine.settings.update({"upscale_max_side": 256}, save=False)
    try:
        with pytest.raises(InvalidField) as e:
            tiled.submit_sd_upscale(engine, request(**kw), picture(48, 40),
                                    tiled.TiledUpscaleOptions(**{"overlap": 16, **options}))
    finally:
        engine.settings.update({"upscale_max_side": 8192}, save=False)
    assert e.value.field == field and words in str(e.value)


# -- the img2img script and the API -------------------------------------------------------------------------------
def test_script_through_the_runner_equals_the_engine_function(engine):
    runner = default_runner(engine)
    assert "sd upscale" in runner.api_scripts()["img2img"]
    src = picture(32, 32)
    req = request(script_name="sd upscale", script_args=["", 0, "Lanczos", 2])
    via_script = runner.run(req, [src], save=False)
    direct = tiled.sd_upscale(engine, request(), src, tiled.TiledUpscaleOptions(scale=2, upscaler="Lanczos",
                                                                               overlap=0), save=False)
    assert via_script.images[0].size == (64, 64)
    assert np.array_equal(arr(via_script.images[0]), arr(direct.images[0]))
    assert "SD upscale upscaler: Lanczos" in via_script.infotexts[0]
    by_index = runner.run(request(script_name="SD upscale", script_args=["", 0, 1, 2], denoising_strength=0),
                          [src], save=False)
    assert np.array_equal(arr(by_index.images[0]), arr(src.resize((64, 64), Image.Resampling.LANCZOS)))


def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_api_img2img_with_script_name(server):
    body = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.4,
            "init_images": [b64(picture(40, 32))], "script_name": "SD upscale", "script_args": ["", 16, "Nearest", 2],
            "override_settings": CKPT}
    r = httpx.post(server + "/sdapi/v1/img2img", json=body, timeout=600)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert out.size == (80, 64)
    bad = httpx.post(server + "/sdapi/v1/img2img", json={**body, "script_args": ["", 16, "Superres", 2]}, timeout=60)
    assert bad.status_code == 422 and "Lanczos" in bad.json()["detail"]
    big = httpx.post(server + "/sdapi/v1/img2img", json={**body, "script_args": ["", 16, 99, 2]}, timeout=60)
    assert big.status_code == 422 and "out of range" in big.json()["detail"]
