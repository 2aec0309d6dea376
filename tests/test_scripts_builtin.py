"""Prompt matrix, prompts from file, loopback and outpainting on tiny random checkpoints (meaning: prompts,
seeds, grid shapes, denoising curves, canvas geometry, untouched original pixels)."""
from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.core import infotext
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest, Img2ImgRequest
from webui.scripts import default_runner
from webui.scripts.loopback import denoising_schedule
from webui.scripts.prompt_matrix import matrix_prompts

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


@pytest.fixture(scope="module")
def runner(engine):
    return default_runner(engine)


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a circle", steps=2, width=64, height=64, seed=21, override_settings=dict(CKPT))
    return GenerationRequest(**{**base, **kw})


def i2i(**kw) -> Img2ImgRequest:
    base = dict(prompt="a circle", steps=4, width=64, height=64, seed=5, denoising_strength=0.75,
                override_settings=dict(CKPT))
    return Img2ImgRequest(**{**base, **kw})


def picture(w=96, h=96) -> Image.Image:
    im = Image.new("RGB", (w, h), (40, 60, 200))
    ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(220, 30, 30))
    ImageDraw.Draw(im).line((0, 0, w, h), fill=(250, 250, 20), width=3)
    return im


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def params(text: str) -> dict:
    return infotext.parse_infotext(text)


# -- prompt matrix ----------------------------------------------------------------------------------------------
def test_matrix_prompts_a1111_semantics():
    parts, prompts = matrix_prompts("a cat | red | big, ")
    assert parts == ["a cat", "red", "big"]
    assert prompts == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert matrix_prompts("x|y", put_at_start=True, delimiter=" ")[1] == ["x", "y x"]


