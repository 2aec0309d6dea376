"""Soft inpainting (A1111 1.8's script): the magnitude-keeping latent blend, the percentile filters, the pixel
composite that puts the original back where the latents hardly moved, on the bundled model; its infotext and its
alwayson_scripts args, in the engine and through the API."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import shape_checker as sc
from webui.core import soft_inpainting as core_soft
from webui.core.errors import InvalidField
from webui.core.infotext import parse_infotext
from webui.core.request import Img2ImgRequest, fields_from_infotext
from webui.engine import soft_inpainting as soft

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "Stable-diffusion" / "shapes-tiny-v1.safetensors"
DEFAULT_ARGS = [True, 1, 0.5, 4, 0, 0.5, 2]


def test_latent_blend_interpolates_and_keeps_a_power_mean_length():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g) * 3
    t = torch.rand(1, 1, 6, 6, generator=g)
    settings = core_soft.SoftInpainting(transition_contrast_boost=4)
    out = soft.latent_blend(settings, a, b, t)
    # the direction of the linear mix, the length of the power mean of the two lengths
    mixed = a * (1 - t) + b * t
    cos = torch.nn.functional.cosine_similarity(out, mixed, dim=1)
    assert float(cos.min()) > 0.9999
    la, lb = a.norm(dim=1), b.norm(dim=1)
    want = (la ** 4 * (1 - t[:, 0]) + lb ** 4 * t[:, 0]) ** 0.25
    torch.testing.assert_close(out.norm(dim=1), want, rtol=1e-4, atol=1e-4)
    # at 0 and 1 the original and the current latents come back; at 1 the power changes nothing
    torch.testing.assert_close(soft.latent_blend(settings, a, b, torch.zeros_like(t)), a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(soft.latent_blend(settings, a, b, torch.ones_like(t)), b, rtol=1e-4, atol=1e-4)
    assert float(out.norm(dim=1).mean()) > float(mixed.norm(dim=1).mean())   # no fading in between


def test_blend_weight_follows_the_noise_level():
    m = torch.tensor([0.0, 0.25, 0.5, 1.0])
    s = core_soft.SoftInpainting(schedule_bias=1, preservation_strength=0.5)
    high, low = soft.blend_weight(s, m, 10.0), soft.blend_weight(s, m, 0.1)
    assert high[0] == 0 and low[0] == 0 and high[-1] == 1 and low[-1] == 1
    assert (high[1:3] < low[1:3]).all()   # early (noisy) steps keep more of the original
    torch.testing.assert_close(high[2], torch.tensor(0.5 ** 5.0))


def _slow_percentile(img, kernel, low, high, min_width=1.0):
    """The filter's definition, pixel by pixel."""
    r = kernel.shape[0] // 2
    out = np.zeros_like(img)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            items = sorted((img[y + dy, x + dx], kernel[r + dy, r + dx]) for dy in range(-r, r + 1)
                           for dx in range(-r, r + 1) if 0 <= y + dy < img.shape[0] and 0 <= x + dx < img.shape[1])
            total = sum(w for _, w in items)
            lo, hi = total * low, total * high
            if hi - lo < min_width:
                c = (lo + hi) / 2
                lo, hi = c - min_width / 2, c + min_width / 2
                if hi > total:
                    lo, hi = total - min_width, total
                if lo < 0:
                    lo, hi = 0, min_width
            acc = wsum = 0.0
            bottom = 0.0
            for v, w in items:
                top = bottom + w
                overlap = max(0.0, min(hi, top) - max(lo, bottom))
                acc, wsum = acc + v * overlap, wsum + overlap
                bottom = top
            out[y, x] = acc / wsum if wsum else 0
    return out


def test_percentile_filters_match_their_definition():
    img = np.random.default_rng(1).random((9, 11)) ** 3
    kernel = soft.gaussian_kernel(1.5, 2)
    assert kernel[2, 2] == pytest.approx(1.0) and kernel.min() >= 0 and kernel[0, 0] < kernel[0, 2]
    for low, high in ((0.9, 1.0), (0.25, 0.75), (0.0, 1.0)):
        np.testing.assert_allclose(soft.percentile_filter(img, kernel, low, high),
                                   _slow_percentile(img, kernel, low, high), rtol=1e-10)


def test_settings_from_a_request_and_an_infotext():
    assert core_soft.from_request(None) is None
    assert core_soft.from_request({"Soft Inpainting": {"args": [False, 1, 0.5]}}) is None
    s = core_soft.from_request({"Soft Inpainting": {"args": [True, 2, 0.75]}})   # missing args: defaults
    assert s == core_soft.SoftInpainting(schedule_bias=2, preservation_strength=0.75)
    with pytest.raises(InvalidField, match="difference_threshold must be between 0 and 8"):
        core_soft.from_request({"soft inpainting": {"args": [True, 1, 0.5, 4, 0, 9, 2]}})
    with pytest.raises(InvalidField, match="must be a number"):
        core_soft.from_request({"soft inpainting": {"args": [True, "lots"]}})
    text = ("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Soft inpainting enabled: True, "
            "Soft inpainting schedule bias: 1.5, Soft inpainting preservation strength: 0.5, Soft inpainting "
            "transition contrast boost: 4, Soft inpainting mask influence: 0.2, Soft inpainting difference "
            "threshold: 0.75, Soft inpainting difference contrast: 2")
    fields = fields_from_infotext(parse_infotext(text))
    assert fields["alwayson_scripts"] == {"soft inpainting": {"args": [True, 1.5, 0.5, 4.0, 0.2, 0.75, 2.0]}}


