"""X/Y/Z plot on tiny random checkpoints: cells equal single runs, the grid is labelled and sized right, Prompt
S/R substitutes as A1111 does, checkpoints load once each, bad input fails before any work, interrupt stops
the whole plot, and the API's script_name / script_args reach it."""
from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from webui.core import infotext
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest
from webui.extensions.api import AlwaysVisible, Script
from webui.extensions.runner import ScriptRunner
from webui.scripts import builtin_registry

SD1 = "tiny-sd1.safetensors"
CKPT = {"sd_model_checkpoint": SD1}
XYZ = "X/Y/Z plot"


class CheckpointOrder(Script):
    """Always-on: records which checkpoint each run asked for, in order."""

    seen: list = []

    def title(self):
        return "checkpoint order"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, p):
        self.seen.append(p.override_settings.get("sd_model_checkpoint"))


@pytest.fixture(scope="module")
def runner(engine):
    registry = builtin_registry()
    registry.register(CheckpointOrder)
    return ScriptRunner(engine, registry)


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", negative_prompt="blurry red", steps=3, width=64, height=64, seed=100,
                cfg_scale=7.0, override_settings=dict(CKPT))
    return GenerationRequest(**{**base, **kw})


def xyz_args(x_type, x_values, y_type="Nothing", y_values="", z_type="Nothing", z_values="", **opts):
    a = dict(draw_legend=True, include_lone_images=True, include_sub_grids=False, no_fixed_seeds=False,
             vary_seeds_x=False, vary_seeds_y=False, vary_seeds_z=False, margin_size=0, csv_mode=False)
    a.update(opts)
    return [x_type, x_values, [], y_type, y_values, [], z_type, z_values, [], *a.values()]


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_seed_by_cfg_cells_equal_single_runs_and_grid_is_labelled(engine, runner):
    res = runner.run(req(script_name="x/y/z plot", script_args=xyz_args("Seed", "100-102", "CFG Scale", "3, 9")),
                     save=False)
    grid, cells = res.images[0], res.images[1:]
    assert len(cells) == 6 and res.index_of_first_image == 1
    order = [(s, c) for c in (3.0, 9.0) for s in (100, 101, 102)]          # x fastest, then y
    for (seed, cfg), cell, text in zip(order, cells, res.infotexts[1:]):
        single = engine.txt2img(req(seed=seed, cfg_scale=cfg), save=False).images[0]
        assert np.array_equal(arr(cell), arr(single)), (seed, cfg)
        p = infotext.parse_infotext(text)
        assert p["Seed"] == str(seed) and float(p["CFG scale"]) == cfg    # each cell keeps its own infotext
    # 3 columns x 2 rows of 64 px cells below a header band and right of a label column
    pad_left, pad_top = grid.width - 3 * 64, grid.height - 2 * 64
    assert pad_left >= 48 and pad_top >= 16
    g = arr(grid)
    for i, cell in enumerate(cells):
        x, y = pad_left + (i % 3) * 64, pad_top + (i // 3) * 64
        assert np.array_equal(g[y:y + 64, x:x + 64], arr(cell))
    bands = [g[:pad_top, pad_left + c * 64:pad_left + (c + 1) * 64] for c in range(3)]
    for band in bands:
        assert (band < 128).any(), "header text is drawn"
    assert not np.array_equal(bands[0], bands[1]) and not np.array_equal(bands[1], bands[2])
    rows = [g[pad_top + r * 64:pad_top + (r + 1) * 64, :pad_left] for r in range(2)]
    assert all((r < 128).any() for r in rows) and not np.array_equal(rows[0], rows[1])
    # the grid carries the first cell's infotext, plus A1111's plot keys
    first = infotext.parse_infotext(res.infotexts[1])
    gp = infotext.parse_infotext(res.infotexts[0])
    assert {k: gp.get(k) for k in first} == first
    assert gp["Script"] == XYZ and gp["X Type"] == "Seed" and gp["Y Values"] == "3, 9"
    assert gp["Fixed X Values"] == "100, 101, 102"


def test_prompt_sr_substitutes_first_value_everywhere(runner):
    res = runner.run(req(steps=1, script_name=XYZ, script_args=xyz_args("Prompt S/R", "red, blue, green")),
                     save=False)
    texts = [infotext.parse_infotext(t) for t in res.infotexts[1:]]
    assert [t["Prompt"] for t in texts] == ["a red circle", "a blue circle", "a green circle"]
    assert [t["Negative prompt"] for t in texts] == ["blurry red", "blurry blue", "blurry green"]
    assert len(res.images) == 4


def test_checkpoint_axis_loads_each_model_once(runner):
    CheckpointOrder.seen.clear()
    args = xyz_args("Checkpoint name", "tiny-sd1, tiny-sd1-pickle", "Seed", "1, 2, 3", draw_legend=False,
                    include_lone_images=False)
    res = runner.run(req(steps=1, script_name=XYZ, script_args=args), save=False)
    seen = [s.split(" [")[0] for s in CheckpointOrder.seen]
    assert len(seen) == 6
    assert seen == ["tiny-sd1.safetensors"] * 3 + ["tiny-sd1-pickle.ckpt"] * 3   # two switches at most, not 6
    assert len(res.images) == 1 and res.images[0].size == (2 * 64, 3 * 64)   # no legend: cells only


def test_z_axis_sub_grids_and_margin(runner):
    args = xyz_args("Seed", "1, 2", "Nothing", "", "CFG Scale", "4, 8", include_sub_grids=True,
                    include_lone_images=False, margin_size=6)
    res = runner.run(req(steps=1, script_name=XYZ, script_args=args), save=False)
    main, subs = res.images[0], res.images[1:]
    assert len(subs) == 2
    assert subs[0].size == subs[1].size and subs[0].width > 2 * 64 + 6 - 1
    assert main.width == 2 * subs[0].width + 6 and main.height > subs[0].height    # Z titles on top
    assert "Z Type: CFG Scale" in res.infotexts[0] and "Z Type" not in res.infotexts[1]


@pytest.mark.parametrize("args, words", [
    (xyz_args("Steps", "1-5 (+0)"), "step is zero"),
    (xyz_args("CFG Scale", "7, lots"), "'lots' is not a number"),
    (xyz_args("Checkpoint name", "tiny-sd1, no-such-model"), "unknown checkpoint 'no-such-model'"),
    (xyz_args("Seed", "1-20", "Steps", "1-20"), "400 cells"),
    (xyz_args("Sampler", "Euler, Bogus"), "Bogus"),
    (xyz_args("Prompt S/R", "purple, green"), "'purple' is not in the prompt"),
    (xyz_args("Size", "64x60"), "multiple of 8"),
    (xyz_args("Wobble", "1"), "unknown axis type 'Wobble'"),
])
def test_bad_input_fails_before_any_work(runner, args, words):
    job = runner.submit(req(script_name=XYZ, script_args=args), save=False)
    with pytest.raises(InvalidField) as e:
        job.wait(120)
    assert words in str(e.value) and e.value.field == "script_args"
    assert job.progress.sampling_steps == 0, "no sampling started"


def test_interrupt_stops_the_whole_plot_and_progress_counts_cells(engine, runner):
    job = runner.submit(req(steps=12, script_name=XYZ, script_args=xyz_args("Seed", "1-6")), save=False)
    seen = set()
    deadline = time.time() + 300
    while job.progress.run_no < 1 and time.time() < deadline and not job.done.is_set():
        seen.add(job.progress.textinfo.split(":")[0])
        time.sleep(0.02)
    engine.jobs.interrupt()
    res = job.wait(300)
    assert "Cell 1 of 6" in seen or "Cell 2 of 6" in seen
    assert res.interrupted
    assert any("interrupted after" in n and "of 6 cells" in n for n in res.notes)
    assert len(res.images) < 7


def b64png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_api_script_name_and_listings(server):
    body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 7,
            "override_settings": {"sd_model_checkpoint": SD1}, "script_name": "x/y/z plot",
            "script_args": [1, "7, 8", [], 6, "2, 6", [], 0, "", [],
                            True, True, False, False, False, False, False, 0, False]}
    r = httpx.post(server + "/sdapi/v1/txt2img", json=body, timeout=600)
    assert r.status_code == 200, r.text
    out = r.json()
    info = json.loads(out["info"])
    assert len(out["images"]) == 5
    grid = b64png(out["images"][0])
    assert grid.size[0] > 2 * 64 and grid.size[1] > 2 * 64
    assert "X Type: Seed" in grid.info["parameters"] and "Y Type: CFG Scale" in grid.info["parameters"]
    cell = infotext.parse_infotext(b64png(out["images"][4]).info["parameters"])
    assert cell["Seed"] == "8" and cell["CFG scale"] == "6"
    assert info["infotexts"][4] == b64png(out["images"][4]).info["parameters"]
    plain = httpx.post(server + "/sdapi/v1/txt2img", json={**body, "script_name": None, "seed": 8,
                                                           "cfg_scale": 6}, timeout=600).json()
    assert np.array_equal(arr(b64png(plain["images"][0])), arr(b64png(out["images"][4])))
    # listings
    scripts = httpx.get(server + "/sdapi/v1/scripts").json()
    assert "x/y/z plot" in scripts["txt2img"] and "x/y/z plot" in scripts["img2img"]
    info = httpx.get(server + "/sdapi/v1/script-info").json()
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert xyz["is_alwayson"] is False and len(xyz["args"]) == 18
    # errors: unknown script, bad axis values — 422 naming what is allowed; the server keeps serving
    r = httpx.post(server + "/sdapi/v1/txt2img", json={**body, "script_name": "nope"}, timeout=60)
    assert r.status_code == 422 and "x/y/z plot" in r.json()["detail"].lower()
    r = httpx.post(server + "/sdapi/v1/txt2img", json={**body, "script_args": ["Checkpoint name", "ghost"]},
                   timeout=60)
    assert r.status_code == 422 and "unknown checkpoint 'ghost'" in r.json()["detail"]