def test_prompt_matrix_images_prompts_and_grid(engine, runner):
    res = runner.run(req(prompt="a circle | red | big | blurry", script_name="prompt matrix"), save=False)
    grid, images = res.images[0], res.images[1:]
    assert len(images) == 8 and res.index_of_first_image == 1
    prompts = [params(t)["Prompt"] for t in res.infotexts[1:]]
    assert prompts == ["a circle", "a circle, red", "a circle, big", "a circle, red, big", "a circle, blurry",
                       "a circle, red, blurry", "a circle, big, blurry", "a circle, red, big, blurry"]
    assert {params(t)["Seed"] for t in res.infotexts[1:]} == {"21"}          # same seed unless asked
    assert res.seeds == [21] * 8 and res.prompts == prompts   # as A1111: no grid entry in all_seeds/all_prompts
    # 2 variable parts across (4 columns), 1 down (2 rows), labels left and above
    pad_left, pad_top = grid.width - 4 * 64, grid.height - 2 * 64
    assert pad_left > 0 and pad_top > 0
    g = arr(grid)
    for k, im in enumerate(images):
        x, y = pad_left + (k % 4) * 64, pad_top + (k // 4) * 64
        assert np.array_equal(g[y:y + 64, x:x + 64], arr(im))
    headers = [g[:pad_top, pad_left + c * 64:pad_left + (c + 1) * 64] for c in range(4)]
    assert len({h.tobytes() for h in headers}) == 4                        # on/off differs per column
    single = engine.txt2img(req(prompt="a circle, red, big"), save=False).images[0]
    assert np.array_equal(arr(images[3]), arr(single))


def test_prompt_matrix_negative_at_start_different_seeds(runner):
    res = runner.run(req(negative_prompt="dark | grainy", script_name="Prompt matrix",
                         script_args=[True, True, "negative", "space", 4]), save=False)
    texts = [params(t) for t in res.infotexts[1:]]
    assert [t.get("Negative prompt") for t in texts] == ["dark", "grainy dark"]
    assert [t["Seed"] for t in texts] == ["21", "22"] and [t["Prompt"] for t in texts] == ["a circle"] * 2
    with pytest.raises(InvalidField):
        runner.run(req(prompt="no bars here", script_name="Prompt matrix"), save=False)


@pytest.mark.parametrize("matrix", ["a red circle AND a blue square:0.5 | big", "a red circle | AND a blue square"])
def test_each_prompt_of_a_batch_keeps_its_own_and_parts(engine, runner, matrix):
    """A batch whose prompts have different AND weights or counts (a prompt matrix makes such batches): each
    image is what its prompt alone makes (A1111 keeps a weight list per prompt)."""
    res = runner.run(req(prompt=matrix, batch_size=2, script_name="Prompt matrix"), save=False)
    for k, prompt in enumerate(res.prompts):
        alone = engine.txt2img(req(prompt=prompt, seed=res.seeds[k]), save=False).images[0]
        diff = np.abs(np.asarray(res.images[1 + k], dtype=int) - np.asarray(alone, dtype=int))
        assert diff.max() <= 2, (prompt, diff.max())


# -- prompts from file ------------------------------------------------------------------------------------------
def test_prompts_from_file_overrides(runner):
    text = 'a red circle\n\n--prompt "a blue square" --steps 3 --seed 9 --cfg_scale 4.5\n' \
           "--negative_prompt dull --width 72 --n_iter 2"
    res = runner.run(req(prompt="", negative_prompt="", script_name="prompts from file or textbox",
                         script_args=[False, False, "start", text]), save=False)
    got = [params(t) for t in res.infotexts]
    assert len(res.images) == 4
    assert got[0]["Prompt"] == "a red circle" and got[0]["Steps"] == "2" and got[0]["Seed"] == "21"
    assert got[1]["Prompt"] == "a blue square" and got[1]["Steps"] == "3" and got[1]["Seed"] == "9"
    assert got[1]["CFG scale"] == "4.5"
    assert got[2]["Negative prompt"] == "dull" and got[2]["Size"] == "72x64" and got[3]["Seed"] == "22"
    assert res.images[2].size == (72, 64)


def test_prompts_from_file_prefix_and_iterate(runner):
    res = runner.run(req(prompt="painting", script_name="Prompts from file or textbox",
                         script_args=[True, False, "end", "cat\ndog"]), save=False)
    got = [params(t) for t in res.infotexts]
    assert [g["Prompt"] for g in got] == ["painting cat", "painting dog"]
    assert [g["Seed"] for g in got] == ["21", "22"]


def test_prompts_from_file_iterate_keeps_a_lines_own_seed_and_saves_no_grids(runner):
    """As A1111: the running seed steps by the request's batch (1 here), a line's --seed wins over it, a line of
    several images saves no grid of its own, and --sampler_index is an index into the sampler list."""
    from webui.core.samplers import sampler_names
    text = "cat\n--prompt dog --seed 5\n--prompt fox --n_iter 2 --sampler_index 0"
    res = runner.run(req(prompt="", script_name="Prompts from file or textbox",
                         script_args=[True, False, "start", text]), save=True)
    got = [params(t) for t in res.infotexts]
    assert [g["Seed"] for g in got] == ["21", "5", "23", "24"]
    assert got[2]["Sampler"] == sampler_names()[0]
    assert len(res.saved) == 4 and not any(p.name.startswith("grid") for p in res.saved)


def test_prompts_from_file_bad_lines_named_before_work(runner):
    text = "fine\n--steps abc\n--wat 1\n--prompt\n"
    job = runner.submit(req(script_name="Prompts from file or textbox", script_args=[False, False, "start", text]),
                        save=False)
    with pytest.raises(InvalidField) as e:
        job.wait(120)
    msg = str(e.value)
    assert "line 2: --steps must be a whole number" in msg and "line 3: unknown option --wat" in msg
    assert "line 4: --prompt needs a value" in msg and "line 1" not in msg
    assert job.progress.sampling_steps == 0
    with pytest.raises(InvalidField) as e:
        runner.run(req(script_name="Prompts from file or textbox",
                       script_args=[False, False, "start", "ok\n--width 65"]), save=False)
    assert "line 2" in str(e.value) and "width" in str(e.value)


# -- loopback ---------------------------------------------------------------------------------------------------
def test_denoising_curves():
    assert denoising_schedule(0.8, 0.2, 4, "Linear") == [0.8, 0.6, 0.4, 0.2]
    aggressive = denoising_schedule(0.8, 0.2, 3, "Aggressive")
    lazy = denoising_schedule(0.8, 0.2, 3, "Lazy")
    assert aggressive[0] == lazy[0] == 0.8 and aggressive[-1] == lazy[-1] == 0.2
    assert aggressive[1] < 0.5 < lazy[1]          # aggressive changes early, lazy late
    assert denoising_schedule(0.5, 0.1, 1, "Linear") == [0.5]


def test_loopback_feeds_outputs_back(engine, runner):
    res = runner.run(i2i(denoising_strength=0.6, script_name="loopback", script_args=[3, 0.2, "Linear", "None"]),
                     [picture(64, 64)], save=False)
    loops = res.images[res.index_of_first_image:]
    texts = [params(t) for t in res.infotexts[res.index_of_first_image:]]
    assert len(loops) == 3 and res.images[0].size == (192, 64)          # grid of the loops first
    assert [float(t["Denoising strength"]) for t in texts] == [0.6, 0.4, 0.2]
    assert [t["Seed"] for t in texts] == ["5", "6", "7"]
    assert texts[0]["Denoising curve"] == "Linear" and texts[0]["Final denoising strength"] == "0.2"
    second = engine.img2img(i2i(denoising_strength=0.4, seed=6), [loops[0]], save=False).images[0]
    assert np.abs(arr(second) - arr(loops[1])).max() <= 1                  # loop 2 = img2img of loop 1


def test_loopback_corrects_every_loop_towards_the_first_picture(engine, runner):
    """With img2img_color_correction, A1111's loopback corrects each loop towards the picture it started from, not
    towards the loop before (which would let colours drift a little further each loop)."""
    from webui.engine.color_correction import apply_color_correction, correction_target
    src = picture(64, 64)
    opts = {**CKPT, "img2img_color_correction": True}
    res = runner.run(i2i(denoising_strength=0.6, script_name="loopback", script_args=[2, 0.4, "Linear", "None"],
                         override_settings=opts), [src], save=False)
    loops = res.images[res.index_of_first_image:]
    raw = engine.img2img(i2i(denoising_strength=0.4, seed=6), [loops[0]], save=False).images[0]
    towards_first = arr(apply_color_correction(correction_target(src), raw))
    towards_previous = arr(apply_color_correction(correction_target(loops[0]), raw))
    assert np.abs(towards_first - arr(loops[1])).max() <= 1
    assert np.abs(towards_previous - arr(loops[1])).mean() > 2


# -- outpainting ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, args", [
    ("Poor man's outpainting", [16, 2, 0, ["left", "right"]]),
    ("Outpainting mk2", [16, 4, ["left", "right"], 1.0, 0.05]),
])
def test_outpainting_widens_and_keeps_the_original(runner, script, args):
    src = picture()
    res = runner.run(i2i(width=96, height=96, denoising_strength=0.9, script_name=script, script_args=args),
                     [src], save=False)
    out = res.images[0]
    assert out.size == (96 + 32, 96)
    inner = arr(out)[:, 16 + 14:16 + 96 - 14]
    assert np.abs(inner - arr(src)[:, 14:96 - 14]).max() <= 1             # untouched away from the seam
    assert np.abs(arr(out)[:, :12].mean() - 0) > 0                          # the new area was painted
    assert params(res.infotexts[0])["Size"] == "128x96"