needs_model = pytest.mark.skipif(not MODEL.exists(), reason=f"the bundled model is not there yet: {MODEL}")


def _scene():
    from tool_modules import load_tool
    ds = load_tool("shapes_dataset")
    img = np.empty((128, 128, 3), np.uint8)
    img[:] = ds.COLOURS["blue"]
    cx, cy = ds.ANCHORS["left"]
    ds.draw_shape(img, "circle", cx, cy, ds.RADIUS["large"], ds.COLOURS["red"])
    mask = np.zeros((128, 128), np.uint8)
    mask[:, 64:] = 255
    return img, mask


def _inpaint(engine, prompt: str, seed: int, on: bool, denoise: float = 0.75):
    img, mask = _scene()
    req = Img2ImgRequest(prompt=prompt, steps=20, width=128, height=128, cfg_scale=7, seed=seed,
                         sampler_name="Euler a", denoising_strength=denoise, mask_blur=8, inpaint_full_res=False,
                         inpainting_fill=1, override_settings={"sd_model_checkpoint": MODEL.name,
                                                               "live_previews_enable": False},
                         alwayson_scripts={"Soft inpainting": {"args": DEFAULT_ARGS}} if on else {})
    res = engine.img2img(req, [Image.fromarray(img)], Image.fromarray(mask), save=False)
    return np.asarray(res.images[0], dtype=np.int16), res


@needs_model
def test_the_original_comes_back_where_the_inpainting_changed_nothing(engine):
    """The prompt describes the picture as it is: the masked half comes out as blue background again. The hard
    composite shows the model's redrawing there (a VAE round trip: no pixel exactly the same); soft inpainting
    puts the original's pixels back wherever the latents hardly moved. Far from the mask both keep the original."""
    img, mask = _scene()
    inside = mask > 0
    for seed in (1, 2):
        hard, _ = _inpaint(engine, "a large red circle on the left, blue background", seed, False)
        softened, res = _inpaint(engine, "a large red circle on the left, blue background", seed, True)
        same_hard = float((np.abs(hard - img).max(-1) == 0)[inside].mean())
        same_soft = float((np.abs(softened - img).max(-1) == 0)[inside].mean())
        print(f"seed {seed}: masked pixels exactly the original's: hard {same_hard:.2f}, soft {same_soft:.2f}")
        assert same_hard < 0.05 and same_soft > 0.6
        assert np.array_equal(softened[:, :8], img[:, :8].astype(np.int16))
        assert int(np.abs(softened[:, :24] - img[:, :24]).max()) <= 2
        assert "Soft inpainting enabled: True" in res.infotexts[0]
        assert "Soft inpainting difference threshold: 0.5" in res.infotexts[0]


@needs_model
def test_new_content_in_the_mask_shows(engine):
    """Where the prompt asks for something new in the masked half, the composite lets it through (a yellow shape
    on the original's blue), and away from the mask's blurred edge the picture is the original's."""
    img, _ = _scene()
    found = 0
    for seed in range(1, 7):
        out, _ = _inpaint(engine, "a large red circle on the left and a large yellow square on the right, blue "
                                  "background", seed, True, denoise=1.0)
        right = sc.analyse(Image.fromarray(out[:, 66:].astype(np.uint8)))
        print(f"seed {seed}: the masked half reads {right.colour} {right.shape} on {right.background}")
        found += right.colour == "yellow" and right.background == "blue"
        assert np.array_equal(out[:, :8], img[:, :8].astype(np.int16))
        assert int(np.abs(out[:, :24] - img[:, :24]).max()) <= 2
    assert found >= 4


def test_api_takes_soft_inpainting_and_refuses_bad_args(server):
    src = Image.new("RGB", (64, 64), (40, 60, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))

    def b64(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    body = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "init_images": [b64(src)], "mask": b64(mask),
            "mask_blur": 8, "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"},
            "alwayson_scripts": {"soft inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}}
    r = httpx.post(server + "/sdapi/v1/img2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert "Soft inpainting enabled: True" in r.json()["info"]
    bad = {**body, "alwayson_scripts": {"soft inpainting": {"args": [True, 1, 0.5, 0.5]}}}
    r = httpx.post(server + "/sdapi/v1/img2img", json=bad, timeout=300)
    assert r.status_code == 422 and "transition_contrast_boost must be between 1 and 32" in r.json()["detail"]


@needs_model
def test_only_masked_area_with_soft_inpainting(engine):
    """"Only masked": the crop is inpainted at the full size and its composite mask placed back where the crop
    came from; the rest of the picture is the original's exactly."""
    img, _ = _scene()
    mask = np.zeros((128, 128), np.uint8)
    mask[40:88, 80:112] = 255
    req = Img2ImgRequest(prompt="a large red circle on the left and a small yellow star on the right, blue "
                                "background", steps=12, width=128, height=128, cfg_scale=7, seed=2,
                         denoising_strength=1.0, mask_blur=4, inpaint_full_res=True, inpaint_full_res_padding=8,
                         inpainting_fill=1, override_settings={"sd_model_checkpoint": MODEL.name,
                                                               "live_previews_enable": False},
                         alwayson_scripts={"soft inpainting": {"args": DEFAULT_ARGS}})
    out = np.asarray(engine.img2img(req, [Image.fromarray(img)], Image.fromarray(mask), save=False).images[0],
                     dtype=np.int16)
    box = np.zeros((128, 128), bool)
    box[24:104, 64:128] = True   # the crop with its padding, and the composite mask's blur around it
    assert np.array_equal(out[~box], img[~box].astype(np.int16))
    assert np.abs(out[40:88, 80:112] - img[40:88, 80:112]).max() > 30