def test_size_clip_skip_and_img2img_denoising_axes(engine, runner):
    args = xyz_args("Size", "64x64, 64x96", "Clip skip", "1, 2")
    res = runner.run(req(steps=1, script_name=XYZ, script_args=args), save=False)
    got = [infotext.parse_infotext(t) for t in res.infotexts[1:]]
    assert [g["Size"] for g in got] == ["64x64", "64x96"] * 2
    assert [g.get("Clip skip", "1") for g in got] == ["1", "1", "2", "2"]
    assert res.images[2].size == (64, 96)
    from webui.core.request import Img2ImgRequest
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    i2i = Img2ImgRequest(prompt="a circle", steps=4, width=64, height=64, seed=3, override_settings=dict(CKPT),
                         script_name=XYZ, script_args=xyz_args("Denoising", "0.3, 0.9"))
    res = runner.run(i2i, [init], save=False)
    for strength, cell in zip((0.3, 0.9), res.images[1:]):
        single = engine.img2img(Img2ImgRequest(prompt="a circle", steps=4, width=64, height=64, seed=3,
                                               denoising_strength=strength, override_settings=dict(CKPT)),
                                [init], save=False).images[0]
        assert np.array_equal(arr(cell), arr(single))


def test_axis_indices_are_a1111s_and_its_missing_axes_are_refused(runner):
    """API clients send A1111's axis indices: each means the same axis here (the lists differ between txt2img
    and img2img as A1111's do); an A1111 axis this studio has no counterpart for is refused before any work."""
    from webui.scripts.xyz_grid import find_axis
    t2i = {0: "Nothing", 5: "Hires steps", 7: "Prompt S/R", 11: "Checkpoint name", 13: "Sigma Churn",
           17: "Schedule type", 21: "Eta", 22: "Clip skip", 23: "Denoising", 26: "Hires upscaler", 27: "VAE",
           28: "Styles", 37: "RNG source", 39: "Size"}
    i2i = {5: "CFG Scale", 6: "Image CFG Scale", 7: "Prompt S/R", 10: "Checkpoint name", 16: "Schedule type",
           21: "Clip skip", 22: "Denoising", 25: "Cond. Image Mask Weight", 26: "VAE", 38: "Size"}
    assert {k: find_axis(k, False, "X type").label for k in t2i} == t2i
    assert {k: find_axis(k, True, "X type").label for k in i2i} == i2i
    job = runner.submit(req(script_name=XYZ, script_args=xyz_args(31, "0.1, 0.5")), save=False)
    with pytest.raises(InvalidField) as e:
        job.wait(120)
    assert "'Token merging ratio' has no counterpart" in str(e.value) and job.progress.sampling_steps == 0