def test_outpainting_up_down_rounds_to_8_and_rejects_bad_direction(runner):
    res = runner.run(i2i(script_name="Poor man's outpainting", script_args=[12, 1, 1, ["down"]]),
                     [picture(64, 64)], save=False)
    assert res.images[0].size == (64, 80)                                    # 64 + 12 -> 80 (multiple of 8)
    assert np.abs(arr(res.images[0])[:56] - arr(picture(64, 64))[:56]).max() <= 1     # seam: 2 + 2.5 * 2 px
    with pytest.raises(InvalidField):
        runner.run(i2i(script_name="Poor man's outpainting", script_args=[16, 2, 0, ["sideways"]]),
                   [picture(64, 64)], save=False)


def test_outpainting_through_the_api(server):
    buf = io.BytesIO()
    picture(64, 64).save(buf, "PNG")
    body = {"prompt": "a circle", "steps": 3, "width": 64, "height": 64, "seed": 3, "denoising_strength": 0.8,
            "init_images": [base64.b64encode(buf.getvalue()).decode()], "override_settings": CKPT,
            "script_name": "poor man's outpainting", "script_args": [32, 2, 0, ["up"]]}
    r = httpx.post(server + "/sdapi/v1/img2img", json=body, timeout=600)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert out.size == (64, 96)
    assert np.abs(arr(out)[32 + 14:] - arr(picture(64, 64))[14:]).max() <= 1
