"""ControlNet over real HTTP: sd-webui-controlnet's routes and units in alwayson_scripts; a unit sent as JSON gives
the same image as the same unit built by the UI's widgets function and run through the engine; bad units get a
4xx that names what is valid, and the server keeps serving."""
from __future__ import annotations

import base64
import io
import subprocess

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw


def b64png(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def picture() -> Image.Image:
    im = Image.new("RGB", (64, 64), (30, 30, 140))
    ImageDraw.Draw(im).rectangle([16, 12, 48, 52], fill=(250, 210, 40))
    return im


@pytest.fixture(scope="module")
def cn_dir(tmp_path_factory):
    from controlnet_factory import make_cn_data_dir

    return make_cn_data_dir(tmp_path_factory.mktemp("cn-api"))


@pytest.fixture(scope="module")
def cn_server(cn_dir):
    from conftest import start_server

    proc, url = start_server(cn_dir)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


BASE = {"prompt": "a square", "steps": 5, "width": 64, "height": 64, "cfg_scale": 5, "seed": 11,
        "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"}}


def test_lists(cn_server):
    models = httpx.get(f"{cn_server}/controlnet/model_list", timeout=60).json()
    assert models["model_list"][0] == "None"
    assert any(m.startswith("control_tiny_canny [") for m in models["model_list"])
    assert "a-lora.safetensors" in models["unusable"] and "LoRA" in models["unusable"]["a-lora.safetensors"]
    modules = httpx.get(f"{cn_server}/controlnet/module_list", timeout=60).json()
    for name in ("none", "canny", "invert", "threshold", "scribble_xdog", "tile_resample", "inpaint_only",
                 "shuffle", "lineart_standard", "openpose", "openpose_full"):
        assert name in modules["module_list"], name
    assert "lineart_realistic" not in modules["module_list"]
    assert "sk_model.pth" in modules["unavailable"]["lineart_realistic"]
    assert modules["module_detail"]["canny"]["sliders"][1]["value"] == 100
    assert httpx.get(f"{cn_server}/controlnet/settings", timeout=60).json() == {"control_net_unit_count": 3,
                                                                                "control_net_max_models_num": 3}



def test_control_types(cn_server):
    """/controlnet/control_types: what each Control Type offers, its models limited to the loaded checkpoint's kind.
    The bundled canny ControlNet is listed from the repository's models/ControlNet beside the data dir's own."""
    assert httpx.post(f"{cn_server}/sdapi/v1/txt2img", json=BASE, timeout=300).status_code == 200   # loads SD1
    types = httpx.get(f"{cn_server}/controlnet/control_types", timeout=60).json()["control_types"]
    assert list(types)[:4] == ["All", "Canny", "Depth", "NormalMap"]
    canny = types["Canny"]
    assert canny["module_list"] == ["none", "canny", "invert"] and canny["default_option"] == "canny"
    assert [m.split(" [")[0] for m in canny["model_list"]] == ["None", "control_shapes-tiny-v1_canny",
                                                               "control_tiny_canny"]
    assert canny["default_model"] == canny["model_list"][1]
    assert types["All"]["default_option"] == "none" and types["All"]["default_model"] == "None"
    assert "controlnet-tiny-sdxl" in " ".join(types["All"]["model_list"])
    assert types["Depth"]["module_list"] == ["none"]     # no depth estimator's weights here
    assert [m.split(" [")[0] for m in types["Depth"]["model_list"]] == ["None", "control_tiny_depth"]
    assert types["OpenPose"]["default_option"] == "openpose_full"