def test_cells_run_in_a1111s_order_and_seeds_vary_as_a1111s(engine, runner):
    """X changes fastest, then Y (A1111 loops Z, Y, X); "Vary seeds for Y" alone adds the row's index."""
    steps_seen = []

    def listener(params) -> None:
        if params.sampling_step == 0:
            steps_seen.append(params.total_sampling_steps)
    engine.events.cfg_denoiser.append(listener)
    try:
        res = runner.run(req(script_name=XYZ, script_args=xyz_args("Steps", "2, 3", "CFG Scale", "5, 9, 11",
                                                                   vary_seeds_y=True)), save=False)
    finally:
        engine.events.cfg_denoiser.remove(listener)
    assert steps_seen == [2, 3, 2, 3, 2, 3]
    seeds = [int(infotext.parse_infotext(t)["Seed"]) for t in res.infotexts[res.index_of_first_image:]]
    assert seeds == [100, 100, 101, 101, 102, 102]


def test_without_sub_images_the_info_still_lists_every_cell(runner):
    """As A1111: only the grid comes back as an image, but infotexts (grid first) and all_seeds (cells only, as
    A1111 leaves grids out of all_seeds) still hold every cell, so a client can read each cell's seed."""
    res = runner.run(req(script_name=XYZ, script_args=xyz_args("Seed", "7, 8, 9", include_lone_images=False)),
                     save=False)
    assert len(res.images) == 1 and res.index_of_first_image == 1
    assert [int(infotext.parse_infotext(t)["Seed"]) for t in res.infotexts[1:]] == [7, 8, 9]
    assert res.seeds == [7, 8, 9]
    assert "X Type: Seed" in res.infotexts[0]


