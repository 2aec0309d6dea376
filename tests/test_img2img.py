"""img2img and inpainting as options of the one loop (engine and POST /sdapi/v1/img2img). Pixel exactness
outside the mask holds on any model; colour-meaning checks run on the bundled model in its own tests."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.core.errors import InvalidField
from webui.core.request import Img2ImgRequest

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def picture(w=64, h=64) -> Image.Image:
    im = Image.new("RGB", (w, h), (40, 60, 200))
    ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(220, 30, 30))
    return im


def box_mask(w=64, h=64, box=(16, 16, 40, 40)) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def run(engine, images, mask=None, **kw):
    base = dict(prompt="a green square", steps=6, width=64, height=64, seed=3, override_settings=CKPT)
    return engine.img2img(Img2ImgRequest(**{**base, **kw}), images, mask, save=False)


def arr(im):
    return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
@pytest.mark.parametrize("full_res", [False, True])
def test_inpaint_keeps_outside_of_mask_exactly(engine, fill, full_res):
    src = picture()
    res = run(engine, [src], box_mask(), inpainting_fill=fill, inpaint_full_res=full_res,
              inpaint_full_res_padding=8, mask_blur=0, denoising_strength=0.9)
    out = arr(res.images[0])
    outside = np.asarray(box_mask()) == 0
    assert np.array_equal(out[outside], arr(src)[outside])
    assert np.abs(out[~outside] - arr(src)[~outside]).mean() > 1, "nothing changed inside the mask"
    text = res.infotexts[0]
    assert "Denoising strength: 0.9" in text and "Mask blur: 0" in text
    assert ("Inpaint area: Only masked" in text) == full_res


def test_blurred_mask_changes_only_near_the_mask(engine):
    src = picture()
    res = run(engine, [src], box_mask(), mask_blur=4, inpaint_full_res=False, denoising_strength=0.9)
    far = np.ones((64, 64), bool)
    far[16 - 12:40 + 12, 16 - 12:40 + 12] = False
    assert np.array_equal(arr(res.images[0])[far], arr(src)[far])


def test_inverted_mask_repaints_the_outside(engine):
    src = picture()
    res = run(engine, [src], box_mask(), inpainting_mask_invert=1, mask_blur=0, inpaint_full_res=False)
    inside = np.asarray(box_mask()) > 0
    assert np.array_equal(arr(res.images[0])[inside], arr(src)[inside])
    assert "Mask mode: Inpaint not masked" in res.infotexts[0]


def test_masked_content_modes_differ(engine):
    src = picture()
    outs = {f: arr(run(engine, [src], box_mask(), inpainting_fill=f, mask_blur=0, inpaint_full_res=False,
                       denoising_strength=0.5).images[0]) for f in (1, 3)}
    assert np.abs(outs[1] - outs[3]).mean() > 0.5


def test_strength_orders_distance_and_resize_modes_give_size(engine):
    # against strength 0 (the init through the random VAE, which changes it beyond recognition): the distance
    # that the denoising adds rises with strength
    src = picture(96, 64)
    kept = arr(run(engine, [src], denoising_strength=0.0).images[0])
    d = [np.abs(arr(run(engine, [src], denoising_strength=s).images[0]) - kept).mean() for s in (0.2, 0.95)]
    assert 0 < d[0] < d[1]
    for mode in range(4):
        res = run(engine, [src], resize_mode=mode, width=64, height=96)
        assert res.images[0].size == (64, 96)


def test_empty_mask_is_plain_img2img(engine):
    src = picture()
    plain = run(engine, [src])
    empty = run(engine, [src], Image.new("L", (64, 64), 0))
    assert np.array_equal(arr(plain.images[0]), arr(empty.images[0]))
    assert any("mask is empty" in n for n in empty.notes)


def test_bad_img2img_input(engine):
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img(Img2ImgRequest(prompt="x", width=64, height=64, override_settings=CKPT), [])
    assert e.value.field == "init_images"
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img(Img2ImgRequest(prompt="x", width=64, height=64, resize_mode=7,
                                             override_settings=CKPT), [picture()])
    assert e.value.field == "resize_mode"


def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_img2img_api(server):
    src = picture()
    body = {"prompt": "a green square", "steps": 5, "width": 64, "height": 64, "seed": 9,
            "init_images": ["data:image/png;base64," + b64(src)], "mask": b64(box_mask(32, 32, (8, 8, 20, 20))),
            "mask_blur": 0, "inpaint_full_res": False, "denoising_strength": 0.8,
            "override_settings": CKPT}
    r = httpx.post(server + "/sdapi/v1/img2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    info = json.loads(r.json()["info"])
    assert any("mask resized" in n for n in info["notes"])
    outside = np.asarray(box_mask(box=(13, 13, 43, 43))) == 0   # the upscaled mask's edge, with a margin
    assert np.array_equal(arr(out)[outside], arr(src)[outside])
    bad = httpx.post(server + "/sdapi/v1/img2img", json={**body, "init_images": ["!!!"]}, timeout=60)
    assert bad.status_code == 422 and "init_images[0]" in bad.json()["detail"]
    none = httpx.post(server + "/sdapi/v1/img2img", json={**body, "init_images": []}, timeout=60)
    assert none.status_code == 422 and "init_images" in none.json()["detail"]


def encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return buf.getvalue()


def test_img2img_api_image_formats_include_init_images_and_size_limit(server):
    from webui.engine.saving import read_infotext
    src = picture()
    base = {"prompt": "a green square", "steps": 3, "width": 64, "height": 64, "seed": 2,
            "denoising_strength": 0.5, "include_init_images": True, "override_settings": CKPT}
    for fmt, prefix in (("JPEG", "data:image/jpeg;base64,"), ("WEBP", "data:image/webp;base64,"), ("PNG", "")):
        raw = encoded(src, fmt)
        sent = prefix + base64.b64encode(raw).decode()
        r = httpx.post(server + "/sdapi/v1/img2img", timeout=300, json={**base, "init_images": [sent]})
        assert r.status_code == 200, (fmt, r.text)
        # as A1111: include_init_images keeps the init images in the echoed parameters, not in images
        assert len(r.json()["images"]) == 1
        assert r.json()["parameters"]["init_images"] == [sent]
    # output in the format of the setting samples_format, with the infotext inside (as A1111's API)
    assert httpx.post(server + "/sdapi/v1/options", json={"samples_format": "webp"}, timeout=60).status_code == 200
    try:
        r = httpx.post(server + "/sdapi/v1/img2img", timeout=300,
                       json={**base, "include_init_images": False, "init_images": [b64(src)]})
        assert r.json()["parameters"]["init_images"] is None and r.json()["parameters"]["mask"] is None
        out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert out.format == "WEBP"
        assert read_infotext(out)[0] == json.loads(r.json()["info"])["infotexts"][0]
    finally:
        httpx.post(server + "/sdapi/v1/options", json={"samples_format": "png"}, timeout=60)
    # larger than twice max_image_side: a 422 naming the field, found from the header; the server keeps serving
    small = {**base, "override_settings": {**CKPT, "max_image_side": 64}}
    r = httpx.post(server + "/sdapi/v1/img2img", timeout=60, json={**small, "init_images": [b64(picture(136, 64))]})
    assert r.status_code == 422 and r.json()["field"] == "init_images[0]" and "max_image_side" in r.json()["detail"]
    r = httpx.post(server + "/sdapi/v1/img2img", timeout=60,
                   json={**small, "init_images": [b64(src)], "mask": b64(box_mask(200, 64))})
    assert r.status_code == 422 and r.json()["field"] == "mask"
    r = httpx.post(server + "/sdapi/v1/img2img", timeout=300, json={**base, "init_images": [b64(src)]})
    assert r.status_code == 200


def test_save_init_image_and_mask_settings(engine, data_dir):
    import hashlib
    src, mask = picture(), box_mask()
    opts = {**CKPT, "save_init_img": True, "save_mask": True}
    res = engine.img2img(Img2ImgRequest(prompt="a green square", steps=3, width=64, height=64, seed=4321,
                                        mask_blur=0, override_settings=opts), [src], mask, save=True)
    init_file = data_dir / "outputs" / "init-images" / f"{hashlib.md5(src.tobytes()).hexdigest()}.png"
    assert init_file.exists() and np.array_equal(arr(Image.open(init_file)), arr(src))
    masks = [p for p in res.saved if p.stem.endswith("4321-mask")]
    assert len(masks) == 1 and np.array_equal(np.asarray(Image.open(masks[0])), np.asarray(box_mask()))
    again = engine.img2img(Img2ImgRequest(prompt="a green square", steps=3, width=64, height=64, seed=4321,
                                          mask_blur=0, override_settings=opts), [src], mask, save=True)
    assert init_file not in again.saved, "the same init image is saved once"
    plain = engine.img2img(Img2ImgRequest(prompt="x", steps=2, width=64, height=64, seed=4322,
                                          override_settings=CKPT), [src], mask, save=True)
    assert len(plain.saved) == 1, "both settings are off by default"