def test_detect_canny_is_opencv_canny(cn_server):
    im = picture()
    r = httpx.post(f"{cn_server}/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64png(im)], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}, timeout=120)
    assert r.status_code == 200, r.text
    got = decode(r.json()["images"][0])
    expected = cv2.Canny(np.asarray(im), 100, 200)
    assert np.array_equal(got[:, :, 0], expected) and expected.any()


def test_api_unit_equals_ui_unit_through_the_engine(cn_server, cn_dir):
    from app import build_engine
    from webui.config.flags import parse_args
    from webui.core.request import GenerationRequest
    from webui.ui.controlnet_ui import unit_from_widgets

    unit = {"enabled": True, "module": "canny", "model": "control_tiny_canny", "weight": 0.8,
            "input_image": b64png(picture()), "processor_res": 64, "threshold_a": 60, "threshold_b": 160,
            "guidance_start": 0.1, "guidance_end": 0.9, "control_mode": "ControlNet is more important",
            "resize_mode": "Just Resize", "pixel_perfect": False}
    r = httpx.post(f"{cn_server}/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}},
                   timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    api_image = decode(body["images"][0])
    assert len(body["images"]) == 2                        # the image, then the detected map
    engine = build_engine(parse_args(["--data-dir", str(cn_dir)]))
    editor = {"background": picture(), "layers": [], "composite": picture()}
    title = engine.models.controlnets.find("control_tiny_canny").title
    ui_unit = unit_from_widgets(True, editor, False, "canny", title, 0.8, 0.1, 0.9,
                                "ControlNet is more important", "Just Resize", False, 64, 60, 160)
    req = GenerationRequest(**{k: v for k, v in BASE.items()}, alwayson_scripts={"controlnet": {"args": [ui_unit]}})
    res = engine.txt2img(req, save=False)
    assert np.array_equal(api_image, np.asarray(res.images[0]))
    info = body["info"]
    assert "ControlNet 0: \\\"Module: canny, Model: control_tiny_canny [" in info
    assert res.infotexts[0].split("ControlNet 0:")[1] in body["info"].encode().decode("unicode_escape")


def test_img2img_unit_without_image_uses_the_init_image(cn_server):
    unit = {"enabled": True, "module": "none", "model": "control_tiny_canny"}
    body = {**BASE, "init_images": [b64png(picture())], "denoising_strength": 0.7}
    plain = httpx.post(f"{cn_server}/sdapi/v1/img2img", json=body, timeout=300)
    ctrl = httpx.post(f"{cn_server}/sdapi/v1/img2img",
                      json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}}, timeout=300)
    assert plain.status_code == ctrl.status_code == 200, ctrl.text
    assert np.abs(decode(plain.json()["images"][0]).astype(int) - decode(ctrl.json()["images"][0])).mean() > 0.3


@pytest.mark.parametrize("unit,status,words", [
    ({"module": "sobel", "model": "control_tiny_canny"}, 422, ["controlnet[0].module", "valid: none, canny"]),
    ({"module": "canny", "model": "control_v11p_sd15_canny [d14c016b]"}, 404,
     ["unknown ControlNet model", "valid: control_shapes-tiny-v1_canny [", "control_tiny_canny ["]),
    ({"module": "canny", "model": "control_shapes-tiny-v1_canny"}, 422,     # SD1.x, but for other UNet widths
     ["controlnet[0].model", "other widths [96, 128, 128]"]),
    ({"module": "canny", "model": "control_tiny_canny", "input_image": "bm90IGFuIGltYWdl"}, 422,
     ["controlnet[0].image", "not an image"]),
    ({"module": "canny", "model": "control_tiny_canny", "input_image": None}, 422,
     ["controlnet[0].image", "no image"]),
    ({"module": "depth_midas", "model": "control_tiny_canny"}, 422, ["dpt_hybrid-midas-501f0c75.pt", "annotators"]),
    ({"module": "canny", "model": "control_tiny_canny", "control_mode": "Loud"}, 422, ["control_mode", "Balanced"]),
])
def test_bad_units_are_4xx_naming_the_valid_choices(cn_server, unit, status, words):
    unit = {"enabled": True, "input_image": b64png(picture()), **unit}
    if unit["input_image"] is None:
        del unit["input_image"]
    r = httpx.post(f"{cn_server}/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}},
                   timeout=120)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for w in words:
        assert w in detail, (w, detail)
    assert httpx.get(f"{cn_server}/controlnet/model_list", timeout=30).status_code == 200


def test_detect_bad_input(cn_server):
    r = httpx.post(f"{cn_server}/controlnet/detect", json={"controlnet_module": "nope",
                                                          "controlnet_input_images": [b64png(picture())]}, timeout=60)
    assert r.status_code == 422 and "valid: none, canny" in r.json()["detail"]
    r = httpx.post(f"{cn_server}/controlnet/detect", json={"controlnet_module": "canny"}, timeout=60)
    assert r.status_code == 422 and "no image" in r.json()["detail"]
    r = httpx.post(f"{cn_server}/controlnet/detect", json={"controlnet_module": "canny",
                                                          "controlnet_input_images": ["%%%"]}, timeout=60)
    assert r.status_code == 422 and "base64" in r.json()["detail"]