def test_script_grids_are_named_as_a1111s(runner, data_dir):
    """Saved as xyz_grid-NNNN and prompt_matrix-NNNN (a sequence each), float labels as A1111's ("5.0")."""
    from webui.scripts.xyz_grid import AXES, _label
    cfg = next(a for a in AXES if a.label == "CFG Scale")
    assert _label(cfg, 5.0) == "CFG Scale: 5.0" and _label(cfg, 7.25) == "CFG Scale: 7.25"
    res = runner.run(req(script_name=XYZ, script_args=xyz_args("Seed", "7, 8")), save=True)
    grids = [p for p in res.saved if "grid" in p.name]
    assert len(grids) == 1 and grids[0].name.startswith("xyz_grid-") and grids[0].stem[-4:].isdigit()
    res = runner.run(req(prompt="a circle | red", script_name="prompt matrix"), save=True)
    assert [p.name[:14] for p in res.saved if "matrix" in p.name] == ["prompt_matrix-"]


def test_no_legend_means_no_margin_and_kept_seeds_are_not_recorded_as_fixed(runner):
    """As A1111: the margin is part of the legend, and "Fixed X Values" is written only for seeds it fixed."""
    args = xyz_args("Seed", "-1, -1", draw_legend=False, margin_size=10, no_fixed_seeds=True,
                    include_lone_images=False)
    res = runner.run(req(script_name=XYZ, script_args=args), save=False)
    assert res.images[0].size == (2 * 64, 64)
    assert "Fixed X Values" not in res.infotexts[0] and 'X Values: "-1, -1"' in res.infotexts[0]
