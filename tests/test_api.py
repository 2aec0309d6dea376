"""The A1111-compatible API through a real server: meaning, determinism, and bad input."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

SD1 = "tiny-sd1.safetensors"
BASE = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "cfg_scale": 5,
        "override_settings": {"sd_model_checkpoint": SD1}}


def post(url, path, body, timeout=300, **kw):
    return httpx.post(url + path, json=body, timeout=timeout, **kw)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def txt2img(url, **fields) -> dict:
    r = post(url, "/sdapi/v1/txt2img", {**BASE, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def test_response_shape_and_info(server):
    out = txt2img(server, seed=1234, batch_size=2)
    assert set(out) >= {"images", "parameters", "info"}
    info = json.loads(out["info"])
    assert info["all_seeds"] == [1234, 1235]
    assert info["seed"] == 1234 and info["width"] == 64 and info["steps"] == 4
    assert info["sd_model_name"] == "tiny-sd1"
    assert len(info["sd_model_hash"]) == 10
    # grid first, then the two images; every image carries its own infotext in the PNG
    assert len(out["images"]) == 3 and info["index_of_first_image"] == 1
    for b64, text in zip(out["images"], info["infotexts"]):
        png = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert png.info["parameters"] == text
    assert "Seed: 1235" in info["infotexts"][2]
    assert out["parameters"]["prompt"] == "a red circle"


def test_same_seed_same_pixels_other_seed_differs(server):
    a = pixels(txt2img(server, seed=42)["images"][0])
    b = pixels(txt2img(server, seed=42)["images"][0])
    c = pixels(txt2img(server, seed=43)["images"][0])
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_batch_image_remade_alone(server):
    batch = txt2img(server, seed=500, batch_size=3, n_iter=2)
    images = batch["images"][1:]
    assert len(images) == 6
    for i in (2, 4):   # one from the first batch, one from the second iteration
        alone = txt2img(server, seed=500 + i)["images"][0]
        assert np.array_equal(pixels(images[i]), pixels(alone)), f"image {i} differs when re-made alone"


def test_infotext_field_remakes_image(server):
    first = txt2img(server, seed=777, negative_prompt="blurry, dark", cfg_scale=6.5, steps=5)
    text = json.loads(first["info"])["infotexts"][0]
    # A request with only the infotext (and the size limits of the tiny model) gives the same pixels.
    r = post(server, "/sdapi/v1/txt2img", {"infotext": text})
    assert r.status_code == 200, r.text
    again = r.json()
    info = json.loads(again["info"])
    assert info["seed"] == 777 and info["steps"] == 5 and info["cfg_scale"] == 6.5
    assert info["negative_prompt"] == "blurry, dark"
    assert np.array_equal(pixels(first["images"][0]), pixels(again["images"][0]))


def test_png_info_round_trip(server):
    out = txt2img(server, seed=9, negative_prompt='ugly, "quoted"', prompt="a (red:1.2) circle, on: the left")
    r = post(server, "/sdapi/v1/png-info", {"image": out["images"][0]})
    assert r.status_code == 200
    body = r.json()
    assert body["info"] == json.loads(out["info"])["infotexts"][0]
    p = body["parameters"]
    assert p["Prompt"] == "a (red:1.2) circle, on: the left"
    assert p["Negative prompt"] == 'ugly, "quoted"'
    assert p["Seed"] == "9" and p["Steps"] == "4" and p["Size"] == "64x64" and p["Model"] == "tiny-sd1"
    assert p["Clip skip"] == "1" and p["RNG"] == "GPU"   # A1111's defaults for keys the infotext leaves out
    # a data-URL prefix is accepted as A1111 clients send it
    r2 = post(server, "/sdapi/v1/png-info", {"image": "data:image/png;base64," + out["images"][0]})
    assert r2.json()["info"] == body["info"]


def test_saved_file_layout(server, data_dir):
    out = txt2img(server, seed=31337, save_images=True)
    text = json.loads(out["info"])["infotexts"][0]
    day = time.strftime("%Y-%m-%d")
    files = sorted((data_dir / "outputs" / "txt2img-images" / day).glob("*-31337.png"))
    assert files, "image not saved under outputs/txt2img-images/<date>/NNNNN-SEED.png"
    name = files[-1].name
    assert len(name.split("-")[0]) == 5 and name.split("-")[0].isdigit()
    assert Image.open(files[-1]).info["parameters"] == text
    out2 = txt2img(server, seed=31337, save_images=True)
    files2 = sorted((data_dir / "outputs" / "txt2img-images" / day).glob("*-31337.png"))
    assert len(files2) == len(files) + 1, "a second save must not overwrite the first"
    assert json.loads(out2["info"])["infotexts"][0] == text


def test_models_listing_and_switching(server):
    models = httpx.get(server + "/sdapi/v1/sd-models").json()
    titles = {m["title"] for m in models}
    names = {m["model_name"]: m for m in models}
    assert {"tiny-sd1", "v2_tiny-sd2v", "tiny-sdxl", "tiny-sd1-pickle"} <= set(names)
    sd1 = names["tiny-sd1"]
    assert sd1["title"] == f"tiny-sd1.safetensors [{sd1['sha256'][:10]}]" and sd1["title"] in titles
    assert names["broken-truncated"]["error"]
    assert "not a Stable Diffusion checkpoint" in names["not-a-model"]["error"]
    r = post(server, "/sdapi/v1/options", {"sd_model_checkpoint": "not-a-model.safetensors"})
    assert r.status_code == 422 and "architecture not recognised" in r.json()["detail"]
    for title in (names["v2_tiny-sd2v"]["title"], names["tiny-sdxl"]["title"], names["tiny-sd1-pickle"]["title"]):
        r = post(server, "/sdapi/v1/options", {"sd_model_checkpoint": title})
        assert r.status_code == 200, r.text
        assert httpx.get(server + "/sdapi/v1/options").json()["sd_model_checkpoint"] == title
        r = post(server, "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert title.startswith(info["sd_model_name"].replace("v2_", "v2/")), (title, info["sd_model_name"])
        img = pixels(r.json()["images"][0])
        assert img.shape == (64, 64, 3)
    # none chosen: /options still names the checkpoint that jobs use (A1111's holds the loaded model's title)
    assert post(server, "/sdapi/v1/options", {"sd_model_checkpoint": ""}).status_code == 200
    current = httpx.get(server + "/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert current in titles
    r = post(server, "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1})
    assert current.startswith(json.loads(r.json()["info"])["sd_model_name"].replace("v2_", "v2/"))
    post(server, "/sdapi/v1/options", {"sd_model_checkpoint": sd1["title"]})


def test_refresh_finds_new_checkpoint(server, data_dir):
    from checkpoint_factory import make_tiny_checkpoint
    target = data_dir / "models" / "Stable-diffusion" / "deep" / "er" / "late.safetensors"
    make_tiny_checkpoint(target, "sd1", seed=9)
    assert post(server, "/sdapi/v1/refresh-checkpoints", {}).status_code == 200
    names = [m["title"] for m in httpx.get(server + "/sdapi/v1/sd-models").json()]
    assert any(t.startswith("deep/er/late.safetensors [") for t in names)


def test_listings(server):
    samplers = httpx.get(server + "/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LMS", "Heun"} <= set(names)
    options = {s["name"]: s["options"] for s in samplers}      # A1111 1.10's flags
    assert options["Euler"] == {} and options["Euler a"] == {"uses_ensd": True}
    assert options["DPM++ 2M"] == {"scheduler": "karras"}
    assert options["DPM2 a"] == {"scheduler": "karras", "uses_ensd": True, "discard_next_to_last_sigma": True,
                                 "second_order": True}
    assert options["DPM++ 2M SDE Heun"] == {"scheduler": "exponential", "brownian_noise": True,
                                            "solver_type": "heun"}
    schedules = httpx.get(server + "/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedules][:3] == ["Automatic", "Uniform", "Karras"]
    assert [s["default_rho"] for s in schedules][:3] == [-1, -1, 7.0]
    for empty in ("hypernetworks", "face-restorers"):   # A1111 clients ask; the studio has none
        assert httpx.get(server + f"/sdapi/v1/{empty}").json() == []
    flags = httpx.get(server + "/sdapi/v1/cmd-flags").json()
    assert flags["port"] and "data_dir" in flags
    mem = httpx.get(server + "/sdapi/v1/memory").json()
    assert mem["ram"]["total"] > 0
    prog = httpx.get(server + "/sdapi/v1/progress").json()
    assert set(prog) >= {"progress", "eta_relative", "state", "current_image", "textinfo"}


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "UniPC", "Heun",
                                     "LMS", "DPM2 a", "PLMS", "DPM++ 2M SDE"])
def test_samplers_run(server, sampler):
    out = txt2img(server, seed=3, sampler_name=sampler, steps=4)
    info = json.loads(out["info"])
    assert np.isfinite(pixels(out["images"][0])).all()
    assert "Sampler: " + sampler.replace(" Karras", "") in info["infotexts"][0]
    if sampler.endswith("Karras"):
        assert "Schedule type: Karras" in info["infotexts"][0]


def test_progress_preview_and_interrupt(server):
    results = {}

    def long_job():
        results["r"] = post(server, "/sdapi/v1/txt2img", {**BASE, "steps": 40, "n_iter": 40, "seed": 5,
                                                          "override_settings": {**BASE["override_settings"],
                                                                                "show_progress_every_n_steps": 2}})

    t = threading.Thread(target=long_job)
    started = time.time()
    t.start()
    seen_preview = False
    seen_progress = 0.0
    while time.time() - started < 60 and not seen_preview:
        p = httpx.get(server + "/sdapi/v1/progress").json()
        seen_progress = max(seen_progress, p["progress"])
        if p["current_image"]:
            img = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
            seen_preview = img.size == (64, 64)
        time.sleep(0.1)
    assert seen_preview, "no live preview came through /progress"
    assert post(server, "/sdapi/v1/interrupt", {}).status_code == 200
    t.join(60)
    assert not t.is_alive()
    r = results["r"]
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert info["interrupted"] is True
    assert len(info["infotexts"]) < 40, "interrupt did not stop the job"
    assert r.json()["images"], "the interrupted batch comes back as far as it got"
    # and the server keeps serving
    assert txt2img(server, seed=1)["images"]


BAD = [
    ({"width": 65}, "width", "multiple of 8"),
    ({"height": 4096}, "height", "multiple of 8"),
    ({"steps": 0}, "steps", "steps"),
    ({"cfg_scale": -1}, "cfg_scale", "cfg_scale"),
    ({"batch_size": 99}, "batch_size", "max_batch_size"),
    ({"sampler_name": "Euler z"}, "sampler_name", "Euler a"),
    ({"scheduler": "Wobbly"}, "scheduler", "Karras"),
    ({"override_settings": {"sd_model_checkpoint": "nope.safetensors"}}, "sd_model_checkpoint", "tiny-sd1"),
    ({"override_settings": {"sd_model_checkpoint": "broken-truncated.safetensors"}}, None, "unusable"),
    ({"width": "wide"}, "width", "integer"),
]


@pytest.mark.parametrize("fields,field,words", BAD)
def test_bad_input_gets_clear_4xx_then_good_request_works(server, fields, field, words):
    r = post(server, "/sdapi/v1/txt2img", {**BASE, **fields})
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert words.lower() in body["detail"].lower(), body
    if field:
        assert field in body["detail"]
    assert txt2img(server, seed=1)["images"]


def test_null_fields_mean_their_defaults(server):
    """As A1111's generated models (every field Optional): a client that sends null for what it leaves unset gets
    the same picture as one that leaves the fields out."""
    nulls = {k: None for k in ("negative_prompt", "batch_size", "n_iter", "subseed_strength", "sampler_index",
                               "enable_hr", "hr_prompt", "cfg_scale", "styles", "script_name", "tiling")}
    with_nulls = txt2img(server, seed=77, **nulls)
    plain = txt2img(server, seed=77, cfg_scale=7.0)   # the API default of cfg_scale
    assert np.array_equal(pixels(with_nulls["images"][0]), pixels(plain["images"][0]))
    assert json.loads(with_nulls["info"])["cfg_scale"] == 7.0
    assert len(with_nulls["images"]) == 1 and with_nulls["parameters"]["cfg_scale"] is None


def test_malformed_json_and_base64(server):
    r = httpx.post(server + "/sdapi/v1/txt2img", content=b'{"prompt": "x", ', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.json()["detail"].lower()
    r = post(server, "/sdapi/v1/png-info", {"image": "%%%not base64%%%"})
    assert r.status_code == 422 and "base64" in r.json()["detail"]
    r = post(server, "/sdapi/v1/png-info", {"image": base64.b64encode(b"hello world").decode()})
    assert r.status_code == 422 and "not an image" in r.json()["detail"]
    r = post(server, "/sdapi/v1/options", {"sd_model_checkpoint": "missing-model"})
    assert r.status_code == 404 and "tiny-sd1" in r.json()["detail"]
    # interrogate: the request is checked as A1111's, then a clear 501 (no caption models offline)
    png = txt2img(server, seed=3)["images"][0]
    r = post(server, "/sdapi/v1/interrogate", {"image": png, "model": "blip2"})
    assert r.status_code == 404 and "deepdanbooru" in r.json()["detail"]
    r = post(server, "/sdapi/v1/interrogate", {"image": "%%%", "model": "clip"})
    assert r.status_code == 422 and "base64" in r.json()["detail"]
    r = post(server, "/sdapi/v1/interrogate", {"image": png})
    assert r.status_code == 501 and "cannot be downloaded" in r.json()["detail"]
    r = post(server, "/sdapi/v1/options", {"samples_format": "bmp"})
    assert r.status_code == 422 and "png" in r.json()["detail"]
    assert txt2img(server, seed=2)["images"]


def test_auth(data_dir):
    from conftest import start_server
    proc, url = start_server(data_dir, "--api-auth", "alice:secret", "--gradio-auth", "bob:pw", "--nowebui")
    try:
        assert httpx.get(url + "/sdapi/v1/samplers").status_code == 401
        assert httpx.get(url + "/sdapi/v1/samplers", auth=("alice", "wrong")).status_code == 401
        assert httpx.get(url + "/sdapi/v1/samplers", auth=("bob", "pw")).status_code == 401
        assert httpx.get(url + "/sdapi/v1/samplers", auth=("alice", "secret")).status_code == 200
        assert httpx.get(url + "/docs").status_code == 401
        assert httpx.get(url + "/openapi.json", auth=("bob", "pw")).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_ui_auth(data_dir):
    from conftest import start_server
    proc, url = start_server(data_dir, "--gradio-auth", "bob:pw")
    try:
        assert httpx.get(url + "/").status_code == 401
        assert httpx.get(url + "/config").status_code == 401
        assert httpx.get(url + "/", auth=("bob", "pw")).status_code == 200
        # the API stays open when only the UI is protected, as in A1111
        assert httpx.get(url + "/sdapi/v1/samplers").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)




def test_settings_apply_without_restart(server, data_dir):
    r = post(server, "/sdapi/v1/options", {"samples_format": "webp", "samples_filename_pattern": "[seed]-[steps]"})
    assert r.status_code == 200, r.text
    try:
        out = txt2img(server, seed=8080, save_images=True)
        day = time.strftime("%Y-%m-%d")
        files = list((data_dir / "outputs" / "txt2img-images" / day).glob("*-8080-4.webp"))
        assert len(files) == 1
        from webui.engine.saving import read_infotext
        assert read_infotext(files[0])[0] == json.loads(out["info"])["infotexts"][0]
        stored = json.loads((data_dir / "config.json").read_text())
        assert stored["samples_format"] == "webp"
    finally:
        post(server, "/sdapi/v1/options", {"samples_format": "png", "samples_filename_pattern": ""})


def test_override_settings_do_not_persist(server):
    before = httpx.get(server + "/sdapi/v1/options").json()["CLIP_stop_at_last_layers"]
    out = txt2img(server, seed=4, override_settings={**BASE["override_settings"], "CLIP_stop_at_last_layers": 2})
    assert "Clip skip: 2" in json.loads(out["info"])["infotexts"][0]
    assert httpx.get(server + "/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == before
    # override_settings_restore_afterwards=false: the overrides stay the settings after the job (as A1111)
    try:
        out = txt2img(server, seed=4, override_settings_restore_afterwards=False,
                      override_settings={**BASE["override_settings"], "CLIP_stop_at_last_layers": 2})
        assert "Clip skip: 2" in json.loads(out["info"])["infotexts"][0]
        assert httpx.get(server + "/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        out = txt2img(server, seed=4)
        assert "Clip skip: 2" in json.loads(out["info"])["infotexts"][0]
    finally:
        post(server, "/sdapi/v1/options", {"CLIP_stop_at_last_layers": before})


def test_skip_moves_to_next_batch(server):
    results = {}

    def job():
        results["r"] = post(server, "/sdapi/v1/txt2img", {**BASE, "steps": 40, "n_iter": 3, "seed": 50},
                            timeout=600)

    t = threading.Thread(target=job)
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        p = httpx.get(server + "/sdapi/v1/progress", params={"skip_current_image": True}).json()
        if p["state"]["job_count"] == 3 and p["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.05)
    assert post(server, "/sdapi/v1/skip", {}).status_code == 200
    t.join(600)
    info = json.loads(results["r"].json()["info"])
    # the first batch was skipped (it comes back as far as it got, as in A1111), the other two were made in full
    seeds = [int(x.split("Seed: ")[1].split(",")[0]) for x in info["infotexts"][info["index_of_first_image"]:]]
    assert seeds == [50, 51, 52]
    first = info["index_of_first_image"]
    alone = txt2img(server, steps=40, seed=50)
    assert not np.array_equal(pixels(results["r"].json()["images"][first]), pixels(alone["images"][0]))


def test_share_without_tunnel_says_why(data_dir):
    from conftest import start_server
    proc, url = start_server(data_dir, "--share", "--nowebui")
    try:
        log = next(data_dir.glob(f"server-{url.rsplit(':', 1)[1]}.log"))
        deadline = time.time() + 60
        while time.time() < deadline and "--share:" not in log.read_text():
            time.sleep(0.2)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("--share:")]
        assert len(lines) == 1 and "serving locally" in lines[0]
        assert "without --gradio-auth" in log.read_text()
        assert httpx.get(url + "/sdapi/v1/samplers").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
